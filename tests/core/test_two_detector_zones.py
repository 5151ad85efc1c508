"""Two-detector confirmation per zone (issue 16, item 2): in such a zone one detector's low alarm
sounds, latches and goes upstream, and starts the fan, but closes no valve; a high alarm at any
detector, low alarms at two, or a detector's fault close the zone's valves."""

from __future__ import annotations

import dataclasses

from gateway.core.model import FanPlan, InhibitRequest, Level, Light, SafetyPlan
from tests.core.test_safety_core import HOT, Kitchen, kitchen_plan


def plan() -> SafetyPlan:
    hood = FanPlan("hood", (HOT,), run_on_s=60.0)
    return dataclasses.replace(kitchen_plan(), two_detector_zones=frozenset({HOT}), fans=(hood,))


def alarm(k: Kitchen, detector: str, lel: float) -> None:
    k.read(detector, lel)
    k.read(detector, lel)


def test_one_low_alarm_sounds_and_starts_the_fan_but_keeps_the_gas_on() -> None:
    k = Kitchen(plan()).running()
    alarm(k, "wok-1", 30.0)
    out = k.out
    assert out.valves_open["main-inlet"] is True
    assert out.red == Light.FLASH_ALARM and out.sounder is True
    assert out.fans_on["hood"] is True
    assert k.detector("wok-1").latched == Level.LOW
    assert "alarm.raised" in k.kinds("wok-1")
    # The bakery is an ordinary zone: its low alarm closes its valve at once.
    alarm(k, "oven-1", 30.0)
    assert k.out.valves_open["bakery-valve"] is False


def test_a_second_low_alarm_in_the_zone_closes_it() -> None:
    k = Kitchen(plan()).running()
    alarm(k, "wok-1", 30.0)
    alarm(k, "wok-2", 25.0)
    assert k.out.valves_open["main-inlet"] is False
    assert k.valve("main-inlet").reason == "low alarm at wok-1 (2 detectors of hot-kitchen)"


def test_a_high_alarm_at_one_detector_closes_it() -> None:
    k = Kitchen(plan()).running()
    alarm(k, "wok-2", 55.0)
    assert k.out.valves_open["main-inlet"] is False


def test_a_detector_fault_in_the_zone_still_closes_it_on_its_own() -> None:
    k = Kitchen(plan()).running()
    for _ in range(4):
        k.read("wok-1", None)
    assert k.detector("wok-1").fault is not None
    assert k.out.valves_open["main-inlet"] is False


def test_a_latched_low_alarm_and_a_later_one_at_the_other_detector_close_it() -> None:
    k = Kitchen(plan()).running()
    alarm(k, "wok-1", 30.0)
    alarm(k, "wok-1", 1.0)  # the gas cleared; the low alarm stays latched
    assert k.out.valves_open["main-inlet"] is True
    alarm(k, "wok-2", 30.0)
    assert k.out.valves_open["main-inlet"] is False


def test_with_one_of_two_detectors_inhibited_a_single_low_alarm_closes_the_zone() -> None:
    """Issue 27, item 2: det-2 inhibited for calibration, both at 30 %LEL: the other one's
    low alarm alone closes the valve (nobody is left to confirm it)."""
    k = Kitchen(plan()).running()
    k.feed(InhibitRequest(k.at(), "wok-2", 300.0, "tech"))
    alarm(k, "wok-2", 30.0)  # a test alarm: reported, not latched
    alarm(k, "wok-1", 30.0)
    assert k.detector("wok-1").latched == Level.LOW
    assert k.detector("wok-2").latched == Level.NORMAL
    assert k.out.valves_open["main-inlet"] is False
    assert "one inhibited" in k.valve("main-inlet").reason
    # With both voting again a single low alarm only warns, as before.
    k2 = Kitchen(plan()).running()
    alarm(k2, "wok-1", 30.0)
    assert k2.out.valves_open["main-inlet"] is True
