"""The safety core's site inputs and outputs: the exhaust-fan interlock and the power contacts.

The kitchen of test_safety_core (two wok detectors in the hot kitchen, an oven detector in the
bakery), with a hood fan over the hot kitchen and, where a test says so, power contacts.
"""

from __future__ import annotations

import dataclasses

from gateway.core.model import (
    FanFeedback,
    FanPlan,
    InhibitRequest,
    Level,
    Light,
    PowerInput,
    PowerPlan,
    PowerSignal,
    SafetyPlan,
    ServiceWarnings,
)
from tests.core.test_safety_core import HOT, Kitchen, kitchen_plan

RUN_ON = 60.0


def fan_plan(feedback: bool = False, on_comm_fault: bool = False) -> SafetyPlan:
    hood = FanPlan("hood", (HOT,), RUN_ON, on_comm_fault, feedback, start_confirm_s=5.0)
    return dataclasses.replace(kitchen_plan(), fans=(hood,))


def power_plan(mains: bool = True, battery: bool = True) -> SafetyPlan:
    return dataclasses.replace(kitchen_plan(), power=PowerPlan(mains, battery, debounce_s=2.0))


def leak(k: Kitchen, detector: str = "wok-1", lel: float = 30.0) -> None:
    k.read(detector, lel)
    k.read(detector, lel)


def answer_for(k: Kitchen, seconds: float, lel: float = 0.0) -> None:
    """Time passes with every detector answering (no comm fault)."""
    end = k.now + seconds
    while k.now < end:
        k.all_normal(lel)


def fan(k: Kitchen) -> bool:
    return k.out.fans_on["hood"]


# -- exhaust fan ---------------------------------------------------------------------------------


def test_a_low_alarm_starts_the_zones_fan_which_runs_while_latched_and_for_the_run_on() -> None:
    k = Kitchen(fan_plan()).running()
    assert fan(k) is False
    leak(k)
    assert fan(k) is True
    assert [e.details["reason"] for e in k.events if e.kind == "fan.started"] == [
        "low alarm at wok-1"
    ]
    # The gas is gone, the alarm stays latched: the fan keeps running.
    answer_for(k, RUN_ON * 2)
    assert fan(k) is True
    k.reset()
    assert fan(k) is True and "fan.run_on" in k.kinds("hood")
    answer_for(k, RUN_ON - 2)
    assert fan(k) is True
    answer_for(k, 3)
    assert fan(k) is False and "fan.stopped" in k.kinds("hood")


def test_an_alarm_in_another_zone_does_not_start_the_fan() -> None:
    k = Kitchen(fan_plan()).running()
    leak(k, "oven-1")
    assert k.out.valves_open["bakery-valve"] is False
    assert fan(k) is False


def test_a_comm_fault_starts_the_fan_only_where_configured() -> None:
    for on_comm_fault in (False, True):
        k = Kitchen(fan_plan(on_comm_fault=on_comm_fault)).running()
        for _ in range(25):  # wok-1 falls silent, the others answer
            k.read("wok-2", 0.0)
            k.read("oven-1", 0.0)
        assert k.detector("wok-1").fault is not None
        assert k.out.valves_open["main-inlet"] is False  # the valve closes either way
        assert fan(k) is on_comm_fault


def test_a_test_alarm_during_calibration_does_not_start_the_fan() -> None:
    k = Kitchen(fan_plan()).running()
    k.feed(InhibitRequest(k.at(), "wok-1", 600.0, "tech"))
    leak(k, lel=60.0)
    assert "test.alarm" in k.kinds("wok-1")
    assert fan(k) is False


def test_a_restart_with_a_latched_alarm_runs_the_fan_at_once() -> None:
    k = Kitchen(fan_plan(), latched={"wok-2": Level.HIGH})
    assert fan(k) is True


def test_a_fan_that_does_not_run_is_a_fault_that_changes_no_valve() -> None:
    k = Kitchen(fan_plan(feedback=True)).running()
    k.feed(FanFeedback("hood", k.at(), False))
    leak(k, "oven-1")  # the bakery's valve closes; the hood is not involved
    leak(k)
    assert fan(k) is True
    k.silence()
    k.tick(4.0)
    assert "fan.failed" not in k.kinds()
    k.feed(FanFeedback("hood", k.at(), False))
    k.tick(2.0)
    assert "fan.failed" in k.kinds("hood")
    assert k.out.yellow == Light.FLASH_FAULT
    assert k.out.sounder is True  # a new fault sounds again after the silence
    view = next(f for f in k.view().fans if f.name == "hood")
    assert view.failed and view.running is False
    # The running contact clears it.
    k.feed(FanFeedback("hood", k.at(), True))
    assert not next(f for f in k.view().fans if f.name == "hood").failed
    assert ("fault.cleared", "hood") in [(e.kind, e.source) for e in k.events]


