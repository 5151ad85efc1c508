"""The pure safety core, one kitchen behaviour per test, driven with explicit times.

The standard kitchen here: the hot kitchen has two wok detectors behind the main inlet valve,
the bakery has one oven detector behind its own valve. Set points 20 / 50 %LEL, alarms confirmed
by 2 readings, comm fault after 10 s of silence. Valves have no position contact unless a test
says otherwise.
"""

from __future__ import annotations

import math

import pytest

from gateway.core.model import (
    CommFailure,
    DetectorPlan,
    Event,
    InhibitRequest,
    Input,
    Level,
    Light,
    Outputs,
    Reading,
    ResetRequest,
    SafetyPlan,
    SilenceRequest,
    SounderTestRequest,
    StoreHealth,
    Tick,
    ValveFeedback,
    ValvePlan,
    ValveTestRequest,
)
from gateway.core.safety import CoreView, DetectorView, SafetyCore, ValveView

HOT = "hot-kitchen"
BAKERY = "bakery"
DETECTORS = ("wok-1", "wok-2", "oven-1")
TIMEOUT = 10.0
CONFIRM = 2


def kitchen_plan(
    feedback: bool = False, confirm: int = CONFIRM, extra_valve: bool = False
) -> SafetyPlan:
    valves = [
        ValvePlan("main-inlet", (HOT,), has_feedback=feedback, close_confirm_s=2.0),
        ValvePlan("bakery-valve", (BAKERY,), has_feedback=feedback, close_confirm_s=2.0),
    ]
    if extra_valve:
        valves.append(ValvePlan("wok-line", (HOT,), has_feedback=False))
    return SafetyPlan(
        detectors=(
            DetectorPlan("wok-1", HOT, low_lel=20.0, high_lel=50.0),
            DetectorPlan("wok-2", HOT, low_lel=20.0, high_lel=50.0),
            DetectorPlan("oven-1", BAKERY, low_lel=20.0, high_lel=50.0),
        ),
        valves=tuple(valves),
        comm_fault_timeout_s=TIMEOUT,
        confirm_count=confirm,
    )


class Kitchen:
    """A SafetyCore plus the time, so each test reads as what happens in the kitchen."""

    def __init__(self, plan: SafetyPlan | None = None, latched: dict[str, Level] | None = None):
        self.now = 0.0
        self.core = SafetyCore(plan or kitchen_plan(), self.now, latched)
        self.out = self.core.handle(Tick(self.now))
        self.events: list[Event] = list(self.out.events)

    def feed(self, inp: Input) -> Outputs:
        self.out = self.core.handle(inp)
        self.events.extend(self.out.events)
        return self.out

    def at(self, dt: float = 0.5) -> float:
        self.now += dt
        return self.now

    def read(
        self,
        detector: str,
        lel: float | None,
        own_alarm: Level = Level.NORMAL,
        fault: str | None = None,
    ) -> Outputs:
        return self.feed(Reading(detector, self.at(), lel, own_alarm, fault))

    def all_normal(self, lel: float = 0.0) -> Outputs:
        for name in self.view_names():
            self.read(name, lel)
        return self.out

    def view_names(self) -> list[str]:
        return [d.name for d in self.core.view().detectors]

    def reset(self) -> Outputs:
        return self.feed(ResetRequest(self.at()))

    def silence(self) -> Outputs:
        return self.feed(SilenceRequest(self.at()))

    def tick(self, dt: float) -> Outputs:
        return self.feed(Tick(self.at(dt)))

    def feedback(self, valve: str, closed: bool | None) -> Outputs:
        return self.feed(ValveFeedback(valve, self.at(0.1), closed))

    def running(self) -> Kitchen:
        """Every detector normal, reset accepted: gas on."""
        self.all_normal()
        self.reset()
        assert all(self.out.valves_open.values()), self.out
        self.events.clear()
        return self

    def detector(self, name: str) -> DetectorView:
        return next(d for d in self.core.view().detectors if d.name == name)

    def valve(self, name: str) -> ValveView:
        return next(v for v in self.core.view().valves if v.name == name)

    def kinds(self, source: str | None = None) -> list[str]:
        return [e.kind for e in self.events if source is None or e.source == source]

    def view(self) -> CoreView:
        return self.core.view()


# -- start-up ----------------------------------------------------------------------------------


def test_startup_keeps_every_valve_closed_with_yellow_steady() -> None:
    k = Kitchen()
    assert k.out.valves_open == {"main-inlet": False, "bakery-valve": False}
    assert k.out.yellow == Light.ON
    assert k.out.red == Light.OFF
    assert k.out.green == Light.ON
    assert k.out.sounder is False


