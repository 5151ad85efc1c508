"""The site wiring of the safety process: valves, annunciator, safety loop, bus pollers,
recorder and the two local sockets, started in that order and stopped with every valve closed.

Threads and what they may touch:

* **safety** (``SafetyLoop``): the only thread that drives valves and lights (see loop.py).
* **bus-NAME** (``Pollers``): poll detectors, put Readings and CommFailures into the inbox.
* **recorder**: stores events durably (SQLite), logs them. The uplinks process reads the event
  log from its own process; nothing here waits for it.
* **control** / **uplink** sockets (``handlers``): read the published snapshot, put operator
  requests into the inbox and wait for the core's answer.
* gpiozero's own threads: button callbacks (they only ``put``) and light blinking.

Nothing here imports an uplink, the console or a network library: their bugs, hangs and load
stay in their own processes.
"""

from __future__ import annotations

import datetime
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from gpiozero import Factory

from gateway import __version__
from gateway.api.control import ControlServer, Handler
from gateway.api.status import build_status
from gateway.appliance.cpus import make_realtime
from gateway.config import UPLINK_FIELD, Config, load_config, restart_fields
from gateway.core.model import (
    Event,
    Input,
    ResetRequest,
    ServiceWarnings,
    SilenceRequest,
    SounderTestRequest,
    StoreHealth,
)
from gateway.core.safety import SafetyCore
from gateway.drivers.annunciator import Annunciator
from gateway.drivers.fan import ExhaustFan
from gateway.drivers.power import PowerContacts
from gateway.drivers.valve import ShutoffValve, make_valve
from gateway.log import error, log
from gateway.maintenance import warnings as service_warnings
from gateway.paths import EVENTS_DB, events_db, uplink_socket
from gateway.safety.handlers import (
    STATE_CHANGING,
    UPLINK_RATE_LIMITS,
    control_handlers,
    report_age_s,
    uplink_handlers,
)
from gateway.safety.loop import TICK_S, LoopTimeout, Replan, SafetyLoop, Snapshot
from gateway.safety.peers import uplink_socket_uids, uplink_uids
from gateway.safety.pollers import Pollers
from gateway.safety.trendwatch import TrendWatch
from gateway.store.backlog import RecorderInbox
from gateway.store.events import StoredEvent, forwarded_from_log, latched_from_log
from gateway.store.latchfile import LatchFile, latch_path, union
from gateway.store.recorder import LatchedSnapshot, Recorder, RecorderItem, new_inbox
from gateway.trend import TrendWarning
from gateway.validate import ConfigError

VERSION = __version__
# The uplinks process reports its state every UPLINK_REPORT_S; after this long without a report
# the status says it is not reporting.
UPLINK_STALE_S = 10.0

__all__ = ["EVENTS_DB", "TICK_S", "Controller", "ReloadRefused", "Snapshot", "events_db"]


class ReloadRefused(Exception):
    """A config change that cannot be applied while running; the running config stays."""


