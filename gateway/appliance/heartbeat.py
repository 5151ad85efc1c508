"""When the safety loop may tell systemd "still alive" (``WATCHDOG=1``), and the glue that does it.

systemd kills and restarts the service (which starts with every valve closed) when no
``WATCHDOG=1`` arrives within ``WatchdogSec``. A heartbeat must therefore prove that the safety
loop is doing its job, not merely that the process exists:

* It is sent **only from the safety thread**, after a quiet Tick, after the valves were set
  (``Controller.on_cycle``). Never from a timer thread: a stalled or dead safety loop stops the
  heartbeats, and systemd ends it.
* A **complete good cycle** earns a heartbeat: since the previous heartbeat every detector has
  a newer valid reply (``DetectorView.last_good_at`` advanced) or is declared faulty
  (``DetectorView.fault``), and every valve is settled: commanded open, confirmed closed, or
  declared failed by the core.
* A detector that has gone **silent but is still inside its comm-fault timeout** is not yet
  faulty, and a valve that is **closing but still inside its close-confirm time** is not yet
  confirmed or failed. Waiting for them would let systemd kill the controller (WatchdogSec 5 s)
  before the core may declare the fault (comm_fault_timeout_s up to 100 s): one unplugged
  detector would become a restart loop, with the sounder and lights going dark at every
  restart. So while everything pending is still within its deadline, the heartbeat is sent at
  a slower pace (``patience_s``, half the watchdog interval).
* A detector silent **beyond** its comm-fault timeout that the core has not declared faulty, or
  a valve unconfirmed beyond its close-confirm time that the core has not declared failed,
  means the core is not keeping its own deadlines: no heartbeat at all, systemd restarts the
  service, and the restart begins with the gas off.

A declared fault or a failed valve still earns heartbeats: restarting cannot move a stuck valve
or revive a dead detector, and would only blank the annunciator. Those are faults for a person,
shown by the lights, the sounder and the event log.

``CycleRule`` is the pure rule (fed ``(CoreView, now)``); ``SafetyHeartbeat`` is the glue a
controller calls on its safety thread; ``attach()`` wires both and READY=1 to a controller.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.appliance.notify import Notifier, watchdog_interval_s
from gateway.core.safety import CoreView
from gateway.log import log, warn

DEFAULT_PATIENCE_S = 2.0  # without a known watchdog interval
MIN_INTERVAL_S = 0.2  # never more than 5 heartbeats a second, whatever the poll rate
SLACK_S = 1.0  # how late the core may declare a fault before the rule calls it broken


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The core's own deadlines the rule holds it to: ``comm_fault_timeout_s`` (a silent
    detector must be declared faulty by then) and each valve's ``close_confirm_s`` (an
    unconfirmed closing valve must be declared failed by then)."""

    comm_fault_timeout_s: float
    close_confirm_s: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision of the rule: ``beat`` whether to send WATCHDOG=1 now; ``complete`` whether
    the cycle was complete; ``pending`` what is still within its deadline; ``overdue`` what
    the core has let pass its deadline (any entry stops the heartbeats)."""

    beat: bool
    complete: bool
    pending: tuple[str, ...] = ()
    overdue: tuple[str, ...] = ()


class CycleRule:
    """The heartbeat rule of the module docstring. Pure: no clock, no I/O, no threads. Feed it
    the core's view and the monotonic time after every quiet tick; ``decide()`` returns whether
    to send a heartbeat now and, when it says yes, starts the next cycle.

    ``patience_s``: the heartbeat period while something is pending (default 2 s; give half
    the watchdog interval). ``min_interval_s``: the fastest heartbeat rate. ``slack_s``: how
    late past its deadline the core may be before the rule calls it overdue.
    """

    def __init__(
        self,
        deadlines: Deadlines,
        *,
        patience_s: float = DEFAULT_PATIENCE_S,
        min_interval_s: float = MIN_INTERVAL_S,
        slack_s: float = SLACK_S,
    ) -> None:
        for name, value in (
            ("patience_s", patience_s),
            ("min_interval_s", min_interval_s),
            ("slack_s", slack_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"heartbeat {name} {value!r}: must be a finite number >= 0 s")
        if min_interval_s > patience_s:
            raise ValueError(
                f"heartbeat min_interval_s {min_interval_s!r}: must not exceed "
                f"patience_s ({patience_s!r})"
            )
        self.deadlines = deadlines
        self.patience_s = patience_s
        self.min_interval_s = min_interval_s
        self.slack_s = slack_s
        self._baseline: dict[str, float | None] = {}
        self._first_seen: float | None = None
        self._last_beat: float | None = None
        self._closing_since: dict[str, float] = {}

    def decide(self, view: CoreView, now: float) -> Verdict:
        """Judge the view at ``now``; on a beat, remember every detector's last valid reply as
        the baseline the next cycle must advance."""
        if self._first_seen is None:
            self._first_seen = now
        started = self._first_seen
        pending: list[str] = []
        overdue: list[str] = []
        timeout = self.deadlines.comm_fault_timeout_s
        for d in view.detectors:
            if d.fault is not None:
                continue  # declared faulty: the core has closed its zone
            before = self._baseline.get(d.name)
            if d.last_good_at is not None and (before is None or d.last_good_at > before):
                continue  # a newer valid reply went through the core
            silent_since = d.last_good_at if d.last_good_at is not None else started
            if now - silent_since > timeout + self.slack_s:
                overdue.append(
                    f"detector {d.name}: silent {now - silent_since:.1f} s, "
                    f"not declared faulty (comm_fault_timeout_s {timeout:g})"
                )
            else:
                pending.append(f"detector {d.name}: no new reply yet")
        closing_now: set[str] = set()
        for v in view.valves:
            if v.commanded_open or v.confirmed or v.failed:
                continue
            closing_now.add(v.name)
            since = self._closing_since.setdefault(v.name, now)
            confirm_s = self.deadlines.close_confirm_s.get(v.name, 0.0)
            if now - since > confirm_s + self.slack_s:
                overdue.append(
                    f"valve {v.name}: unconfirmed {now - since:.1f} s, not declared failed "
                    f"(close_confirm_s {confirm_s:g})"
                )
            else:
                pending.append(f"valve {v.name}: closing, not yet confirmed")
        for name in list(self._closing_since):
            if name not in closing_now:
                del self._closing_since[name]
        complete = not pending and not overdue
        since_beat = None if self._last_beat is None else now - self._last_beat
        if overdue:
            beat = False
        elif complete:
            beat = since_beat is None or since_beat >= self.min_interval_s
        else:
            beat = since_beat is None or since_beat >= self.patience_s
        if beat:
            self._last_beat = now
            self._baseline = {d.name: d.last_good_at for d in view.detectors}
        return Verdict(beat, complete, tuple(pending), tuple(overdue))


# ---------------------------------------------------------------------------------------------
# The glue: what the controller calls on its safety thread
# ---------------------------------------------------------------------------------------------


class _Snapshot(Protocol):
    @property
    def view(self) -> CoreView: ...
    @property
    def at(self) -> float: ...


class _Timings(Protocol):
    @property
    def comm_fault_timeout_s(self) -> float: ...


class _Valve(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def close_confirm_s(self) -> float: ...


class _Config(Protocol):
    @property
    def timings(self) -> _Timings: ...
    @property
    def valves(self) -> tuple[_Valve, ...]: ...


class ControllerLike(Protocol):
    """What the glue needs of ``gateway.safety.controller.Controller`` (no import: the controller
    may import this module)."""

    @property
    def snapshot(self) -> _Snapshot | None: ...
    @property
    def config(self) -> _Config: ...
    @property
    def first_poll_done(self) -> threading.Event: ...
    def on_cycle(self, listener: Callable[[], None]) -> None: ...


def deadlines_of(config: _Config) -> Deadlines:
    """The core's deadlines from a site config."""
    return Deadlines(
        comm_fault_timeout_s=config.timings.comm_fault_timeout_s,
        close_confirm_s={v.name: v.close_confirm_s for v in config.valves},
    )