def test_startup_reset_refused_until_every_detector_has_a_normal_reading() -> None:
    k = Kitchen()
    k.read("wok-1", 0.0)
    k.read("wok-2", 0.0)
    out = k.reset()
    assert out.valves_open == {"main-inlet": False, "bakery-valve": False}
    refused = [e for e in out.events if e.kind == "operator.reset_refused"]
    assert len(refused) == 1
    assert refused[0].details["reasons"] == ["oven-1: no reading yet"]
    assert k.core.reset_blockers() == ["oven-1: no reading yet"]


def test_startup_reset_opens_every_valve_after_a_normal_reading_from_each_detector() -> None:
    k = Kitchen()
    k.all_normal(lel=3.0)
    assert k.core.reset_blockers() == []
    out = k.reset()
    assert out.valves_open == {"main-inlet": True, "bakery-valve": True}
    assert "operator.reset" in [e.kind for e in out.events]
    assert sorted(e.source for e in out.events if e.kind == "valve.opened") == [
        "bakery-valve",
        "main-inlet",
    ]
    assert out.yellow == Light.OFF


# -- alarm confirmation --------------------------------------------------------------------------


def test_one_reading_above_low_does_nothing() -> None:
    k = Kitchen().running()
    out = k.read("wok-1", 30.0)
    assert all(out.valves_open.values())
    assert "alarm.raised" not in k.kinds()
    assert k.detector("wok-1").level == Level.NORMAL
    assert out.red == Light.OFF and out.sounder is False


def test_two_consecutive_low_readings_raise_a_low_alarm_and_close_only_that_zones_valve() -> None:
    k = Kitchen().running()
    k.read("wok-1", 25.0)
    out = k.read("wok-1", 22.0)
    assert out.valves_open == {"main-inlet": False, "bakery-valve": True}
    raised = [e for e in out.events if e.kind == "alarm.raised"]
    assert len(raised) == 1
    assert raised[0].source == "wok-1"
    assert raised[0].details["level"] == "low"
    assert raised[0].details["zone"] == HOT
    assert k.detector("wok-1").latched == Level.LOW
    assert out.red == Light.FLASH_ALARM and out.sounder is True


def test_two_consecutive_high_readings_raise_a_high_alarm() -> None:
    k = Kitchen().running()
    k.read("oven-1", 55.0)
    out = k.read("oven-1", 70.0)
    assert out.valves_open == {"main-inlet": True, "bakery-valve": False}
    assert [e.details["level"] for e in out.events if e.kind == "alarm.raised"] == ["high"]
    assert k.detector("oven-1").latched == Level.HIGH


def test_over_range_reading_counts_as_high_alarm() -> None:
    # A detector whose span ends at 30 %LEL: a value beyond its range is treated as high even
    # though it is below the 50 %LEL high set point.
    plan = SafetyPlan(
        detectors=(DetectorPlan("wok-1", HOT, 20.0, 50.0, range_lel=30.0),),
        valves=(ValvePlan("main-inlet", (HOT,), has_feedback=False),),
    )
    k = Kitchen(plan).running()
    k.read("wok-1", 31.0)
    out = k.read("wok-1", 35.0)
    assert out.valves_open == {"main-inlet": False}
    assert k.detector("wok-1").latched == Level.HIGH


def test_detector_own_alarm_bits_count_even_with_a_low_value() -> None:
    k = Kitchen().running()
    k.read("wok-2", 5.0, own_alarm=Level.HIGH)
    out = k.read("wok-2", 5.0, own_alarm=Level.HIGH)
    assert out.valves_open["main-inlet"] is False
    assert k.detector("wok-2").latched == Level.HIGH


def test_single_spikes_between_normal_readings_never_close_a_valve() -> None:
    k = Kitchen().running()
    for _ in range(5):
        k.read("wok-1", 0.0)
        k.read("wok-1", 80.0)
    assert all(k.out.valves_open.values())
    assert "alarm.raised" not in k.kinds()
    assert k.detector("wok-1").latched == Level.NORMAL


def test_detector_reporting_its_own_alarm_together_with_a_fault_is_an_alarm() -> None:
    # A saturated sensor: no usable value (NaN) but the detector's status says high alarm.
    k = Kitchen().running()
    k.read("wok-1", math.nan, own_alarm=Level.HIGH, fault="concentration is not a number")
    out = k.read("wok-1", math.nan, own_alarm=Level.HIGH, fault="concentration is not a number")
    assert out.valves_open["main-inlet"] is False
    assert [e.details["level"] for e in out.events if e.kind == "alarm.raised"] == ["high"]
    assert out.red == Light.FLASH_ALARM
    assert out.yellow == Light.FLASH_FAULT
    assert k.detector("wok-1").lel is None


def test_first_reading_after_startup_alone_raises_no_alarm() -> None:
    k = Kitchen()
    k.read("wok-1", 80.0)
    assert "alarm.raised" not in k.kinds()
    assert k.core.latched() == {}
    assert k.out.red == Light.OFF