class Controller:
    """Runs one site's safety function. ``start()`` brings everything up (valves closed),
    ``stop()`` takes it down (valves de-energised). ``pin_factory`` selects the GPIO backend
    (None = gpiozero's choice). ``simulated`` is shown in the status so nobody mistakes a demo
    for a real kitchen."""

    def __init__(
        self,
        config: Config,
        *,
        pin_factory: Factory | None = None,
        simulated: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        realtime_priority: int | None = None,
    ) -> None:
        self.config = config
        # SCHED_FIFO for the threads on the path to the valve (the safety thread and the bus
        # pollers) only; everything else in the process stays ordinary (see appliance.cpus).
        self._on_path_thread = lambda: make_realtime(realtime_priority)
        self.simulated = simulated
        self.clock = clock
        self.wall = wall
        self._pin_factory = pin_factory
        self.recorder_inbox: RecorderInbox[RecorderItem] = new_inbox()
        self.events_path = events_db(config.data_dir)
        self.valves: dict[str, ShutoffValve] = {}
        self.fans: dict[str, ExhaustFan] = {}
        self.power: PowerContacts | None = None
        self.annunciator: Annunciator | None = None
        self.loop: SafetyLoop | None = None
        self.pollers = Pollers(self.submit, clock, self._on_path_thread)
        self.recorder: Recorder | None = None
        self.control: ControlServer | None = None
        self.uplink_server: ControlServer | None = None
        self.started_at = clock()
        self.first_poll_done = threading.Event()
        self._reload_lock = threading.Lock()
        self._pending: list[Input] = []  # inputs before the loop exists (buttons at start-up)
        self._cycle_listeners: list[Callable[[], None]] = []
        self._extra_handlers: dict[str, Handler] = {}
        # The uplinks process's last report: (monotonic time, {channel: state}).
        # (when, channels, outbox fill) from the uplinks process's last report
        self.uplink_report: (
            tuple[float, dict[str, Any], dict[str, Any] | None, dict[str, Any] | None] | None
        ) = None
        # UTC of a fire-centre duty check (查岗) nobody has answered yet; one reference,
        # assigned whole by the recorder thread and cleared by whoever answers.
        self.duty_check_pending: float | None = None
        # The uplinks' high-water mark (the highest seq in their durable outbox), as they last
        # reported it; None without uplinks. The event log never rotates a never-dropped event
        # above it out (``EventStore.record``).
        self.uplinks_forwarded: int | None = None
        # Detector service warnings: what the core was last told, and the day each detector's
        # warning was last recorded (reported upstream once a day until cleared).
        self._service_told: dict[str, str] | None = None
        self._service_recorded: dict[tuple[str, str], datetime.date] = {}
        self.trend: TrendWatch | None = None
        self._trend_judged: tuple[int, dict[str, TrendWarning]] | None = None  # (hour, ...)

    # -- compatibility views --------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        return None if self.loop is None else self.loop.snapshot

    @property
    def failure(self) -> BaseException | None:
        return None if self.loop is None else self.loop.failure

    @property
    def core(self) -> SafetyCore | None:
        return None if self.loop is None else self.loop.core

    @property
    def buses(self) -> list[Any]:
        return self.pollers.buses

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Valves first: build them (closed) before anything else can fail half-way."""
        cfg = self.config
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # the recorder reports it as a store fault; detection goes on
            error("controller.data_dir_unusable", path=cfg.data_dir, error=repr(e))
        try:
            for vc in cfg.valves:
                valve = make_valve(vc, self._pin_factory)
                self.valves[vc.name] = valve
                valve.command(False)
            for fc in cfg.fans:
                self.fans[fc.name] = ExhaustFan(fc, self._pin_factory)
            self.power = PowerContacts(cfg.power, self._pin_factory)
            self.annunciator = Annunciator(
                cfg.annunciator,
                on_silence=self._silence_pressed,
                on_reset=lambda: self.submit(ResetRequest(self.clock())),
                pin_factory=self._pin_factory,
            )
            # The latches survive whatever the event log's state: each detector's higher level
            # from the log and from the separate latch file.
            latch_file = LatchFile(latch_path(cfg.data_dir))
            latched = union(latched_from_log(self.events_path), latch_file.load())
            now = self.clock()
            self.started_at = now
            core = SafetyCore(cfg.plan(), now, latched)
            loop = SafetyLoop(
                core,
                self.valves,
                self.annunciator,
                self.recorder_inbox,
                clock=self.clock,
                wall=self.wall,
                first_poll_done=self.first_poll_done,
                on_thread_start=self._on_path_thread,
                fans=self.fans,
                power=self.power,
            )
            for listener in self._cycle_listeners:
                loop.on_cycle(listener)
            self.uplinks_forwarded = forwarded_from_log(self.events_path)
            self.recorder = Recorder(
                self.events_path,
                cfg.event_capacity,
                self.recorder_inbox,
                forwarded=lambda: self.uplinks_forwarded if self.config.uplink_table else None,
                on_health=lambda text: self.submit(StoreHealth(self.clock(), text)),
                latch_file=latch_file,
                latched=latched,
            )
            self.recorder.subscribe(self._on_stored)
            self.recorder.start()
            self.record(
                Event(
                    "controller.started",
                    "site",
                    now,
                    {
                        "version": VERSION,
                        "simulated": self.simulated,
                        "detectors": len(cfg.detectors),
                        "valves": len(cfg.valves),
                        "fans": len(cfg.fans),
                        # What the core put back on a configured sensor, and what it kept
                        # as orphan latches (their detector is no longer configured).
                        "latched_restored": {
                            k: v.name.lower() for k, v in core.restored.items()
                        },
                        "latched_orphaned": {
                            o.name: {"sensor": o.sensor, "level": o.level.name.lower()}
                            for o in core.orphans().values()
                        },
                    },
                )
            )
            if core.latched() != latched:
                # Stored in an older form (by name) or moved to an orphan: store them now as
                # the core holds them (name@bus:address), so the next start matches by sensor.
                self.recorder_inbox.put(LatchedSnapshot(core.latched()))
            loop.start()
            self.loop = loop
            for inp in self._pending:
                loop.submit(inp)
            self._pending.clear()
            self.pollers.apply(cfg)
            self.control = ControlServer(
                cfg.control_socket,
                {**control_handlers(self), **self._extra_handlers},
                refuse_uids=uplink_uids(),
                privileged=STATE_CHANGING,
            )
            self.control.start()
            self.uplink_server = ControlServer(
                uplink_socket(cfg.control_socket),
                uplink_handlers(self),
                allow_uids=uplink_socket_uids(),
                rate_limits=UPLINK_RATE_LIMITS,
            )
            self.uplink_server.start()
            self.trend = TrendWatch(lambda: self.snapshot, cfg.data_dir, wall=self.wall)
            self.trend.start()
            self.check_service()
        except BaseException:
            self._close_all_valves()
            self.stop()
            raise
        log(
            "controller.started",
            site=cfg.site.id,
            detectors=len(cfg.detectors),
            valves=len(cfg.valves),
            simulated=self.simulated,
        )

    def stop(self) -> None:
        """Stop polling, close every valve, flush the event log, release the pins."""
        self.pollers.stop()
        if self.loop is not None:
            self.loop.stop()
        self._close_all_valves()
        if self.trend is not None:
            self.trend.stop()
            self.trend = None
        for server in (self.control, self.uplink_server):
            if server is not None:
                server.stop()
        if self.recorder is not None:
            self.recorder.stop()
        if self.annunciator is not None:
            self.annunciator.close()
            self.annunciator = None
        for valve in self.valves.values():
            valve.close()
        self.valves.clear()
        for fan in self.fans.values():
            fan.close()
        self.fans.clear()
        if self.power is not None:
            self.power.close()
            self.power = None

    def run(self) -> int:
        """Run until SIGTERM/SIGINT or a safety-loop failure; exit status 0 or 1."""
        done = threading.Event()

        def _signal(signum: int, _frame: Any) -> None:
            done.set()

        # Handlers first: a stop asked for while starting up still ends in stop() (valves
        # closed, events flushed), not in the default abrupt exit.
        reload_wanted = threading.Event()
        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        signal.signal(signal.SIGHUP, lambda signum, frame: reload_wanted.set())
        self.start()
        ready = False
        while not done.is_set():
            if not ready:
                # Wakes the moment the first complete poll is in (cold-start figure, READY).
                if self.first_poll_done.wait(0.5):
                    ready = True
                    # Logged here, on the main thread: the safety thread never logs.
                    log("controller.ready", first_poll_s=round(self.clock() - self.started_at, 3))
            else:
                done.wait(0.5)
            if reload_wanted.is_set():
                reload_wanted.clear()
                self.reload_from_disk()
            self.check_service()
            if self.failure is not None or (self.loop is not None and not self.loop.alive):
                break
        self.stop()
        return 1 if self.failure is not None else 0

    # -- inputs and records --------------------------------------------------------------------

    def submit(self, inp: Input) -> None:
        """Queue an input for the safety thread (never blocks)."""
        loop = self.loop
        if loop is None:
            self._pending.append(inp)
        else:
            loop.submit(inp)

    def record(self, event: Event, utc: float | None = None) -> None:
        """Queue an event for the recorder (never blocks, never touches the safety thread)."""
        self.recorder_inbox.put((self.wall() if utc is None else utc, event))

    def on_cycle(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on the safety thread after the valves were set, at least every
        TICK_S (the systemd watchdog heartbeat). It must never block. Before ``start()``."""
        self._cycle_listeners.append(listener)
        if self.loop is not None:
            self.loop.on_cycle(listener)

    def add_handler(self, name: str, handler: Handler) -> None:
        """Register one more control-socket command (before ``start()``)."""
        self._extra_handlers[name] = handler

    def _close_all_valves(self) -> None:
        if self.loop is not None:
            self.loop.close_all_valves()
            return
        for name, valve in list(self.valves.items()):
            try:
                valve.command(False)
            except Exception as e:  # keep closing the others
                error("valve.close_failed", valve=name, error=repr(e))

    # -- config reload ----------------------------------------------------------------------------

    def reload_from_disk(self) -> bool:
        """Re-read the config file (SIGHUP). True when applied; see ``reload_problems``."""
        return not self.reload_problems()

    def reload_problems(self) -> list[str]:
        """Re-read the config file (SIGHUP, or ``reload`` on the control socket). An invalid
        file, or a change that needs a restart, is logged and recorded, and the running config
        stays in force. Returns the problems ([] when applied)."""
        path = self.config.path
        try:
            self.reload(load_config(path))
        except ConfigError as e:
            problems = [str(p) for p in e.problems]
            for p in problems:
                error("config.problem", problem=p)
        except ReloadRefused as e:
            problems = [str(e)]
            error("config.reload_refused", path=str(path), reason=str(e))
        else:
            return []
        self.record(
            Event(
                "config.rejected", "site", self.clock(), {"path": str(path), "problems": problems}
            )
        )
        return problems

    def reload(self, new: Config) -> None:
        """Apply a validated config without dropping protection: the safety core keeps its
        latches and valve lockouts (nothing opens), pollers of changed buses are restarted.
        Valves, fans, power contacts, annunciator pins, data directory and control socket
        need a restart:
        ReloadRefused, and nothing changes. (The uplinks process reads ``[uplink]`` itself.)"""
        with self._reload_lock:
            changed = [f for f in restart_fields(self.config, new) if f != UPLINK_FIELD]
            if changed:
                raise ReloadRefused(
                    f"{', '.join(changed)} changed: these take effect only on a restart "
                    "(systemctl restart gasguard-safety), which starts with the gas off"
                )
            if self.loop is None:
                raise ReloadRefused("the controller has not started yet")
            try:
                events = self.loop.ask(Replan(self.clock(), new.plan()))
            except LoopTimeout as e:
                raise ReloadRefused(str(e)) from None
            refused = [e for e in events if e.kind == "config.refused"]
            if refused:
                raise ReloadRefused("; ".join(refused[0].details.get("reasons", [])))
            self.config = new
            self._trend_judged = None  # set points may have changed
            self.pollers.apply(new)
            log("config.reloaded", path=str(new.path), detectors=len(new.detectors))

    # -- detector service (calibration, end of life) ------------------------------------------

    def check_service(self) -> None:
        """Main thread, every half second: tell the core which detectors need a look today
        (service dates and trend warnings: the yellow light) when that changes; record each
        warning once a day while it lasts (``detector.service_due``, ``detector.trend``) and
        ``detector.service_ok`` when a detector has none left."""
        try:
            today = datetime.date.fromtimestamp(self.wall())
            found: dict[tuple[str, str], str] = {
                ("detector.service_due", name): text
                for name, text in service_warnings(self.config.detectors, today).items()
            }
            trends = self._trend_warnings()
            for name, warning in trends.items():
                found[("detector.trend", name)] = warning.text
            due: dict[str, str] = {}
            for (_, name), text in sorted(found.items()):
                due[name] = f"{due[name]}; {text}" if name in due else text
            now = self.clock()
            if due != self._service_told:
                for name in sorted(set(self._service_told or {}) - set(due)):
                    self.record(Event("detector.service_ok", name, now, {}))
                self._service_told = due
                self.submit(ServiceWarnings(now, tuple(sorted(due.items()))))
            for key in list(self._service_recorded):
                if key not in found:
                    del self._service_recorded[key]
            for (kind, name), text in sorted(found.items()):
                if self._service_recorded.get((kind, name)) != today:
                    self._service_recorded[(kind, name)] = today
                    details: dict[str, Any] = {"text": text, "date": today.isoformat()}
                    if kind == "detector.trend":
                        details["daily_means"] = [
                            None if m != m else m for m in trends[name].daily_means
                        ]  # the last 7 days, oldest first; None: no data that day
                    self.record(Event(kind, name, now, details))
        except Exception as e:  # a warning, never a reason to stop the safety process
            error("service.check_failed", error=repr(e))

    def _trend_warnings(self) -> dict[str, TrendWarning]:
        """The trend warnings, judged from the stored hours at most once an hour."""
        trend = self.trend
        if trend is None:
            return {}
        hour = int(self.wall() // 3600)
        if self._trend_judged is None or self._trend_judged[0] != hour:
            judged = {w.detector: w for w in trend.warnings(self.config)}
            self._trend_judged = (hour, judged)
        return self._trend_judged[1]

    def rejudge_trends(self) -> None:
        """Forget the hour's trend verdicts (after a config change or for a test)."""
        self._trend_judged = None

    # -- duty check (查岗) from the fire centre -----------------------------------------------

    def _on_stored(self, stored: StoredEvent) -> None:
        """Recorder thread: a duty check asks the staff to show they are there. Chirp the
        sounder (2 s, a core input like any other) and wait for the silence button."""
        if stored.kind == "uplink.duty_check":
            self.duty_check_pending = stored.utc
            self.submit(SounderTestRequest(self.clock(), 2.0, "duty-check"))

    def _silence_pressed(self) -> None:
        """gpiozero thread: silence the sounder, and answer a pending duty check."""
        self.submit(SilenceRequest(self.clock()))
        self.answer_duty_check("silence-button")

    def answer_duty_check(self, operator: str) -> bool:
        """Record the staff's answer to a pending duty check (the uplinks process sends it up).
        False when none was pending."""
        asked = self.duty_check_pending
        if asked is None:
            return False
        self.duty_check_pending = None
        self.record(
            Event(
                "operator.duty_answer",
                "site",
                self.clock(),
                {
                    "operator": operator,
                    "asked_utc": asked,
                    "after_s": round(self.wall() - asked, 1),
                },
            )
        )
        return True

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        snap = self.snapshot
        if snap is None:
            raise RuntimeError("the controller has not started yet")
        now = self.clock()
        status = build_status(
            self.config,
            snap.view,
            snap.outputs,
            snap.reset_blockers,
            now=now,
            wall=self.wall(),
            uptime_s=now - self.started_at,
            simulated=self.simulated,
        )
        report = self.uplink_report
        age = report_age_s(self)
        status["uplinks"] = report[1] if report is not None else {}
        outbox = report[2] if report is not None else None
        status["outbox"] = outbox
        if outbox is not None and outbox.get("warning"):
            # Not a safety fault (the gas is not affected) but one the owner must see: the
            # alarms are not reaching their receivers.
            status["faults"].append(f"outbox: {outbox['warning']}")
        delivery = report[3] if report is not None else None
        status["delivery"] = delivery
        if delivery is not None:
            # Slow alarms and a path that is often down: warnings of the same kind.
            status["faults"] += [f"delivery: {w}" for w in delivery.get("warnings", [])]
        expected = bool(self.config.uplink_table)
        status["uplinks_process"] = {
            "expected": expected,
            "reporting": (age is not None and age <= UPLINK_STALE_S) if expected else None,
            "last_report_s_ago": None if age is None else round(age, 1),
        }
        recorder = self.recorder
        status["store"] = {
            "path": str(self.events_path),
            "ok": recorder is not None and recorder.health is None,
            "error": recorder.health if recorder is not None else "not started",
            # Waiting in memory: taken by the recorder, and still in its inbox.
            "backlog": (recorder.backlog if recorder is not None else 0)
            + self.recorder_inbox.waiting,
            "dropped": (recorder.dropped if recorder is not None else 0)
            + self.recorder_inbox.dropped,
            "uplinks_forwarded_seq": self.uplinks_forwarded if expected else None,
        }
        status["duty_check_pending_utc"] = self.duty_check_pending
        return status