def test_a_fan_that_runs_when_started_is_no_fault() -> None:
    k = Kitchen(fan_plan(feedback=True)).running()
    leak(k)
    k.feed(FanFeedback("hood", k.at(), True))
    answer_for(k, 30.0)
    assert "fan.failed" not in k.kinds()
    assert k.out.yellow != Light.FLASH_FAULT


def test_the_reset_acknowledges_a_fan_fault() -> None:
    k = Kitchen(fan_plan(feedback=True)).running()
    leak(k)
    k.tick(6.0)
    assert "fan.failed" in k.kinds("hood")
    k.all_normal()
    k.all_normal()
    k.reset()
    assert not next(f for f in k.view().fans if f.name == "hood").failed
    assert all(k.out.valves_open.values())


# -- power ---------------------------------------------------------------------------------------


def test_a_mains_flicker_shorter_than_the_debounce_is_ignored() -> None:
    k = Kitchen(power_plan()).running()
    k.feed(PowerInput(PowerSignal.MAINS_FAILED, k.at(), True))
    k.feed(PowerInput(PowerSignal.MAINS_FAILED, k.at(1.0), False))
    k.tick(5.0)
    assert not [e for e in k.events if e.kind.startswith("power.")]
    assert k.out.yellow == Light.OFF


def test_a_mains_failure_is_a_fault_that_keeps_the_gas_on() -> None:
    k = Kitchen(power_plan()).running()
    k.feed(PowerInput(PowerSignal.MAINS_FAILED, k.at(), True))
    k.tick(2.5)
    assert k.kinds("power") == ["power.mains_failed"]
    assert k.out.yellow == Light.FLASH_FAULT and k.out.sounder is True
    assert all(k.out.valves_open.values())
    assert k.view().mains_failed
    k.feed(PowerInput(PowerSignal.MAINS_FAILED, k.at(), False))
    out = k.tick(2.5)
    assert k.kinds("power") == ["power.mains_failed", "power.restored"]
    assert out.yellow == Light.OFF


def test_a_low_battery_closes_every_valve_and_blocks_the_reset_until_it_is_ok() -> None:
    k = Kitchen(power_plan()).running()
    k.feed(PowerInput(PowerSignal.BATTERY_LOW, k.at(), True))
    k.tick(2.5)
    assert k.out.valves_open == {"main-inlet": False, "bakery-valve": False}
    assert k.valve("main-inlet").reason.startswith("backup battery low")
    assert "power: backup battery low" in k.core.reset_blockers()[0]
    k.reset()
    assert "operator.reset_refused" in k.kinds()
    assert not any(k.out.valves_open.values())
    k.feed(PowerInput(PowerSignal.BATTERY_LOW, k.at(), False))
    k.tick(2.5)
    assert "power.battery_ok" in k.kinds("power")
    # Never reopens by itself: the gas comes back only with the manual reset.
    assert not any(k.out.valves_open.values())
    k.reset()
    assert all(k.out.valves_open.values())


def test_an_unwired_contact_is_ignored() -> None:
    k = Kitchen(power_plan(mains=False, battery=False)).running()
    k.feed(PowerInput(PowerSignal.BATTERY_LOW, k.at(), True))
    answer_for(k, 5.0)
    assert all(k.out.valves_open.values())
    assert not k.view().battery_low


def test_a_replan_that_unwires_a_failed_contact_clears_its_fault() -> None:
    k = Kitchen(power_plan()).running()
    k.feed(PowerInput(PowerSignal.MAINS_FAILED, k.at(), True))
    k.tick(2.5)
    assert k.view().mains_failed
    k.events.extend(k.core.replan(power_plan(mains=False), k.at()).events)
    k.tick(0.1)
    assert not k.view().mains_failed
    assert "power.restored" in k.kinds("power")



# -- detector service --------------------------------------------------------------------------


def test_a_detector_due_for_service_flashes_yellow_without_sounding_or_closing() -> None:
    k = Kitchen().running()
    out = k.feed(ServiceWarnings(k.at(), (("wok-1", "calibration overdue since 2026-01-01"),)))
    assert out.yellow == Light.FLASH_FAULT
    assert out.sounder is False
    assert all(out.valves_open.values())
    assert k.view().service == (("wok-1", "calibration overdue since 2026-01-01"),)
    assert k.core.reset_blockers() == []
    out = k.feed(ServiceWarnings(k.at(), ()))
    assert out.yellow == Light.OFF