def test_comm_failures_between_two_alarm_readings_do_not_break_confirmation() -> None:
    k = Kitchen().running()
    k.read("wok-1", 30.0)
    k.feed(CommFailure("wok-1", k.at(), "timeout"))
    k.feed(CommFailure("wok-1", k.at(), "crc"))
    out = k.read("wok-1", 30.0)
    assert out.valves_open["main-inlet"] is False
    assert "alarm.raised" in [e.kind for e in out.events]


def test_low_alarm_rising_to_high_raises_again() -> None:
    k = Kitchen().running()
    k.read("wok-1", 25.0)
    k.read("wok-1", 25.0)
    k.read("wok-1", 60.0)
    out = k.read("wok-1", 60.0)
    assert [e.details["level"] for e in out.events if e.kind == "alarm.raised"] == ["high"]
    assert k.detector("wok-1").latched == Level.HIGH


# -- latching ----------------------------------------------------------------------------------


def test_alarm_stays_latched_when_gas_clears() -> None:
    k = Kitchen().running()
    k.read("wok-1", 30.0)
    k.read("wok-1", 30.0)
    k.read("wok-1", 0.0)
    out = k.read("wok-1", 0.0)
    cleared = [e for e in out.events if e.kind == "alarm.cleared"]
    assert len(cleared) == 1 and cleared[0].details["latched"] == "low"
    assert out.valves_open["main-inlet"] is False
    assert out.red == Light.FLASH_ALARM
    assert k.detector("wok-1").level == Level.NORMAL
    assert k.detector("wok-1").latched == Level.LOW
    assert k.core.latched() == {"wok-1": Level.LOW}
    # Time passing with the gas gone changes nothing.
    for _ in range(10):
        k.all_normal()
    assert k.out.valves_open["main-inlet"] is False


def test_reset_refused_with_reasons_while_gas_is_present_then_accepted_when_clear() -> None:
    k = Kitchen().running()
    k.read("wok-1", 30.0)
    k.read("wok-1", 30.0)
    out = k.reset()
    refused = [e for e in out.events if e.kind == "operator.reset_refused"]
    assert refused and refused[0].details["reasons"] == [
        "wok-1: gas at 30.0 %LEL, low alarm not yet cleared"
    ]
    assert out.valves_open["main-inlet"] is False
    k.read("wok-1", 0.0)
    k.read("wok-1", 0.0)
    out = k.reset()
    assert out.valves_open == {"main-inlet": True, "bakery-valve": True}
    assert out.red == Light.OFF
    assert k.core.latched() == {}


def test_reset_refused_after_one_spike_even_though_level_is_normal() -> None:
    k = Kitchen().running()
    k.read("wok-1", 30.0)
    k.read("wok-1", 30.0)
    k.read("wok-1", 0.0)
    k.read("wok-1", 0.0)
    k.read("wok-1", 40.0)  # gas again, not yet confirmed
    out = k.reset()
    assert out.valves_open["main-inlet"] is False
    assert k.core.reset_blockers() == ["wok-1: gas at 40.0 %LEL"]


def test_reset_refused_while_alarm_is_still_confirmed_despite_one_normal_reading() -> None:
    k = Kitchen().running()
    k.read("wok-1", 30.0)
    k.read("wok-1", 30.0)
    k.read("wok-1", 0.0)  # one normal reading does not yet clear a confirmed alarm
    assert k.detector("wok-1").level == Level.LOW
    out = k.reset()
    assert out.valves_open["main-inlet"] is False
    assert len(k.core.reset_blockers()) == 1
    assert k.core.reset_blockers()[0].startswith("wok-1: ")


def test_reset_refused_when_the_last_reading_was_a_sensor_fault() -> None:
    k = Kitchen().running()
    k.read("wok-1", 30.0)
    k.read("wok-1", 30.0)
    k.read("wok-1", 0.0)
    k.read("wok-1", 0.0)
    k.read("wok-1", math.nan)  # one unusable reply: not yet a confirmed fault, not normal either
    out = k.reset()
    assert out.valves_open["main-inlet"] is False
    assert len(k.core.reset_blockers()) == 1
    assert k.core.reset_blockers()[0].startswith("wok-1: ")


# -- silence -----------------------------------------------------------------------------------


def _alarm_on_wok_1(k: Kitchen) -> None:
    k.read("wok-1", 30.0)
    k.read("wok-1", 30.0)
    assert k.out.sounder is True


def test_silence_turns_the_sounder_off_and_resets_nothing() -> None:
    k = Kitchen().running()
    _alarm_on_wok_1(k)
    out = k.silence()
    assert out.sounder is False
    assert out.valves_open["main-inlet"] is False
    assert out.red == Light.FLASH_ALARM
    assert k.core.latched() == {"wok-1": Level.LOW}
    assert k.view().silenced is True
    assert "operator.silence" in [e.kind for e in out.events]
    assert k.tick(1.0).sounder is False