class SafetyHeartbeat:
    """Sends ``WATCHDOG=1`` through ``notifier`` when ``CycleRule`` says so. Register it with
    ``controller.on_cycle(heartbeat)``: the safety thread then calls it after each quiet Tick,
    right after the valves were set and the snapshot published.

    Never raises into the safety loop (an exception there closes every valve and stops the
    controller): a failure of its own only withholds the heartbeat, so systemd restarts the
    service, and is kept in ``error`` for the main thread to log. Never logs, never blocks.
    """

    def __init__(
        self,
        controller: ControllerLike,
        notifier: Notifier,
        *,
        watchdog_s: float | None = None,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.controller = controller
        self.notifier = notifier
        self.watchdog_s = watchdog_s
        patience = DEFAULT_PATIENCE_S if watchdog_s is None else watchdog_s / 2
        self._config = controller.config
        self.rule = CycleRule(
            deadlines_of(self._config),
            patience_s=patience,
            min_interval_s=min(min_interval_s, patience),
        )
        self.beats = 0
        self.last_verdict: Verdict | None = None
        self.error: BaseException | None = None

    def __call__(self) -> None:
        """The ``on_cycle`` listener: judges the snapshot the safety thread just published."""
        snap = self.controller.snapshot
        if snap is None:
            return
        self.on_cycle(snap.view, snap.at)

    def on_cycle(self, view: CoreView, now: float) -> None:
        """Judge ``view`` at ``now`` (safety thread only) and send the heartbeat if earned."""
        try:
            config = self.controller.config
            if config is not self._config:  # a reload may change the core's deadlines
                self._config = config
                self.rule.deadlines = deadlines_of(config)
            verdict = self.rule.decide(view, now)
            self.last_verdict = verdict
            if verdict.beat and self.notifier.watchdog():
                self.beats += 1
        except Exception as e:  # withhold the heartbeat; never disturb the safety loop
            self.error = e


class SystemdLink:
    """The controller's link to systemd: the heartbeat on the safety thread, READY=1 once the
    first complete poll is in, STOPPING=1 at shutdown. Made by ``attach()``."""

    def __init__(self, controller: ControllerLike, notifier: Notifier, heartbeat: SafetyHeartbeat):
        self.controller = controller
        self.notifier = notifier
        self.heartbeat = heartbeat
        self.ready_sent = threading.Event()
        self._stop = threading.Event()
        self._waiter: threading.Thread | None = None

    def send_ready(self) -> bool:
        """READY=1 with a status line (main thread, once ``first_poll_done`` is set)."""
        cfg = self.controller.config
        detectors = len(getattr(cfg, "detectors", ()))
        ok = self.notifier.ready(
            f"protecting: {detectors} detector(s) polled; gas stays off until a local reset"
        )
        self.ready_sent.set()
        log("systemd.ready", notify=self.notifier.enabled, sent=ok)
        return ok

    def start_ready_waiter(self) -> None:
        """Send READY=1 from a helper thread when the first complete poll is in (for callers
        whose main thread is busy in ``Controller.run()``). READY is not a liveness signal, so
        a helper thread may send it; WATCHDOG=1 never comes from here."""

        def wait() -> None:
            while not self._stop.is_set():
                if self.controller.first_poll_done.wait(0.2):
                    self.send_ready()
                    return

        self._waiter = threading.Thread(target=wait, name="systemd-ready", daemon=True)
        self._waiter.start()

    def stopping(self) -> None:
        """STOPPING=1: call at the start of an orderly shutdown."""
        self._stop.set()
        self.notifier.stopping("stopping: closing every valve")
        if self.heartbeat.error is not None:
            warn("systemd.heartbeat_error", error=repr(self.heartbeat.error))

    def close(self) -> None:
        self._stop.set()
        if self._waiter is not None:
            self._waiter.join(1.0)
        self.notifier.close()


def attach(
    controller: ControllerLike,
    notifier: Notifier | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    ready_waiter: bool = True,
) -> SystemdLink:
    """Wire ``controller`` to systemd: register the heartbeat with ``controller.on_cycle`` and
    (``ready_waiter``) send READY=1 when ``first_poll_done`` is set. Call before
    ``controller.run()`` / ``start()``, on the main thread. ``notifier`` defaults to one for
    ``$NOTIFY_SOCKET``; the watchdog interval comes from ``$WATCHDOG_USEC``."""
    notifier = Notifier(environ) if notifier is None else notifier
    interval = watchdog_interval_s(environ)
    heartbeat = SafetyHeartbeat(controller, notifier, watchdog_s=interval)
    if interval is not None:
        poll = getattr(getattr(controller.config, "timings", None), "poll_period_s", None)
        if isinstance(poll, int | float) and 2 * poll > interval / 2:
            # Two poll periods make one complete cycle with margin; slower than half the
            # watchdog interval and a healthy controller only beats at the patience pace.
            warn(
                "systemd.watchdog_tight",
                watchdog_s=interval,
                poll_period_s=poll,
                hint="raise WatchdogSec to at least 4 poll periods",
            )
    controller.on_cycle(heartbeat)
    link = SystemdLink(controller, notifier, heartbeat)
    if ready_waiter:
        link.start_ready_waiter()
    log("systemd.attached", notify=notifier.enabled, watchdog_s=interval or "off")
    return link
