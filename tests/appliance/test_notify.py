"""The sd_notify protocol against a real NOTIFY_SOCKET datagram socket, the heartbeat rule, and
the whole controller on the simulated kitchen feeding systemd's watchdog from its safety loop."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.appliance.heartbeat import CycleRule, Deadlines, SafetyHeartbeat, attach
from gateway.appliance.notify import (
    Notifier,
    NotifyError,
    NotifyListener,
    watchdog_interval_s,
)
from gateway.core.model import Level
from gateway.core.safety import CoreView, DetectorView, ValveView
from gateway.safety.controller import Controller
from gateway.sim.kitchen import SimBus, SimDetector, SimulatedKitchen


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(str(tmp_path / "notify"))
    yield lst
    lst.close()


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.status("x") is False
    assert n.sent == 0


def test_messages_arrive_on_a_path_socket(listener: NotifyListener) -> None:
    n = Notifier(listener.environ())
    assert n.enabled
    assert n.ready("first poll done")
    assert n.watchdog()
    assert n.status("two\nlines")
    assert n.stopping()
    got = listener.receive(1.0)
    fields = [f for _t, _pid, f in got]
    assert fields == [
        {"READY": "1", "STATUS": "first poll done"},
        {"WATCHDOG": "1"},
        {"STATUS": "two lines"},
        {"STOPPING": "1"},
    ]
    # The kernel's credentials name this process: what systemd checks for NotifyAccess=main.
    assert {pid for _t, pid, _f in got} == {os.getpid()}
    n.close()


def test_abstract_namespace_socket(tmp_path: Path) -> None:
    name = f"@gasguard-test-{os.getpid()}-{time.monotonic_ns()}"
    lst = NotifyListener(name)
    try:
        n = Notifier({"NOTIFY_SOCKET": name})
        assert n.address == b"\0" + name[1:].encode()
        assert n.watchdog()
        assert lst.wait_for("WATCHDOG", "1", 2.0) is not None
        n.close()
    finally:
        lst.close()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("run/notify", "absolute path"),
        ("vsock:2:1234", "absolute path"),
        ("/" + "x" * 120, "at most 107 bytes"),
        ("@", "1 to 107 bytes"),
    ],
)
def test_unusable_notify_socket_is_a_clear_error(value: str, why: str) -> None:
    with pytest.raises(NotifyError) as e:
        Notifier({"NOTIFY_SOCKET": value})
    assert why in str(e.value)
    assert repr(value)[:20] in str(e.value)


def test_send_never_raises_when_nobody_listens(tmp_path: Path) -> None:
    lst = NotifyListener(str(tmp_path / "gone"))
    n = Notifier(lst.environ())
    lst.close()  # systemd went away
    assert n.watchdog() is False
    assert n.failed == 1
    assert isinstance(n.last_error, OSError)


def test_a_full_socket_never_blocks_the_sender(listener: NotifyListener) -> None:
    n = Notifier(listener.environ())
    results = [n.watchdog() for _ in range(5000)]  # nobody reads: the queue fills up
    assert True in results
    assert False in results, "a full queue must fail the send (EAGAIN), not block it"
    assert isinstance(n.last_error, BlockingIOError)


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "5000000"}) == 5.0
    pid = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": pid}) == 2.5
    # Meant for another process (inherited by a child): not ours to feed.
    assert watchdog_interval_s({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}) is None
    for bad in ("5s", "0", "-1", "99999999999999"):
        with pytest.raises(NotifyError, match="WATCHDOG_USEC"):
            watchdog_interval_s({"WATCHDOG_USEC": bad})
    with pytest.raises(NotifyError, match="WATCHDOG_PID"):
        watchdog_interval_s({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "me"})


# ---------------------------------------------------------------------------------------------
# The rule
# ---------------------------------------------------------------------------------------------


def det(name: str, last_good: float | None, fault: str | None = None) -> DetectorView:
    return DetectorView(
        name=name,
        zone="hot-kitchen",
        lel=None if fault else 1.0,
        level=Level.NORMAL,
        latched=Level.NORMAL,
        fault=fault,
        last_good_at=last_good,
        has_reading=last_good is not None,
    )


def valve(
    name: str = "main", open_: bool = False, confirmed: bool = True, failed: bool = False
) -> ValveView:
    return ValveView(name, open_, "test", None if open_ else True, confirmed, failed)


def view(*detectors: DetectorView, valves: tuple[ValveView, ...] = ()) -> CoreView:
    return CoreView(tuple(detectors), valves or (valve(),), False)


DEADLINES = Deadlines(comm_fault_timeout_s=10.0, close_confirm_s={"main": 2.0})


def test_a_complete_cycle_needs_a_newer_reply_from_every_detector() -> None:
    rule = CycleRule(DEADLINES, patience_s=2.0, min_interval_s=0.2)
    assert rule.decide(view(det("a", 0.9), det("b", 0.95)), 1.0).beat
    # Only "a" answered again: not complete, and too early for a patient beat.
    v = rule.decide(view(det("a", 1.4), det("b", 0.95)), 1.5)
    assert not v.beat and not v.complete
    assert v.pending == ("detector b: no new reply yet",)
    v = rule.decide(view(det("a", 1.4), det("b", 1.45)), 1.5)
    assert v.beat and v.complete
    # Same replies again: a new cycle has not happened yet.
    assert not rule.decide(view(det("a", 1.4), det("b", 1.45)), 1.8).beat


def test_a_declared_fault_completes_the_cycle() -> None:
    rule = CycleRule(DEADLINES, patience_s=2.0, min_interval_s=0.2)
    assert rule.decide(view(det("a", 0.9), det("b", 0.9)), 1.0).beat
    v = rule.decide(view(det("a", 1.5), det("b", 0.9, fault="comm: no valid reply")), 1.6)
    assert v.beat and v.complete


def test_silent_detector_within_its_timeout_gets_patient_beats_not_a_restart() -> None:
    rule = CycleRule(DEADLINES, patience_s=2.0, min_interval_s=0.2)
    assert rule.decide(view(det("a", 0.0), det("b", 0.0)), 0.1).beat
    beats = []
    t = 0.1
    while t < 10.5:  # "b" stays silent; the core may declare it only at 10 s
        t = round(t + 0.05, 2)
        if rule.decide(view(det("a", t - 0.01), det("b", 0.0)), t).beat:
            beats.append(t)
    gaps = [b - a for a, b in zip([0.1, *beats], beats, strict=False)]
    # Ticks come every 0.05 s: a beat is due on the first tick 2 s after the previous one.
    assert beats and max(gaps) <= 2.05 + 1e-9
    assert min(gaps) >= 2.0 - 1e-9, "an incomplete cycle beats only at the patience pace"


def test_a_core_that_misses_its_comm_fault_deadline_gets_no_heartbeat() -> None:
    rule = CycleRule(DEADLINES, patience_s=2.0, min_interval_s=0.2, slack_s=1.0)
    assert rule.decide(view(det("a", 0.0), det("b", 0.0)), 0.1).beat
    v = rule.decide(view(det("a", 11.0), det("b", 0.0)), 11.5)
    assert not v.beat
    assert v.overdue and "detector b: silent 11.5 s" in v.overdue[0]
    assert not rule.decide(view(det("a", 20.0), det("b", 0.0)), 20.1).beat


def test_never_answered_detector_is_measured_from_the_first_view() -> None:
    rule = CycleRule(DEADLINES, patience_s=2.0, min_interval_s=0.2, slack_s=1.0)
    assert rule.decide(view(det("a", None)), 5.0).beat  # start-up: pending, first beat
    assert rule.decide(view(det("a", None)), 15.5).beat  # 10.5 s: within timeout + slack
    assert not rule.decide(view(det("a", None)), 16.5).beat


def test_valve_must_be_settled_within_its_confirm_time() -> None:
    rule = CycleRule(DEADLINES, patience_s=2.0, min_interval_s=0.2, slack_s=1.0)
    closing = (valve(confirmed=False),)
    assert rule.decide(view(det("a", 1.0), valves=closing), 1.0).beat
    v = rule.decide(view(det("a", 1.5), valves=closing), 1.5)
    assert not v.beat and v.pending == ("valve main: closing, not yet confirmed",)
    v = rule.decide(view(det("a", 4.1), valves=closing), 4.1)
    assert not v.beat and v.overdue, "unconfirmed 3.1 s, past close_confirm_s + slack"
    failed = (valve(confirmed=False, failed=True),)
    assert rule.decide(view(det("a", 4.3), valves=failed), 4.3).beat
    assert rule.decide(view(det("a", 4.6), valves=(valve(),)), 4.6).beat
    assert rule.decide(view(det("a", 4.9), valves=(valve(open_=True, confirmed=False),)), 4.9).beat


def test_rule_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="patience_s"):
        CycleRule(DEADLINES, patience_s=float("nan"))
    with pytest.raises(ValueError, match="min_interval_s 3"):
        CycleRule(DEADLINES, patience_s=2.0, min_interval_s=3.0)


class _Timings:
    comm_fault_timeout_s = 10.0
    poll_period_s = 0.5


class _ValveCfg:
    name = "main"
    close_confirm_s = 2.0


class _Config:
    timings = _Timings()
    valves = (_ValveCfg(),)


class FakeController:
    """The little a SafetyHeartbeat reads of a controller; ``broken`` makes ``config`` raise."""

    def __init__(self) -> None:
        self.snapshot = None
        self.first_poll_done = threading.Event()
        self.listeners: list[Callable[[], None]] = []
        self.broken = False
        self._config = _Config()

    @property
    def config(self) -> _Config:
        if self.broken:
            raise RuntimeError("config gone")
        return self._config

    def on_cycle(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)


def test_the_glue_beats_through_the_notifier_and_never_raises_into_the_safety_loop(
    listener: NotifyListener,
) -> None:
    fake = FakeController()
    hb = SafetyHeartbeat(fake, Notifier(listener.environ()), watchdog_s=4.0)
    assert hb.rule.patience_s == 2.0
    hb.on_cycle(view(det("a", 1.0)), 1.0)
    assert hb.beats == 1
    assert listener.wait_for("WATCHDOG", "1", 2.0) is not None
    fake.broken = True
    hb.on_cycle(view(det("a", 2.0)), 2.0)  # must not raise
    assert isinstance(hb.error, RuntimeError)
    assert hb.beats == 1, "a failing glue withholds the heartbeat"


# ---------------------------------------------------------------------------------------------
# The whole controller on the simulated kitchen
# ---------------------------------------------------------------------------------------------

DETECTORS = (
    SimDetector("wok-1", "hot-kitchen", "bus0", 1, "generic-cn-kitchen", "natural-gas"),
    SimDetector("wok-2", "hot-kitchen", "bus0", 2, "generic-cn-kitchen", "natural-gas"),
    SimDetector("fryer", "hot-kitchen", "bus1", 1, "honeywell-sensepoint-xcd", "natural-gas"),
)
BUSES = (SimBus("bus0", 9600, "N"), SimBus("bus1", 19200, "E"))


@pytest.fixture
def kitchen(tmp_path: Path) -> Iterator[SimulatedKitchen]:
    k = SimulatedKitchen(
        tmp_path / "kitchen",
        buses=BUSES,
        detectors=DETECTORS,
        travel_s=0.05,
        poll_period_s=0.2,
        comm_fault_timeout_s=5.0,
    )
    k.start()
    k.set_all_gas(1.0)
    yield k
    k.stop()


def run_attached(
    kitchen: SimulatedKitchen, listener: NotifyListener, watchdog_usec: int
) -> tuple[Controller, Any]:
    controller = Controller(kitchen.config(), pin_factory=kitchen.factory, simulated=True)
    env = {**listener.environ(), "WATCHDOG_USEC": str(watchdog_usec)}
    link = attach(controller, environ=env)
    controller.start()
    return controller, link


def test_ready_after_first_poll_then_heartbeats_and_a_stalled_loop_stops_them(
    kitchen: SimulatedKitchen, listener: NotifyListener
) -> None:
    controller, link = run_attached(kitchen, listener, 4_000_000)
    try:
        ready_at = listener.wait_for("READY", "1", 5.0)
        assert ready_at is not None, "READY=1 never arrived"
        assert controller.first_poll_done.is_set()
        assert listener.wait_for("WATCHDOG", "1", 3.0, since=ready_at) is not None
        t0 = time.monotonic()
        listener.listen(1.0)
        assert len(listener.times("WATCHDOG", "1", since=t0)) >= 2
        assert {pid for _t, pid, _f in listener.messages} == {os.getpid()}

        # Stall the safety loop: the core blocks inside handle(). Bus threads keep polling.
        core = controller.core
        assert core is not None
        original = core.handle
        stall = threading.Event()
        release = threading.Event()

        def stalling(inp: Any) -> Any:
            if stall.is_set():
                release.wait(10)
            return original(inp)

        core.handle = stalling  # type: ignore[method-assign]
        polls_before = kitchen.detectors["wok-1"].requests_seen
        stall.set()
        time.sleep(0.3)  # let any heartbeat already in flight arrive
        listener.receive(0.05)
        quiet_from = time.monotonic()
        listener.listen(1.5)
        assert listener.times("WATCHDOG", "1", since=quiet_from) == [], (
            "a stalled safety loop must not send WATCHDOG=1"
        )
        assert kitchen.detectors["wok-1"].requests_seen > polls_before, "buses kept polling"

        release.set()
        stall.clear()
        resumed = time.monotonic()
        assert listener.wait_for("WATCHDOG", "1", 3.0, since=resumed) is not None
        assert link.heartbeat.error is None
    finally:
        link.stopping()
        controller.stop()
        link.close()
    assert listener.wait_for("STOPPING", "1", 2.0) is not None


def test_a_silent_detector_does_not_starve_the_watchdog(
    kitchen: SimulatedKitchen, listener: NotifyListener
) -> None:
    # WatchdogSec 3 s is shorter than the 5 s comm-fault timeout: waiting for the silent
    # detector's next reply would get the controller killed before it may declare the fault.
    controller, link = run_attached(kitchen, listener, 3_000_000)
    try:
        ready_at = listener.wait_for("READY", "1", 5.0)
        assert ready_at is not None
        kitchen.detectors["fryer"].silent = True
        silent_from = time.monotonic()
        deadline = silent_from + 7.0  # through the 5 s timeout and past the fault
        listener.listen(deadline - time.monotonic())
        beats = listener.times("WATCHDOG", "1", since=silent_from)
        edges = [silent_from, *beats, time.monotonic()]
        gaps = [b - a for a, b in itertools.pairwise(edges)]
        assert max(gaps) < 3.0, f"heartbeat gap {max(gaps):.2f} s >= WatchdogSec 3 s"
        fryer = next(d for d in controller.status()["detectors"] if d["name"] == "fryer")
        assert fryer["state"] == "comm-fault"
        verdict = link.heartbeat.last_verdict
        assert verdict is not None and not verdict.overdue
    finally:
        link.stopping()
        controller.stop()
        link.close()