def test_new_alarm_on_another_detector_turns_the_sounder_on_again() -> None:
    k = Kitchen().running()
    _alarm_on_wok_1(k)
    k.silence()
    k.read("oven-1", 30.0)
    out = k.read("oven-1", 30.0)
    assert out.sounder is True


def test_new_fault_turns_the_sounder_on_again() -> None:
    k = Kitchen().running()
    _alarm_on_wok_1(k)
    k.silence()
    # oven-1 goes silent while the woks keep answering.
    for _ in range(int(TIMEOUT / 1.0) + 2):
        k.now += 1.0
        k.feed(Reading("wok-1", k.now, 30.0))
        k.feed(Reading("wok-2", k.now, 0.0))
    assert "fault.raised" in k.kinds("oven-1")
    assert k.out.sounder is True


def test_gas_returning_on_the_same_detector_after_clearing_turns_the_sounder_on_again() -> None:
    k = Kitchen().running()
    _alarm_on_wok_1(k)
    k.read("wok-1", 0.0)
    k.read("wok-1", 0.0)
    k.silence()
    assert k.out.sounder is False
    k.events.clear()
    k.read("wok-1", 30.0)
    out = k.read("wok-1", 30.0)
    assert out.sounder is True
    assert "alarm.raised" in k.kinds("wok-1")  # the returning gas is recorded, not swallowed


# -- comm fault --------------------------------------------------------------------------------


def test_silent_detector_becomes_a_comm_fault_and_closes_its_valve() -> None:
    k = Kitchen().running()
    k.read("wok-1", 7.0)
    t_last = k.now
    # Only failures from wok-1 from now on; the others keep answering.
    out = k.out
    while k.now - t_last <= TIMEOUT + 1.0:
        k.now += 1.0
        k.feed(CommFailure("wok-1", k.now, "timeout"))
        k.feed(Reading("wok-2", k.now, 0.0))
        out = k.feed(Reading("oven-1", k.now, 0.0))
        if k.now - t_last <= TIMEOUT:
            assert out.valves_open["main-inlet"] is True, k.now - t_last
            assert k.detector("wok-1").lel == 7.0
    raised = [e for e in k.events if e.kind == "fault.raised" and e.source == "wok-1"]
    assert len(raised) == 1 and raised[0].details["fault"] == "comm"
    assert out.valves_open == {"main-inlet": False, "bakery-valve": True}
    assert out.yellow == Light.FLASH_FAULT
    view = k.detector("wok-1")
    assert view.lel is None  # never the old 7.0
    assert view.fault is not None and view.fault.startswith("comm")


def test_a_valid_reply_clears_the_comm_fault_but_the_valve_stays_closed() -> None:
    k = Kitchen().running()
    k.all_normal()
    k.tick(TIMEOUT + 1.0)
    assert not any(k.out.valves_open.values())
    k.events.clear()
    out = k.read("wok-1", 4.0)
    assert [e.details["fault"] for e in out.events if e.kind == "fault.cleared"] == ["comm"]
    assert k.detector("wok-1").lel == 4.0
    assert k.detector("wok-1").fault is None
    assert out.valves_open["main-inlet"] is False


def test_reset_refused_while_a_detector_is_in_comm_fault() -> None:
    k = Kitchen().running()
    k.all_normal()
    k.tick(TIMEOUT + 1.0)
    k.read("wok-1", 0.0)
    k.read("wok-2", 0.0)
    out = k.reset()
    assert out.valves_open == {"main-inlet": False, "bakery-valve": False}
    assert k.core.reset_blockers() == ["oven-1: comm: no valid reply"]


def test_reset_after_long_silence_without_ticks_is_refused() -> None:
    # No input at all reaches the core for longer than the timeout (a stalled loop), then the
    # reset button: the detectors were silent, so the reset must not open the gas.
    k = Kitchen()
    k.all_normal()
    out = k.feed(ResetRequest(k.now + TIMEOUT + 5.0))
    assert out.valves_open == {"main-inlet": False, "bakery-valve": False}
    assert "operator.reset" not in [e.kind for e in out.events]


def test_reading_after_long_silence_without_ticks_still_records_the_comm_fault() -> None:
    k = Kitchen().running()
    k.all_normal()
    k.now += TIMEOUT + 5.0
    out = k.feed(Reading("wok-1", k.now, 0.0))
    assert "fault.raised" in k.kinds("wok-1")
    assert out.valves_open["main-inlet"] is False


