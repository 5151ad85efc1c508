"""Safety properties of the core, checked after EVERY input of random kitchens and histories.

Hypothesis draws a plan (1-4 zones, 1-6 detectors, 1-3 valves, random set points, timeouts and
confirmation counts) and a history of Readings, CommFailures, ValveFeedback, Resets, Silences and
Ticks with increasing times. An independent model of "when did each detector last answer" and
"which valves were open" is kept beside the core, so the checks do not trust the core's own
bookkeeping.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.model import (
    CommFailure,
    DetectorPlan,
    InhibitRequest,
    Input,
    Level,
    Light,
    Outputs,
    Reading,
    ResetRequest,
    SafetyPlan,
    SilenceRequest,
    StoreHealth,
    Tick,
    ValveFeedback,
    ValvePlan,
    ValveTestRequest,
)
from gateway.core.safety import SafetyCore

ZONES = ("z0", "z1", "z2", "z3")


@st.composite
def plans(draw: st.DrawFn) -> SafetyPlan:
    n_zones = draw(st.integers(1, 4))
    zones = ZONES[:n_zones]
    n_det = draw(st.integers(1, 6))
    detectors = []
    for i in range(n_det):
        low = draw(st.floats(1.0, 25.0))
        high = draw(st.floats(low + 0.5, 50.0))
        range_lel = draw(st.sampled_from((100.0, 50.0, 30.0)))
        zone = zones[i] if i < n_zones else draw(st.sampled_from(zones))
        detectors.append(DetectorPlan(f"det-{i}", zone, low, high, range_lel))
    used = sorted({d.zone for d in detectors})
    n_valves = draw(st.integers(1, 3))
    valve_zones: list[set[str]] = [
        set(draw(st.lists(st.sampled_from(used), min_size=1, max_size=len(used), unique=True)))
        for _ in range(n_valves)
    ]
    # As the config loader demands: every detector's zone is closed by at least one valve.
    valve_zones[0] |= set(used) - set().union(*valve_zones)
    valves = tuple(
        ValvePlan(
            f"valve-{j}",
            tuple(sorted(zs)),
            has_feedback=draw(st.booleans()),
            close_confirm_s=draw(st.floats(0.5, 3.0)),
        )
        for j, zs in enumerate(valve_zones)
    )
    # Two-detector confirmation where a zone has two or more detectors (as the config demands).
    shared = sorted(z for z in used if sum(d.zone == z for d in detectors) >= 2)
    two = draw(st.lists(st.sampled_from(shared), unique=True)) if shared else []
    return SafetyPlan(
        detectors=tuple(detectors),
        valves=valves,
        comm_fault_timeout_s=draw(st.floats(2.0, 20.0)),
        confirm_count=draw(st.integers(2, 5)),
        two_detector_zones=frozenset(two),
    )


# One step of history, before times are assigned: (kind, target index, payload).
LELS = st.one_of(
    st.floats(0.0, 15.0),
    st.floats(15.0, 60.0),
    st.floats(60.0, 150.0),
    st.just(None),
    st.just(math.nan),
    st.just(math.inf),
    st.floats(-20.0, 0.0),
)
Step = tuple[str, int, object]
STEPS = st.one_of(
    st.tuples(st.just("reading"), st.integers(0, 5), LELS),
    st.tuples(st.just("normal"), st.integers(0, 5), st.floats(0.0, 1.0)),
    st.tuples(
        st.just("reading-own"),
        st.integers(0, 5),
        st.tuples(st.sampled_from(list(Level)), st.sampled_from((None, "sensor drift"))),
    ),
    st.tuples(st.just("repeat"), st.integers(0, 5), st.tuples(LELS, st.integers(2, 5))),
    st.tuples(st.just("commfail"), st.integers(0, 5), st.just(None)),
    st.tuples(st.just("all-normal"), st.just(0), st.just(None)),
    st.tuples(st.just("feedback"), st.integers(0, 2), st.sampled_from((True, False, None))),
    st.tuples(st.just("reset"), st.just(0), st.just(None)),
    st.tuples(st.just("silence"), st.just(0), st.just(None)),
    st.tuples(st.just("tick"), st.just(0), st.just(None)),
    st.tuples(st.just("inhibit"), st.integers(0, 5), st.sampled_from((0.0, 0.5, 3.0, 30.0))),
    st.tuples(st.just("valve-test"), st.integers(0, 2), st.just(None)),
    st.tuples(st.just("store"), st.just(0), st.sampled_from((None, "disk full", "read-only"))),
)
# Time between steps, as a fraction of the comm-fault timeout: mostly short (a busy kitchen),
# sometimes long enough for a comm fault, sometimes right at the timeout.
_SHORT = st.floats(0.0, 0.05)
GAPS = st.one_of(
    st.just(0.0),
    _SHORT,
    _SHORT,
    _SHORT,
    st.floats(0.05, 0.5),
    st.floats(0.5, 1.5),
    st.sampled_from((1.0, 1.0001)),
)


def expand(plan: SafetyPlan, step: Step, at: float) -> list[Input]:
    kind, idx, payload = step
    det = plan.detectors[idx % len(plan.detectors)].name
    if kind == "reading":
        assert payload is None or isinstance(payload, float)
        return [Reading(det, at, payload)]
    if kind == "normal":
        assert isinstance(payload, float)
        return [Reading(det, at, payload)]
    if kind == "reading-own":
        assert isinstance(payload, tuple)
        own, fault = payload
        return [Reading(det, at, 1.0, own_alarm=own, fault=fault)]
    if kind == "repeat":
        # The same value several times in a row: what confirms an alarm or a fault.
        assert isinstance(payload, tuple)
        lel, count = payload
        return [Reading(det, at, lel) for _ in range(count)]
    if kind == "commfail":
        return [CommFailure(det, at, "timeout")]
    if kind == "all-normal":
        # A quiet spell: every detector answers normally, enough times to clear confirmations.
        return [Reading(d.name, at, 0.0) for _ in range(plan.confirm_count) for d in plan.detectors]
    if kind == "feedback":
        valve = plan.valves[idx % len(plan.valves)].name
        assert payload is None or isinstance(payload, bool)
        return [ValveFeedback(valve, at, payload)]
    if kind == "reset":
        return [ResetRequest(at)]
    if kind == "silence":
        return [SilenceRequest(at)]
    if kind == "inhibit":
        assert isinstance(payload, float)
        return [InhibitRequest(at, det, payload, "tech")]
    if kind == "valve-test":
        return [ValveTestRequest(at, plan.valves[idx % len(plan.valves)].name, "tech")]
    if kind == "store":
        assert payload is None or isinstance(payload, str)
        return [StoreHealth(at, payload)]
    return [Tick(at)]


NEGATIVE_FAULT_LEL = -5.0  # the core's documented limit for an implausible negative value


@dataclass
class DetectorModel:
    """The documented rules for one detector, written out again independently of the core:
    the level rises to L when the last ``n`` usable readings are all at L or above and falls
    when they are all below; ``n`` unusable readings among the last ``2n`` are a sensor fault,
    ``2n`` usable ones in a row clear it; a reset needs the last ``2n`` all usable."""

    plan: DetectorPlan
    n: int
    levels: deque[Level] = field(init=False)
    unusable: deque[bool] = field(init=False)
    level: Level = Level.NORMAL
    sensor_fault: bool = False
    has_reading: bool = False

    def __post_init__(self) -> None:
        self.levels = deque(maxlen=self.n)
        self.unusable = deque(maxlen=2 * self.n)

    def classify(self, r: Reading) -> Level | None:
        if r.fault is not None or r.lel is None or math.isnan(r.lel):
            return None
        if r.lel < NEGATIVE_FAULT_LEL:
            return None
        if r.lel >= self.plan.high_lel or r.lel > self.plan.range_lel:
            level = Level.HIGH
        elif r.lel >= self.plan.low_lel:
            level = Level.LOW
        else:
            level = Level.NORMAL
        return max(level, r.own_alarm)

    def feed(self, r: Reading) -> None:
        self.has_reading = True
        level = self.classify(r)
        self.unusable.append(level is None)
        if sum(self.unusable) >= self.n:
            self.sensor_fault = True
        elif len(self.unusable) == 2 * self.n and not any(self.unusable):
            self.sensor_fault = False
        if level is None:
            if r.own_alarm == Level.NORMAL:
                return
            level = r.own_alarm  # the detector says it is alarming, fault or not
        self.levels.append(level)
        if len(self.levels) == self.n:
            if min(self.levels) > self.level:
                self.level = min(self.levels)
            elif max(self.levels) < self.level:
                self.level = max(self.levels)

    def normal_now(self) -> bool:
        """What a reset requires of this detector (apart from answering in time)."""
        return (
            self.has_reading
            and not self.sensor_fault
            and self.level == Level.NORMAL
            and bool(self.unusable)
            and not any(self.unusable)
            and (not self.levels or self.levels[-1] == Level.NORMAL)
        )


@dataclass
class Model:
    """What an outside observer knows: when each detector last gave a valid reply, and what
    the documented rules make of its readings."""

    plan: SafetyPlan
    start: float
    last_reply: dict[str, float] = field(default_factory=dict)
    detectors: dict[str, DetectorModel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.last_reply = {d.name: self.start for d in self.plan.detectors}
        self.detectors = {
            d.name: DetectorModel(d, self.plan.confirm_count) for d in self.plan.detectors
        }

    def silent_at(self, name: str, now: float) -> bool:
        return now - self.last_reply[name] > self.plan.comm_fault_timeout_s

    def feed(self, r: Reading) -> None:
        self.last_reply[r.detector] = r.at
        self.detectors[r.detector].feed(r)


def assert_reset_allowed(
    plan: SafetyPlan, model: Model, inp: Input, blockers_before: list[str]
) -> None:
    assert isinstance(inp, ResetRequest), inp
    assert blockers_before == [], blockers_before
    for det in plan.detectors:
        assert not model.silent_at(det.name, inp.at), det.name
        assert model.detectors[det.name].normal_now(), model.detectors[det.name]


def check_step(
    core: SafetyCore,
    plan: SafetyPlan,
    model: Model,
    inp: Input,
    before_open: dict[str, bool],
    blockers_before: list[str],
    out: Outputs,
) -> None:
    view = core.view()
    valves_of_zone = {
        d.zone: [v.name for v in plan.valves if d.zone in v.zones] for d in plan.detectors
    }

    # Outputs are consistent with the view.
    assert out.valves_open == {v.name: v.commanded_open for v in view.valves}
    assert set(out.valves_open) == {v.name for v in plan.valves}

    for d in view.detectors:
        # The core's level and sensor fault follow the documented confirmation rules.
        dm = model.detectors[d.name]
        assert d.level == dm.level, (d, dm)
        # Only a detector inhibited for calibration may be in alarm without latching it.
        assert d.latched >= dm.level or d.inhibited_until is not None, (d, dm)
        if d.fault is None or not d.fault.startswith("comm"):
            assert (d.fault is not None) == dm.sensor_fault, (d, dm)
        # A latched alarm or an active fault closes every valve of the detector's zone; in a
        # two-detector zone a lone low alarm (no fault) does not, but gas beyond the high set
        # point always does.
        lone_low = (
            d.zone in plan.two_detector_zones
            and d.fault is None
            and d.latched == Level.LOW
            and sum(
                1
                for o in view.detectors
                if o.zone == d.zone and (o.latched > Level.NORMAL or o.fault is not None)
            )
            < 2
        )
        if (d.latched > Level.NORMAL or d.fault is not None) and not lone_low:
            for valve in valves_of_zone[d.zone]:
                assert out.valves_open[valve] is False, (d, valve)
        if (d.level == Level.HIGH or d.latched == Level.HIGH) and d.inhibited_until is None:
            for valve in valves_of_zone[d.zone]:
                assert out.valves_open[valve] is False, ("gas beyond high, valve open", d)
        # Silence is a fault, never a value.
        if model.silent_at(d.name, inp.at):
            assert d.fault is not None and d.fault.startswith("comm"), d
        if d.fault is not None and d.fault.startswith("comm"):
            assert d.lel is None, d
        if not d.has_reading:
            assert d.lel is None, d

    # A valve opens only on a reset, and only when every detector was normal and answering.
    opened = [n for n, is_open in out.valves_open.items() if is_open and not before_open[n]]
    if opened:
        assert_reset_allowed(plan, model, inp, blockers_before)
        assert core.latched() == {}
    # A reset is accepted (latches cleared, event recorded) only under the same conditions.
    if any(e.kind == "operator.reset" for e in out.events):
        assert_reset_allowed(plan, model, inp, blockers_before)

    # Lights and sounder follow the state.
    any_alarm = any(d.latched > Level.NORMAL for d in view.detectors)
    any_fault = (
        any(d.fault is not None for d in view.detectors)
        or any(v.failed for v in view.valves)
        or view.store_fault is not None
    )
    assert out.green == Light.ON
    assert out.red == (Light.FLASH_ALARM if any_alarm else Light.OFF)
    if any_fault:
        assert out.yellow == Light.FLASH_FAULT
    elif not all(out.valves_open.values()):
        assert out.yellow == Light.ON
    if out.sounder:
        assert any_alarm or any_fault
    if (any_alarm or any_fault) and not view.silenced:
        assert out.sounder
    # Every alarm the core latched is one it can hand to the store for a restart.
    assert core.latched() == {d.name: d.latched for d in view.detectors if d.latched}


class History:
    """A core, the outside model beside it and the last outputs: runs steps and checks each."""

    def __init__(self, plan: SafetyPlan, start: float) -> None:
        self.plan = plan
        self.core = SafetyCore(plan, start)
        self.model = Model(plan, start)
        self.now = start
        self.out = self.core.handle(Tick(start))
        assert not any(self.out.valves_open.values())  # a start never opens gas

    def run(self, steps: list[tuple[Step, float]]) -> None:
        for step, gap in steps:
            self.now += gap * self.plan.comm_fault_timeout_s
            for inp in expand(self.plan, step, self.now):
                before_open = dict(self.out.valves_open)
                blockers_before = self.core.reset_blockers()
                self.out = self.core.handle(inp)
                if isinstance(inp, Reading):
                    self.model.feed(inp)
                check_step(
                    self.core, self.plan, self.model, inp, before_open, blockers_before, self.out
                )

    def replan(self, plan: SafetyPlan, gap: float) -> Outputs:
        """Apply ``plan``; detectors kept by name keep their last reply time. A plan the core
        refuses (a change to a detector that is not normal) changes nothing."""
        self.now += gap
        self.out = self.core.replan(plan, self.now)
        if "config.refused" in [e.kind for e in self.out.events]:
            return self.out  # refused: nothing changed, the model neither
        old = self.model
        same_count = plan.confirm_count == old.plan.confirm_count
        self.plan = plan
        self.model = Model(plan, self.now)
        for d in plan.detectors:
            if d.name in old.last_reply:
                self.model.last_reply[d.name] = old.last_reply[d.name]
                kept = old.detectors[d.name]
                same_meaning = (kept.plan.profile, kept.plan.range_lel) == (d.profile, d.range_lel)
                if same_count and same_meaning:  # the core keeps the detector's state as it is
                    kept.plan = d
                    self.model.detectors[d.name] = kept
                else:  # new confirmation windows; the confirmed level and fault carry over
                    fresh = self.model.detectors[d.name]
                    fresh.level, fresh.sensor_fault = kept.level, kept.sensor_fault
        return self.out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=plans(),
    steps=st.lists(st.tuples(STEPS, GAPS), min_size=20, max_size=100),
    start=st.floats(0.0, 1e6),
)
def test_safety_properties_hold_after_every_input(
    plan: SafetyPlan, steps: list[tuple[Step, float]], start: float
) -> None:
    History(plan, start).run(steps)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=plans(),
    new_plan=plans(),
    steps=st.lists(st.tuples(STEPS, GAPS), min_size=1, max_size=30),
    gap=st.floats(0.0, 1.0),
    more=st.lists(st.tuples(STEPS, GAPS), min_size=0, max_size=20),
)
def test_replan_never_opens_a_valve_and_keeps_latches(
    plan: SafetyPlan,
    new_plan: SafetyPlan,
    steps: list[tuple[Step, float]],
    gap: float,
    more: list[tuple[Step, float]],
) -> None:
    h = History(plan, 0.0)
    h.run(steps)
    open_before = dict(h.out.valves_open)
    latched_before = h.core.latched()
    out = h.replan(new_plan, gap)
    for name, is_open in out.valves_open.items():
        if is_open:
            assert open_before.get(name) is True, name  # only valves that were already open
    new_names = {d.name for d in new_plan.detectors}
    kinds = [e.kind for e in out.events]
    applied = "config.applied" in kinds
    assert applied != ("config.refused" in kinds)
    assert h.core.latched() == latched_before
    # Only the local manual reset clears a latch: a plan without a latched detector is refused
    # (and so is any other change to what a non-normal detector stands for:
    # test_latch_model.py holds that rule over whole histories).
    if not all(n in new_names for n in latched_before):
        assert not applied
    # A latched alarm or fault carried across the re-plan closes its (new) zone's valves.
    for d in h.core.view().detectors:
        if d.latched > Level.NORMAL or d.fault is not None:
            for v in (new_plan if applied else plan).valves:
                if d.zone in v.zones:
                    assert out.valves_open[v.name] is False
    h.run(more)  # and every property keeps holding under the new plan
