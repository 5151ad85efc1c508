"""The controller: one safety thread that owns the safety core, the valves and the annunciator,
surrounded by threads that do I/O.

Threads and what they may touch:

* **safety** (``Controller._safety_loop``): takes one input from ``inbox`` (a
  ``queue.SimpleQueue``: ``put`` never blocks, no lock another thread can hold for long),
  feeds the ``SafetyCore``, applies the valve commands *first*, then the lights and sounder,
  then hands the events to the recorder's queue and publishes an immutable snapshot for the
  status API. It never touches the disk, the network or the log on that path.
* **bus-NAME** (one ``DetectorBus`` per RS-485 port): polls detectors, puts Readings and
  CommFailures into ``inbox``.
* **recorder**: stores events durably (SQLite), logs them, then tells subscribers (uplinks).
* **control**: the Unix-socket API; reads the published snapshot, puts operator requests into
  ``inbox`` and waits for the core's answer.
* gpiozero's own threads: button callbacks (they only ``put``) and light blinking.

Fail safe: if the safety loop ever raises, every valve is commanded closed, the loop stops (so
systemd's watchdog is no longer fed) and ``run()`` exits non-zero; a restart begins with every
valve closed and needs a local manual reset.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpiozero import Factory

from gateway.api.control import CommandError, ControlServer, int_arg, only_args, str_arg
from gateway.api.status import build_status
from gateway.config import Config, load_config
from gateway.core.model import (
    MAX_INHIBIT_S,
    MAX_SOUNDER_TEST_S,
    Event,
    InhibitRequest,
    Input,
    Outputs,
    ResetRequest,
    SafetyPlan,
    SilenceRequest,
    SounderTestRequest,
    Tick,
    ValveFeedback,
    ValveTestRequest,
)
from gateway.core.safety import CoreView, SafetyCore
from gateway.drivers.annunciator import Annunciator
from gateway.drivers.modbus_bus import DetectorBus
from gateway.drivers.valve import ShutoffValve, make_valve
from gateway.log import error, log
from gateway.store.events import EventStore, StoredEvent
from gateway.store.recorder import LatchedSnapshot, Recorder, RecorderItem
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.manager import Uplinks
from gateway.validate import ConfigError

VERSION = "0.1.0"
TICK_S = 0.05  # the safety loop wakes at least this often to check silence and valve feedback
FEEDBACK_SAMPLE_S = 0.02  # valve position contacts are sampled this often
EVENTS_DB = "events.db"


@dataclass(frozen=True, slots=True)
class Replan:
    """A validated new safety plan for the safety thread (config reload)."""

    at: float
    plan: SafetyPlan


class ReloadRefused(Exception):
    """A config change that cannot be applied while running; the running config stays."""


# One item on the safety inbox: the input, and where to send the core's events for it (the
# control API waits on that queue for the answer to a silence request or a reload).
InboxItem = tuple[Input | Replan, "queue.SimpleQueue[tuple[Event, ...]] | None"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the status API reads: published by the safety thread as one immutable object
    (a reference assignment, so readers need no lock)."""

    view: CoreView
    outputs: Outputs
    reset_blockers: tuple[str, ...]
    at: float
    wall: float