# -- sensor fault ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lel", "fault"),
    [
        (5.0, "sensor drift"),
        (math.nan, None),
        (None, None),
        (-12.0, None),
        (-math.inf, None),
    ],
    ids=["fault-text", "nan", "none", "implausible-negative", "minus-inf"],
)
def test_confirmed_sensor_fault_closes_the_valve(lel: float | None, fault: str | None) -> None:
    k = Kitchen().running()
    out = k.feed(Reading("oven-1", k.at(), lel, fault=fault))
    assert all(out.valves_open.values())  # one bad reply is not yet a fault
    assert k.detector("oven-1").lel is None  # but its value is not shown as a reading
    out = k.feed(Reading("oven-1", k.at(), lel, fault=fault))
    assert out.valves_open == {"main-inlet": True, "bakery-valve": False}
    raised = [e for e in out.events if e.kind == "fault.raised"]
    assert len(raised) == 1 and raised[0].details["fault"] == "sensor"
    assert out.yellow == Light.FLASH_FAULT and out.sounder is True
    fault_text = k.detector("oven-1").fault
    assert fault_text is not None and fault_text.startswith("sensor: ")


def test_small_negative_drift_is_normal_and_shown_as_zero() -> None:
    k = Kitchen().running()
    k.read("oven-1", -4.0)
    out = k.read("oven-1", -4.0)
    assert all(out.valves_open.values())
    assert k.detector("oven-1").lel == 0.0
    assert k.detector("oven-1").fault is None


def test_sensor_fault_clears_after_good_readings_but_valve_stays_closed() -> None:
    k = Kitchen().running()
    k.read("oven-1", None)
    k.read("oven-1", None)
    for _ in range(2 * CONFIRM - 1):
        k.read("oven-1", 1.0)
        # Good replies clear it only once every one of the last 2 x confirm_count was good.
        assert k.detector("oven-1").fault is not None
    out = k.read("oven-1", 1.0)
    assert [e.details["fault"] for e in out.events if e.kind == "fault.cleared"] == ["sensor"]
    assert out.valves_open["bakery-valve"] is False
    assert k.reset().valves_open["bakery-valve"] is True


# -- valve feedback ----------------------------------------------------------------------------


def running_with_feedback() -> Kitchen:
    k = Kitchen(kitchen_plan(feedback=True))
    k.feedback("main-inlet", True)
    k.feedback("bakery-valve", True)
    k.all_normal()
    k.reset()
    assert all(k.out.valves_open.values())
    # The valves are reopened by hand at the valve: the contacts now say open.
    k.feedback("main-inlet", False)
    k.feedback("bakery-valve", False)
    k.events.clear()
    return k


def test_valve_closing_confirmed_within_close_confirm_s() -> None:
    k = running_with_feedback()
    k.read("wok-1", 60.0)
    k.read("wok-1", 60.0)
    assert k.valve("main-inlet").confirmed is False
    out = k.feedback("main-inlet", True)
    closed = [e for e in out.events if e.kind == "valve.closed"]
    assert len(closed) == 1 and closed[0].details["confirmed"] is True
    assert k.valve("main-inlet").confirmed is True
    k.tick(5.0)
    assert "valve.failed" not in k.kinds()
    assert k.valve("main-inlet").failed is False


def test_valve_not_confirmed_closed_in_time_is_a_valve_fault() -> None:
    k = running_with_feedback()
    k.read("wok-1", 60.0)
    k.read("wok-1", 60.0)
    k.silence()
    out = k.tick(1.0)
    assert "valve.failed" not in k.kinds()
    out = k.tick(1.5)  # now 2.5 s after the close command, more than close_confirm_s
    assert [e.source for e in out.events if e.kind == "valve.failed"] == ["main-inlet"]
    assert k.valve("main-inlet").failed is True
    assert out.yellow == Light.FLASH_FAULT
    assert out.sounder is True  # a new fault sounds again after the silence
    assert out.valves_open["main-inlet"] is False


def test_confirmed_closed_valve_reporting_open_is_a_valve_fault() -> None:
    k = Kitchen(kitchen_plan(feedback=True))
    k.feedback("main-inlet", True)
    assert k.valve("main-inlet").confirmed is True
    out = k.feedback("main-inlet", False)
    assert [e.source for e in out.events if e.kind == "valve.failed"] == ["main-inlet"]
    assert out.valves_open["main-inlet"] is False


def test_open_valve_closed_by_hand_is_locked_out_until_reset() -> None:
    k = running_with_feedback()
    out = k.feedback("main-inlet", True)  # someone closed it at the valve
    assert out.valves_open == {"main-inlet": False, "bakery-valve": True}
    assert "valve.closed" in k.kinds("main-inlet")
    # The contact says open again (someone reopened it by hand): we still command it closed.
    k.feedback("main-inlet", False)
    k.all_normal()
    assert k.out.valves_open["main-inlet"] is False
    assert k.reset().valves_open["main-inlet"] is True


def test_valve_without_feedback_is_confirmed_closed_at_once() -> None:
    k = Kitchen()
    assert all(v.confirmed for v in k.view().valves)
    k.tick(30.0)
    assert "valve.failed" not in k.kinds()


def test_valve_with_feedback_must_confirm_closed_at_startup() -> None:
    k = Kitchen(kitchen_plan(feedback=True))
    k.feedback("main-inlet", True)
    k.tick(3.0)
    assert [e.source for e in k.events if e.kind == "valve.failed"] == ["bakery-valve"]


