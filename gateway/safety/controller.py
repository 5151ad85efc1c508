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

import queue
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
from gateway.config import Config, load_config
from gateway.core.model import (
    Event,
    Input,
    ResetRequest,
    SilenceRequest,
    SounderTestRequest,
    StoreHealth,
)
from gateway.core.safety import SafetyCore
from gateway.drivers.annunciator import Annunciator
from gateway.drivers.valve import ShutoffValve, make_valve
from gateway.log import error, log
from gateway.paths import EVENTS_DB, events_db, uplink_socket
from gateway.safety.handlers import (
    STATE_CHANGING,
    control_handlers,
    report_age_s,
    uplink_handlers,
)
from gateway.safety.loop import TICK_S, LoopTimeout, Replan, SafetyLoop, Snapshot
from gateway.safety.peers import uplink_uids
from gateway.safety.pollers import Pollers
from gateway.store.events import StoredEvent, latched_from_log
from gateway.store.latchfile import LatchFile, latch_path, union
from gateway.store.recorder import Recorder, RecorderItem
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
        self.recorder_inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
        self.events_path = events_db(config.data_dir)
        self.valves: dict[str, ShutoffValve] = {}
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
        self.uplink_report: tuple[float, dict[str, Any], dict[str, Any] | None] | None = None
        # UTC of a fire-centre duty check (查岗) nobody has answered yet; one reference,
        # assigned whole by the recorder thread and cleared by whoever answers.
        self.duty_check_pending: float | None = None

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
            loop = SafetyLoop(
                SafetyCore(cfg.plan(), now, latched),
                self.valves,
                self.annunciator,
                self.recorder_inbox,
                clock=self.clock,
                wall=self.wall,
                first_poll_done=self.first_poll_done,
                on_thread_start=self._on_path_thread,
            )
            for listener in self._cycle_listeners:
                loop.on_cycle(listener)
            self.recorder = Recorder(
                self.events_path,
                cfg.event_capacity,
                self.recorder_inbox,
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
                        "latched_restored": {k: v.name.lower() for k, v in latched.items()},
                    },
                )
            )
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
                uplink_socket(cfg.control_socket), uplink_handlers(self)
            )
            self.uplink_server.start()
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
        Valves, annunciator pins, data directory and control socket need a restart:
        ReloadRefused, and nothing changes. (The uplinks process reads ``[uplink]`` itself.)"""
        with self._reload_lock:
            old = self.config
            fixed = {
                "valves": (old.valves, new.valves),
                "annunciator": (old.annunciator, new.annunciator),
                "storage.data_dir": (old.data_dir, new.data_dir),
                "control.socket": (old.control_socket, new.control_socket),
            }
            changed = [name for name, (a, b) in fixed.items() if a != b]
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
            self.pollers.apply(new)
            log("config.reloaded", path=str(new.path), detectors=len(new.detectors))

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
            "backlog": recorder.backlog if recorder is not None else 0,
            "dropped": recorder.dropped if recorder is not None else 0,
        }
        status["duty_check_pending_utc"] = self.duty_check_pending
        return status