class Controller:
    """Runs one site. ``start()`` brings everything up (valves closed), ``stop()`` takes it down
    (valves de-energised). ``pin_factory`` selects the GPIO backend (None = gpiozero's choice).
    ``simulated`` is shown in the status so nobody mistakes a demo for a real kitchen."""

    def __init__(
        self,
        config: Config,
        *,
        pin_factory: Factory | None = None,
        simulated: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.simulated = simulated
        self._clock = clock
        self._wall = wall
        self._pin_factory = pin_factory
        self.inbox: queue.SimpleQueue[InboxItem] = queue.SimpleQueue()
        self.recorder_inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
        self.events_path = events_db(config.data_dir)
        self.valves: dict[str, ShutoffValve] = {}
        self.annunciator: Annunciator | None = None
        self.buses: list[DetectorBus] = []
        self.recorder: Recorder | None = None
        self.uplinks: Uplinks | None = None
        self.control: ControlServer | None = None
        self.core: SafetyCore | None = None
        self.snapshot: Snapshot | None = None
        self.failure: BaseException | None = None
        self.started_at = clock()
        self.first_poll_done = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cycle_listeners: list[Callable[[], None]] = []
        self._extra_handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        # UTC of a fire-centre duty check (查岗) nobody has answered yet; one reference,
        # assigned whole by the recorder thread and cleared by whoever answers.
        self.duty_check_pending: float | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Valves first: build them (closed) before anything else can fail half-way."""
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for vc in cfg.valves:
                valve = make_valve(vc, self._pin_factory)
                self.valves[vc.name] = valve
                valve.command(False)
            self.annunciator = Annunciator(
                cfg.annunciator,
                on_silence=self._silence_pressed,
                on_reset=lambda: self.submit(ResetRequest(self._clock())),
                pin_factory=self._pin_factory,
            )
            with EventStore(self.events_path, cfg.event_capacity) as store:
                latched = store.load_latched()
            now = self._clock()
            self.started_at = now
            self.core = SafetyCore(cfg.plan(), now, latched)
            self.recorder = Recorder(self.events_path, cfg.event_capacity, self.recorder_inbox)
            self.recorder.subscribe(self._on_stored)
            self.uplinks = Uplinks(cfg.uplink, cfg.data_dir, cfg.site.id)
            self.uplinks.attach(self.recorder, self.events_path)
            self.recorder.start()
            self.uplinks.start(
                UplinkContext(
                    cfg.site.id,
                    cfg.site.name,
                    cfg.site.address,
                    self.status,
                    lambda e: self.recorder_inbox.put((self._wall(), e)),
                ),
                self._clock,
            )
            self.recorder_inbox.put(
                (
                    self._wall(),
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
                    ),
                )
            )
            self._publish(self.core.handle(Tick(now)), now)
            self._thread = threading.Thread(target=self._safety_loop, name="safety", daemon=True)
            self._thread.start()
            for bus in cfg.buses:
                detectors = [d for d in cfg.detectors if d.bus == bus.name]
                if not detectors:
                    continue
                poller = DetectorBus(
                    bus, detectors, cfg.timings.poll_period_s, self._deliver, clock=self._clock
                )
                self.buses.append(poller)
                poller.start()
            self.control = ControlServer(
                cfg.control_socket, {**self._handlers(), **self._extra_handlers}
            )
            self.control.start()
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
        self._stop.set()
        for bus in self.buses:
            bus.stop()
        if self._thread is not None:
            self.inbox.put((Tick(self._clock()), None))
            self._thread.join(2.0)
        self._close_all_valves()
        if self.control is not None:
            self.control.stop()
        if self.uplinks is not None:
            self.uplinks.stop()
        if self.recorder is not None:
            self.recorder.stop()
        if self.uplinks is not None:
            self.uplinks.close()
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
                    log("controller.ready", first_poll_s=round(self._clock() - self.started_at, 3))
            else:
                done.wait(0.5)
            if reload_wanted.is_set():
                reload_wanted.clear()
                self.reload_from_disk()
            if self.failure is not None or (self._thread and not self._thread.is_alive()):
                break
        self.stop()
        return 1 if self.failure is not None else 0

    def reload_from_disk(self) -> bool:
        """Re-read the config file (SIGHUP). An invalid file, or a change that needs a
        restart, is logged and recorded, and the running config stays in force."""
        path = self.config.path
        try:
            self.reload(load_config(path))
        except ConfigError as e:
            for p in e.problems:
                error("config.problem", problem=str(p))
            self._record_config_rejected(str(path), [str(p) for p in e.problems])
            return False
        except ReloadRefused as e:
            error("config.reload_refused", path=str(path), reason=str(e))
            self._record_config_rejected(str(path), [str(e)])
            return False
        return True

    def _record_config_rejected(self, path: str, problems: list[str]) -> None:
        event = Event(
            "config.rejected", "site", self._clock(), {"path": path, "problems": problems}
        )
        self.recorder_inbox.put((self._wall(), event))

    def reload(self, new: Config) -> None:
        """Apply a validated config without dropping protection: the safety core keeps its
        latches and valve lockouts (nothing opens), pollers of changed buses are restarted.
        Valves, annunciator pins, data directory, control socket and uplinks need a restart:
        ReloadRefused, and nothing changes."""
        old = self.config
        fixed = {
            "valves": (old.valves, new.valves),
            "annunciator": (old.annunciator, new.annunciator),
            "storage.data_dir": (old.data_dir, new.data_dir),
            "control.socket": (old.control_socket, new.control_socket),
            "uplink": (old.uplink, new.uplink),
        }
        changed = [name for name, (a, b) in fixed.items() if a != b]
        if changed:
            raise ReloadRefused(
                f"{', '.join(changed)} changed: these take effect only on a restart "
                "(systemctl restart gasguard), which starts with the gas off"
            )
        reply: queue.SimpleQueue[tuple[Event, ...]] = queue.SimpleQueue()
        self.inbox.put((Replan(self._clock(), new.plan()), reply))
        try:
            reply.get(timeout=2.0)
        except queue.Empty:
            raise ReloadRefused("the safety loop did not take the new plan within 2 s") from None
        self.config = new
        old_pollers = {p.bus.name: p for p in self.buses}
        pollers = []
        for bus in new.buses:
            detectors = [d for d in new.detectors if d.bus == bus.name]
            current = old_pollers.pop(bus.name, None)
            same = (
                current is not None
                and current.bus == bus
                and [d for d in old.detectors if d.bus == bus.name] == detectors
                and old.timings.poll_period_s == new.timings.poll_period_s
            )
            if same and current is not None:
                pollers.append(current)
                continue
            if current is not None:
                current.stop()
            if detectors:
                poller = DetectorBus(
                    bus, detectors, new.timings.poll_period_s, self._deliver, clock=self._clock
                )
                poller.start()
                pollers.append(poller)
        for gone in old_pollers.values():
            gone.stop()
        self.buses = pollers
        log("config.reloaded", path=str(new.path), detectors=len(new.detectors))

    # -- duty check (查岗) from the fire centre -----------------------------------------------

    def _on_stored(self, stored: StoredEvent) -> None:
        """Recorder thread: a duty check asks the staff to show they are there. Chirp the
        sounder (2 s, a core input like any other) and wait for the silence button."""
        if stored.kind == "uplink.duty_check":
            self.duty_check_pending = stored.utc
            self.submit(SounderTestRequest(self._clock(), 2.0, "duty-check"))

    def _silence_pressed(self) -> None:
        """gpiozero thread: silence the sounder, and answer a pending duty check."""
        self.submit(SilenceRequest(self._clock()))
        self.answer_duty_check("silence-button")

    def answer_duty_check(self, operator: str) -> bool:
        """Record the staff's answer to a pending duty check (the GB/T 26875.3 channel sends
        it up). False when none was pending."""
        asked = self.duty_check_pending
        if asked is None:
            return False
        self.duty_check_pending = None
        event = Event(
            "operator.duty_answer",
            "site",
            self._clock(),
            {"operator": operator, "asked_utc": asked, "after_s": round(self._wall() - asked, 1)},
        )
        self.recorder_inbox.put((self._wall(), event))
        return True

    def submit(self, inp: Input) -> None:
        """Queue an input for the safety thread (never blocks)."""
        self.inbox.put((inp, None))

    def on_cycle(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on the safety thread after the valves were set, at least every
        TICK_S (the systemd watchdog heartbeat). It must never block."""
        self._cycle_listeners.append(listener)

    # -- the safety thread ------------------------------------------------------------------------

    def _deliver(self, inp: Input) -> None:
        self.inbox.put((inp, None))

    def _safety_loop(self) -> None:
        core = self.core
        assert core is not None
        inbox = self.inbox
        clock = self._clock
        next_feedback = 0.0
        last_cycle_call = clock()
        try:
            while not self._stop.is_set():
                try:
                    inp, reply = inbox.get(timeout=TICK_S)
                except queue.Empty:
                    inp, reply = Tick(clock()), None
                if isinstance(inp, Replan):
                    out = core.replan(inp.plan, inp.at)
                else:
                    out = core.handle(inp)
                self._apply(out)
                now = clock()
                if now >= next_feedback:
                    next_feedback = now + FEEDBACK_SAMPLE_S
                    for name, valve in self.valves.items():
                        closed = valve.feedback_closed()
                        if closed is not None:
                            fb = core.handle(ValveFeedback(name, now, closed))
                            self._apply(fb)
                            out = _merge(out, fb)
                self._publish(out, now)
                if reply is not None:
                    reply.put(out.events)
                # At least every TICK_S, even when readings arrive back to back: a busy bus must
                # not starve the watchdog heartbeat of a healthy loop.
                if isinstance(inp, Tick) or now - last_cycle_call >= TICK_S:
                    last_cycle_call = now
                    for listener in self._cycle_listeners:
                        listener()
        except BaseException as e:  # fail safe: the gas goes off, the loop stops
            self.failure = e
            self._close_all_valves()
            error("safety.loop_failed", error=repr(e))

    def _apply(self, out: Outputs) -> None:
        """Valves first, then lights and sounder. No disk, network or log here."""
        # Every time, not only on change: the driver reads its output back and corrects a
        # coil found in the wrong state (it touches the pin only when they differ).
        for name, open_ in out.valves_open.items():
            self.valves[name].command(open_)
        if self.annunciator is not None:
            self.annunciator.show(out.sounder, out.red, out.yellow, out.green)

    def _publish(self, out: Outputs, now: float) -> None:
        core = self.core
        assert core is not None
        wall = self._wall()
        if out.events:
            for event in out.events:
                self.recorder_inbox.put((wall, event))
            if any(e.kind in ("alarm.raised", "operator.reset") for e in out.events):
                self.recorder_inbox.put(LatchedSnapshot(core.latched()))
        view = core.view()
        if not self.first_poll_done.is_set() and all(
            d.has_reading or d.fault is not None for d in view.detectors
        ):
            self.first_poll_done.set()
        self.snapshot = Snapshot(view, out, tuple(core.reset_blockers()), now, wall)

    def _close_all_valves(self) -> None:
        for name, valve in list(self.valves.items()):
            try:
                valve.command(False)
            except Exception as e:  # keep closing the others
                error("valve.close_failed", valve=name, error=repr(e))

    # -- control API handlers (run in the control thread) -----------------------------------------

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        # The socket is local (mode 0660, the service's user and group). The technician console
        # sends reset, inhibit and tests after the technician has logged in on site; the uplinks
        # never get this socket. Every action is recorded with the operator's id.
        return {
            "status": self._status_cmd,
            "events": self._events,
            "silence": lambda args: self._operator(SilenceRequest, args),
            "reset": lambda args: self._operator(ResetRequest, args),
            "inhibit": self._inhibit_cmd,
            "test_valve": self._test_valve_cmd,
            "test_sounder": self._test_sounder_cmd,
            "reload": self._reload_cmd,
            "duty_answer": self._duty_answer_cmd,
        }

    def add_handler(self, name: str, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Register one more control-socket command (before ``start()``)."""
        self._extra_handlers[name] = handler

    def status(self) -> dict[str, Any]:
        snap = self.snapshot
        if snap is None:
            raise RuntimeError("the controller has not started yet")
        status = build_status(
            self.config,
            snap.view,
            snap.outputs,
            snap.reset_blockers,
            now=self._clock(),
            wall=self._wall(),
            uptime_s=self._clock() - self.started_at,
            simulated=self.simulated,
        )
        status["uplinks"] = self.uplinks.state() if self.uplinks is not None else {}
        status["duty_check_pending_utc"] = self.duty_check_pending
        return status

    def _status_cmd(self, args: dict[str, Any]) -> dict[str, Any]:
        only_args("status", args, ())
        return self.status()

    def _events(self, args: dict[str, Any]) -> dict[str, Any]:
        only_args("events", args, ("limit",))
        limit = int_arg("events", args, "limit", 1, 10_000, 50)
        with EventStore.open_readonly(self.events_path) as reader:
            rows = reader.recent(limit)
        return {
            "events": [
                {
                    "seq": r.seq,
                    "utc": r.utc,
                    "kind": r.kind,
                    "source": r.source,
                    "details": r.details,
                }
                for r in rows
            ]
        }

    def _operator(
        self, kind: type[ResetRequest] | type[SilenceRequest], args: dict[str, Any]
    ) -> dict[str, Any]:
        only_args(kind.__name__, args, ("operator",))
        operator = str_arg(kind.__name__, args, "operator", "console")
        return self._ask(kind(self._clock(), operator))

    def _ask(self, inp: Input) -> dict[str, Any]:
        """Put an operator input to the safety thread and wait for the core's answer."""
        reply: queue.SimpleQueue[tuple[Event, ...]] = queue.SimpleQueue()
        self.inbox.put((inp, reply))
        try:
            events = reply.get(timeout=2.0)
        except queue.Empty:
            raise CommandError("the safety loop did not answer within 2 s") from None
        refused = [e for e in events if e.kind in ("operator.reset_refused", "operator.refused")]
        reasons: list[str] = []
        for e in refused:
            reasons += e.details.get("reasons", []) or [str(e.details.get("reason", ""))]
        return {
            "accepted": not refused,
            "reasons": reasons,
            "events": [{"kind": e.kind, "source": e.source, "details": e.details} for e in events],
        }

    def _inhibit_cmd(self, args: dict[str, Any]) -> dict[str, Any]:
        only_args("inhibit", args, ("detector", "minutes", "operator"))
        detector = str_arg("inhibit", args, "detector", "")
        minutes = int_arg("inhibit", args, "minutes", 0, int(MAX_INHIBIT_S // 60), 0)
        operator = str_arg("inhibit", args, "operator", "console")
        return self._ask(InhibitRequest(self._clock(), detector, minutes * 60.0, operator))

    def _test_valve_cmd(self, args: dict[str, Any]) -> dict[str, Any]:
        only_args("test_valve", args, ("valve", "operator"))
        valve = str_arg("test_valve", args, "valve", "")
        operator = str_arg("test_valve", args, "operator", "console")
        return self._ask(ValveTestRequest(self._clock(), valve, operator))

    def _test_sounder_cmd(self, args: dict[str, Any]) -> dict[str, Any]:
        only_args("test_sounder", args, ("seconds", "operator"))
        seconds = int_arg("test_sounder", args, "seconds", 1, int(MAX_SOUNDER_TEST_S), 3)
        operator = str_arg("test_sounder", args, "operator", "console")
        return self._ask(SounderTestRequest(self._clock(), float(seconds), operator))

    def _duty_answer_cmd(self, args: dict[str, Any]) -> dict[str, Any]:
        only_args("duty_answer", args, ("operator",))
        operator = str_arg("duty_answer", args, "operator", "console")
        return {"answered": self.answer_duty_check(operator)}

    def _reload_cmd(self, args: dict[str, Any]) -> dict[str, Any]:
        """Re-read the config file (after the console has written it atomically)."""
        only_args("reload", args, ())
        path = self.config.path
        try:
            self.reload(load_config(path))
        except ConfigError as e:
            problems = [str(p) for p in e.problems]
            self._record_config_rejected(str(path), problems)
            return {"applied": False, "problems": problems}
        except ReloadRefused as e:
            self._record_config_rejected(str(path), [str(e)])
            return {"applied": False, "problems": [str(e)]}
        return {"applied": True, "problems": []}


def _merge(a: Outputs, b: Outputs) -> Outputs:
    """The later outputs, with the events of both in order."""
    if not a.events:
        return b
    return Outputs(b.valves_open, b.sounder, b.red, b.yellow, b.green, a.events + b.events)


def events_db(data_dir: Path) -> Path:
    """Where the event log of a data directory lives."""
    return data_dir / EVENTS_DB