# -- restart with restored latched alarms ------------------------------------------------------


def test_restart_with_latched_alarm_keeps_valves_closed_until_detector_is_normal() -> None:
    k = Kitchen(latched={"wok-1": Level.HIGH})
    assert k.out.valves_open == {"main-inlet": False, "bakery-valve": False}
    assert k.out.red == Light.FLASH_ALARM
    assert k.detector("wok-1").latched == Level.HIGH
    k.read("wok-1", 60.0)
    k.read("wok-2", 0.0)
    k.read("oven-1", 0.0)
    out = k.reset()
    assert not any(out.valves_open.values())
    assert k.core.reset_blockers() == ["wok-1: gas at 60.0 %LEL"]
    k.read("wok-1", 0.0)
    k.read("wok-1", 0.0)
    assert k.reset().valves_open == {"main-inlet": True, "bakery-valve": True}
    assert k.core.latched() == {}


# -- replan ------------------------------------------------------------------------------------


def test_replan_keeps_latches_and_new_valves_start_closed() -> None:
    k = Kitchen().running()
    _alarm_on_wok_1(k)
    out = k.core.replan(kitchen_plan(extra_valve=True), k.at())
    assert out.valves_open == {"main-inlet": False, "bakery-valve": True, "wok-line": False}
    assert k.core.latched() == {"wok-1": Level.LOW}
    assert "config.applied" in [e.kind for e in out.events]
    k.all_normal()
    assert k.out.valves_open["wok-line"] is False
    assert k.out.valves_open["main-inlet"] is False


def test_replan_with_new_confirm_count_keeps_latch_and_lockout() -> None:
    k = Kitchen().running()
    _alarm_on_wok_1(k)
    out = k.core.replan(kitchen_plan(confirm=3), k.at())
    assert out.valves_open["main-inlet"] is False
    assert k.core.latched() == {"wok-1": Level.LOW}
    k.all_normal()
    assert k.out.valves_open["main-inlet"] is False


def test_replan_with_new_confirm_count_keeps_a_sensor_fault_until_readings_clear_it() -> None:
    k = Kitchen().running()
    k.read("oven-1", None)
    k.read("oven-1", None)
    out = k.core.replan(kitchen_plan(confirm=3), k.at())
    assert k.detector("oven-1").fault is not None
    assert out.yellow == Light.FLASH_FAULT
    k.read("wok-1", 0.0)
    k.read("wok-2", 0.0)
    for _ in range(5):
        k.read("oven-1", 0.0)
    assert k.detector("oven-1").fault is not None  # 2 x 3 good readings now needed
    assert k.core.reset_blockers() == ["oven-1: sensor: no valid concentration value"]
    assert k.reset().valves_open["bakery-valve"] is False
    k.read("oven-1", 0.0)
    assert k.detector("oven-1").fault is None
    assert k.reset().valves_open["bakery-valve"] is True


def test_replan_keeps_a_manual_lockout() -> None:
    k = running_with_feedback()
    k.feedback("bakery-valve", True)  # closed by hand
    out = k.core.replan(kitchen_plan(feedback=True, extra_valve=True), k.at())
    assert out.valves_open == {"main-inlet": True, "bakery-valve": False, "wok-line": False}


def test_replan_opens_nothing_at_startup() -> None:
    k = Kitchen()
    k.all_normal()
    out = k.core.replan(kitchen_plan(extra_valve=True), k.at())
    assert not any(out.valves_open.values())


# -- lights ------------------------------------------------------------------------------------


def test_lights_follow_alarm_and_fault_and_green_is_always_on() -> None:
    k = Kitchen().running()
    assert (k.out.red, k.out.yellow, k.out.green) == (Light.OFF, Light.OFF, Light.ON)
    _alarm_on_wok_1(k)
    assert (k.out.red, k.out.yellow, k.out.green) == (Light.FLASH_ALARM, Light.ON, Light.ON)
    k.read("oven-1", None)
    k.read("oven-1", None)
    assert (k.out.red, k.out.yellow, k.out.green) == (
        Light.FLASH_ALARM,
        Light.FLASH_FAULT,
        Light.ON,
    )
    k.read("wok-1", 0.0)
    k.read("wok-1", 0.0)
    for _ in range(2 * CONFIRM):  # the sensor fault clears after 2 x confirm_count good ones
        k.read("oven-1", 0.0)
    assert (k.out.red, k.out.yellow) == (Light.FLASH_ALARM, Light.ON)  # latched, gas locked off
    k.reset()
    assert (k.out.red, k.out.yellow, k.out.green) == (Light.OFF, Light.OFF, Light.ON)


# -- decisions taken by the lead after review ----------------------------------------------------


