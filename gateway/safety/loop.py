"""The safety thread: the one thread that owns the safety core, the valves and the annunciator.

It takes one input at a time from ``inbox`` (a ``queue.SimpleQueue``: ``put`` never blocks and
no other thread can hold a lock it needs), feeds the ``SafetyCore``, drives the valves *first*,
then the lights and sounder, then hands the events to the recorder's queue and publishes an
immutable ``Snapshot`` for the status readers. On that path there is no disk, no network, no
log line and no lock another thread can hold.

Fail safe: if anything on the loop raises, every valve is commanded closed, the loop stops (so
the watchdog is no longer fed) and ``failure`` is set; the process then exits non-zero and a
restart begins with every valve closed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.core.model import (
    Event,
    FanFeedback,
    Input,
    Outputs,
    PowerInput,
    SafetyPlan,
    Tick,
    ValveFeedback,
)
from gateway.core.safety import CoreView, SafetyCore
from gateway.drivers.annunciator import Annunciator
from gateway.drivers.fan import ExhaustFan
from gateway.drivers.power import PowerContacts
from gateway.drivers.valve import ShutoffValve
from gateway.log import error
from gateway.store.recorder import LatchedSnapshot, RecorderItem

TICK_S = 0.05  # the loop wakes at least this often to check silence and valve feedback
FEEDBACK_SAMPLE_S = 0.02  # valve, fan and power contacts are sampled this often
ANSWER_TIMEOUT_S = 2.0  # how long a control request waits for the loop's answer


@dataclass(frozen=True, slots=True)
class Replan:
    """A validated new safety plan for the safety thread (config reload)."""

    at: float
    plan: SafetyPlan


# One item on the safety inbox: the input, and where to send the core's events for it (the
# control API waits on that queue for the answer to an operator request or a reload).
InboxItem = tuple[Input | Replan, "queue.SimpleQueue[tuple[Event, ...]] | None"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the status readers see: published by the safety thread as one immutable object
    (a reference assignment, so readers need no lock)."""

    view: CoreView
    outputs: Outputs
    reset_blockers: tuple[str, ...]
    at: float
    wall: float


class LoopTimeout(Exception):
    """The safety loop did not answer a request in time."""


class SafetyLoop:
    """The safety thread around ``core``, driving ``valves`` and ``annunciator``.

    ``recorder_inbox`` receives ``(utc, Event)`` items and latched-state snapshots after the
    outputs were set. ``on_cycle`` listeners run on the safety thread after the valves were set,
    at least every ``TICK_S`` (the watchdog heartbeat); they must never block."""

    def __init__(
        self,
        core: SafetyCore,
        valves: Mapping[str, ShutoffValve],
        annunciator: Annunciator | None,
        recorder_inbox: queue.SimpleQueue[RecorderItem],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        first_poll_done: threading.Event | None = None,
        on_thread_start: Callable[[], object] | None = None,
        fans: Mapping[str, ExhaustFan] | None = None,
        power: PowerContacts | None = None,
    ) -> None:
        self.core = core
        self.fans: Mapping[str, ExhaustFan] = fans or {}
        self.power = power
        self._on_thread_start = on_thread_start
        self.valves = valves
        self.annunciator = annunciator
        self.recorder_inbox = recorder_inbox
        self.inbox: queue.SimpleQueue[InboxItem] = queue.SimpleQueue()
        self.snapshot: Snapshot | None = None
        self.failure: BaseException | None = None
        # Set once every detector has answered or been declared faulty (READY=1).
        self.first_poll_done = first_poll_done or threading.Event()
        self._clock = clock
        self._wall = wall
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cycle_listeners: list[Callable[[], None]] = []
        self._last_latched = core.latched()  # what the store was given (restored at start)

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Publish the first outputs (every valve closed), then start the thread."""
        now = self._clock()
        self._publish(self.core.handle(Tick(now)), now)
        self._thread = threading.Thread(target=self._run, name="safety", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self.inbox.put((Tick(self._clock()), None))
            self._thread.join(2.0)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def on_cycle(self, listener: Callable[[], None]) -> None:
        self._cycle_listeners.append(listener)

    # -- inputs from other threads ---------------------------------------------------------------

    def submit(self, inp: Input) -> None:
        """Queue an input (never blocks): bus pollers, buttons, the recorder."""
        self.inbox.put((inp, None))

    def ask(self, item: Input | Replan, timeout_s: float = ANSWER_TIMEOUT_S) -> tuple[Event, ...]:
        """Queue ``item`` and wait for the core's events for it (control threads only)."""
        reply: queue.SimpleQueue[tuple[Event, ...]] = queue.SimpleQueue()
        self.inbox.put((item, reply))
        try:
            return reply.get(timeout=timeout_s)
        except queue.Empty:
            raise LoopTimeout(f"the safety loop did not answer within {timeout_s:g} s") from None

    # -- the thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        if self._on_thread_start is not None:
            self._on_thread_start()
        core = self.core
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
                    for contact in self._contacts(now):
                        fb = core.handle(contact)
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
            self.close_all_valves()
            error("safety.loop_failed", error=repr(e))

    def _contacts(self, now: float) -> list[Input]:
        """Every wired contact as read now: valve positions, fan run feedback, power."""
        found: list[Input] = []
        for name, valve in self.valves.items():
            closed = valve.feedback_closed()
            if closed is not None:
                found.append(ValveFeedback(name, now, closed))
        for name, fan in self.fans.items():
            running = fan.running()
            if running is not None:
                found.append(FanFeedback(name, now, running))
        if self.power is not None:
            for signal, active in self.power.read().items():
                found.append(PowerInput(signal, now, active))
        return found

    def _apply(self, out: Outputs) -> None:
        """Valves first, then fans, lights and sounder. No disk, network or log here."""
        # Every time, not only on change: the driver reads its output back and corrects a
        # coil found in the wrong state (it touches the pin only when they differ).
        for name, open_ in out.valves_open.items():
            self.valves[name].command(open_)
        for name, on in out.fans_on.items():
            fan = self.fans.get(name)
            if fan is not None:
                fan.command(on)
        if self.annunciator is not None:
            self.annunciator.show(out.sounder, out.red, out.yellow, out.green)

    def _publish(self, out: Outputs, now: float) -> None:
        """After the valves were driven: the snapshot first, then the events. Whoever reads
        the status because of an event (the uplinks, Home Assistant) finds it there."""
        core = self.core
        wall = self._wall()
        view = core.view()
        if not self.first_poll_done.is_set() and all(
            d.has_reading or d.fault is not None for d in view.detectors
        ):
            self.first_poll_done.set()
        self.snapshot = Snapshot(view, out, tuple(core.reset_blockers()), now, wall)
        if out.events:
            for event in out.events:
                self.recorder_inbox.put((wall, event))
            # Whenever the latches changed (an alarm, a reset, an orphan cleared or re-attached
            # by a reload): only then, so the latch file is written once per change.
            latched = core.latched()
            if latched != self._last_latched:
                self._last_latched = latched
                self.recorder_inbox.put(LatchedSnapshot(latched))

    def close_all_valves(self) -> None:
        """Command every valve closed; one that fails does not stop the others."""
        for name, valve in list(self.valves.items()):
            try:
                valve.command(False)
            except Exception as e:  # keep closing the others
                error("valve.close_failed", valve=name, error=repr(e))


def _merge(a: Outputs, b: Outputs) -> Outputs:
    """The later outputs, with the events of both in order."""
    if not a.events:
        return b
    return Outputs(
        b.valves_open, b.sounder, b.red, b.yellow, b.green, a.events + b.events, b.fans_on
    )