def test_valve_that_never_confirmed_closed_blocks_the_reset_until_it_does() -> None:
    k = running_with_feedback()
    k.read("wok-1", 60.0)
    k.read("wok-1", 60.0)
    k.tick(2.5)  # no "closed" from the contact: the valve is stuck open
    assert k.valve("main-inlet").failed is True
    k.all_normal()
    k.all_normal()  # two normal readings clear the alarm level
    out = k.reset()
    assert out.valves_open["main-inlet"] is False
    refused = [e for e in out.events if e.kind == "operator.reset_refused"]
    assert refused and any("main-inlet" in r for r in refused[0].details["reasons"])
    # The technician frees the valve: the contact confirms closed, the fault clears.
    out = k.feedback("main-inlet", True)
    assert "fault.cleared" in [e.kind for e in out.events]
    assert k.core.reset_blockers() == []
    assert k.reset().valves_open["main-inlet"] is True


def test_reading_that_waited_longer_than_the_silence_limit_proves_nothing() -> None:
    k = Kitchen().running()
    k.tick(TIMEOUT + 1.0)  # every detector silent: comm fault, valves closed
    assert k.detector("wok-1").fault is not None
    stale = k.now - (TIMEOUT + 0.5)  # a reply that sat in a queue for longer than the limit
    out = k.feed(Reading("wok-1", stale, 1.0))
    assert k.detector("wok-1").fault is not None
    assert k.detector("wok-1").lel is None
    assert "fault.cleared" not in [e.kind for e in out.events]


def test_time_never_runs_backwards_inside_the_core() -> None:
    k = Kitchen().running()
    k.tick(TIMEOUT + 1.0)
    # An input stamped before the latest time seen is judged at the latest time: the silence
    # that has already been noticed is not undone by the older stamp.
    out = k.feed(Tick(k.now - 5.0))
    assert out.valves_open == {"main-inlet": False, "bakery-valve": False}
    assert all(d.fault is not None for d in k.view().detectors)


# -- technician actions (issue 4 builds the console on these) ------------------------------------


def test_inhibited_detector_reports_test_alarms_that_neither_latch_nor_close() -> None:
    k = Kitchen().running()
    k.feed(InhibitRequest(k.at(), "wok-1", 600.0, "tech-7"))
    assert "detector.inhibited" in k.kinds("wok-1")
    assert k.out.yellow == Light.ON  # attention: a detector is inhibited
    k.read("wok-1", 60.0)
    out = k.read("wok-1", 60.0)
    assert out.valves_open["main-inlet"] is True
    assert "test.alarm" in k.kinds("wok-1") and "alarm.raised" not in k.kinds("wok-1")
    assert k.detector("wok-1").latched == Level.NORMAL
    assert out.red == Light.OFF


def test_inhibit_ends_by_itself_and_gas_still_present_latches_at_once() -> None:
    k = Kitchen().running()
    k.feed(InhibitRequest(k.at(), "wok-1", 60.0, "tech-7"))
    k.read("wok-1", 60.0)
    k.read("wok-1", 60.0)
    k.read("wok-2", 0.0)  # the other detectors keep answering
    k.read("oven-1", 0.0)
    out = k.feed(Tick(k.at(61.0)))
    assert "detector.inhibit_ended" in k.kinds("wok-1")
    assert "alarm.raised" in k.kinds("wok-1")
    assert out.valves_open["main-inlet"] is False


def test_inhibited_detector_faults_still_close_the_valve() -> None:
    k = Kitchen().running()
    k.feed(InhibitRequest(k.at(), "wok-1", 600.0, "tech-7"))
    k.read("wok-1", None, fault="sensor open circuit")
    out = k.read("wok-1", None, fault="sensor open circuit")
    assert out.valves_open["main-inlet"] is False


def test_inhibit_is_bounded_and_unknown_detectors_are_refused() -> None:
    k = Kitchen().running()
    k.feed(InhibitRequest(k.at(), "wok-1", 3601.0, "tech-7"))
    k.feed(InhibitRequest(k.at(), "no-such", 60.0, "tech-7"))
    assert k.kinds().count("operator.refused") == 2
    assert k.detector("wok-1").inhibited_until is None


def test_valve_test_closes_the_valve_and_only_a_reset_reopens_it() -> None:
    k = running_with_feedback()
    out = k.feed(ValveTestRequest(k.at(), "main-inlet", "tech-7"))
    assert out.valves_open["main-inlet"] is False
    assert "operator.valve_test" in k.kinds("main-inlet")
    out = k.feedback("main-inlet", True)
    closed = [e for e in out.events if e.kind == "valve.closed"]
    assert closed and closed[0].details["after_s"] is not None
    k.tick(5.0)
    assert k.out.valves_open["main-inlet"] is False
    k.all_normal()
    assert k.reset().valves_open["main-inlet"] is True


def test_sounder_test_sounds_for_its_time_then_stops() -> None:
    k = Kitchen().running()
    out = k.feed(SounderTestRequest(k.at(), 3.0, "tech-7"))
    assert out.sounder is True
    assert k.tick(2.0).sounder is True
    assert k.tick(1.5).sounder is False
    k.feed(SounderTestRequest(k.at(), 31.0, "tech-7"))
    assert "operator.refused" in k.kinds()


# -- the event log's health ----------------------------------------------------------------------


def test_a_store_fault_is_shown_and_sounded_but_changes_no_valve() -> None:
    k = Kitchen().running()
    out = k.feed(StoreHealth(k.at(), "disk full: /var/lib/gasguard (0 bytes free)"))
    assert all(out.valves_open.values())  # the gas does not depend on the SD card
    assert out.yellow == Light.FLASH_FAULT and out.sounder is True
    assert k.view().store_fault == "disk full: /var/lib/gasguard (0 bytes free)"
    raised = [e for e in out.events if e.kind == "fault.raised"]
    assert [(e.source, e.details["fault"]) for e in raised] == [("store", "store")]
    # Another failure while faulty changes the text, raises nothing new.
    out = k.feed(StoreHealth(k.at(), "read-only"))
    assert not out.events and k.view().store_fault == "read-only"
    k.silence()
    assert k.out.sounder is False
    out = k.feed(StoreHealth(k.at(), None))
    assert [e.kind for e in out.events] == ["fault.cleared"]
    assert out.yellow == Light.OFF and all(out.valves_open.values())
    assert k.view().store_fault is None


def test_a_store_fault_neither_blocks_nor_grants_a_reset() -> None:
    k = Kitchen()
    k.all_normal()
    k.feed(StoreHealth(k.at(), "disk full"))
    assert k.core.reset_blockers() == []
    assert all(k.reset().valves_open.values())
    k2 = Kitchen()
    k2.read("wok-1", 0.0)
    k2.feed(StoreHealth(k2.at(), None))
    assert not any(k2.reset().valves_open.values())


# -- reload ------------------------------------------------------------------------------------


def test_a_plan_without_a_latched_detector_is_refused_and_the_latch_stays() -> None:
    k = Kitchen().running()
    k.read("wok-1", 60.0)
    k.read("wok-1", 60.0)
    assert k.detector("wok-1").latched == Level.HIGH
    plan = kitchen_plan()
    smaller = SafetyPlan(
        detectors=tuple(d for d in plan.detectors if d.name != "wok-1"),
        valves=plan.valves,
        comm_fault_timeout_s=plan.comm_fault_timeout_s,
        confirm_count=plan.confirm_count,
    )
    out = k.core.replan(smaller, k.at())
    refused = [e for e in out.events if e.kind == "config.refused"]
    assert refused and refused[0].details["detectors"] == ["wok-1"]
    assert "wok-1 has a latched high alarm" in refused[0].details["reasons"][0]
    assert k.detector("wok-1").latched == Level.HIGH  # nothing changed
    assert out.valves_open["main-inlet"] is False
    # Once reset (gas gone, confirmed by two normal readings), the same plan is taken.
    k.all_normal()
    k.all_normal()
    k.reset()
    assert k.detector("wok-1").latched == Level.NORMAL
    assert [e.kind for e in k.core.replan(smaller, k.at()).events] == ["config.applied"]


def test_a_detector_babbling_every_other_reply_is_faulty_and_blocks_the_reset() -> None:
    """Every other reply implausible (-3276.8 %LEL on an int16 detector), the others normal:
    never two in a row, yet the detector is not to be trusted."""
    k = Kitchen().running()
    k.read("oven-1", -3276.8)
    assert k.detector("oven-1").fault is None  # one bad reply is not yet a fault ...
    assert any("oven-1" in b for b in k.core.reset_blockers())  # ... but blocks a reset
    out = k.read("oven-1", 1.0)
    out = k.read("oven-1", -3276.8)
    raised = [e for e in out.events if e.kind == "fault.raised"]
    assert raised and raised[0].details["fault"] == "sensor"
    assert out.valves_open["bakery-valve"] is False
    for _ in range(5):  # babbling on: still faulty, the reset refused every time
        k.read("oven-1", 1.0)
        k.read("oven-1", -3276.8)
        assert not k.reset().valves_open["bakery-valve"]


def test_an_over_range_reply_is_reported_as_over_range_never_as_its_raw_value() -> None:
    """0x7FFF on an int16 detector reads 3276.7 %LEL: a high alarm, reported as 'at least the
    full scale' (100 %LEL here), never as 3276.7."""
    k = Kitchen().running()
    k.read("wok-1", 3276.7)
    out = k.read("wok-1", 3276.7)
    raised = next(e for e in out.events if e.kind == "alarm.raised")
    assert raised.details["lel"] == 100.0 and raised.details["over_range"] is True
    view = k.detector("wok-1")
    assert view.lel == 100.0 and view.over_range
    k.read("wok-1", 12.0)
    assert k.detector("wok-1").lel == 12.0 and not k.detector("wok-1").over_range
