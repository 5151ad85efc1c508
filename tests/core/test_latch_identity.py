"""A latch belongs to the physical sensor (bus, address), not to a detector's name (issue 27,
item 1): reloads may not change what a detector that is not normal stands for, and a latch whose
sensor is no longer configured after a restart is kept as an orphan latch."""

from __future__ import annotations

import dataclasses

from gateway.core.model import (
    DetectorPlan,
    InhibitRequest,
    Level,
    Light,
    OrphanLatchClear,
    SafetyPlan,
    ValvePlan,
)
from gateway.core.safety import SafetyCore
from tests.core.test_safety_core import BAKERY, HOT, Kitchen

SENSORS = {"wok-1": "rs485-1:1", "wok-2": "rs485-1:2", "oven-1": "rs485-1:3"}


def plan(**moved: tuple[str, str]) -> SafetyPlan:
    """The standard kitchen with sensors; ``moved`` maps a detector to (zone, sensor)."""
    detectors = []
    for name, zone in (("wok-1", HOT), ("wok-2", HOT), ("oven-1", BAKERY)):
        zone, sensor = moved.get(name, (zone, SENSORS[name]))
        detectors.append(DetectorPlan(name, zone, 20.0, 50.0, sensor=sensor, profile="p#1"))
    return SafetyPlan(
        detectors=tuple(detectors),
        valves=(
            ValvePlan("main-inlet", (HOT,), has_feedback=False),
            ValvePlan("bakery-valve", (BAKERY,), has_feedback=False),
        ),
    )


def leak_at_wok_1(k: Kitchen) -> None:
    k.read("wok-1", 60.0)
    k.read("wok-1", 60.0)
    assert k.detector("wok-1").latched == Level.HIGH
    assert k.out.valves_open["main-inlet"] is False


def refused(k: Kitchen, new: SafetyPlan) -> dict[str, object]:
    out = k.core.replan(new, k.at())
    kinds = [e.kind for e in out.events]
    assert "config.refused" in kinds and "config.applied" not in kinds, kinds
    return next(e.details for e in out.events if e.kind == "config.refused")


def test_a_latched_detector_cannot_be_re_addressed_onto_a_healthy_sensor() -> None:
    k = Kitchen(plan()).running()
    leak_at_wok_1(k)
    details = refused(k, plan(**{"wok-1": (HOT, "rs485-1:9")}))
    assert details["detectors"] == ["wok-1"] and details["fields"] == ["address"]
    reason = str(details["reasons"])
    assert "wok-1 has a latched high alarm (sensor rs485-1:1)" in reason
    assert "cannot change address" in reason
    # Nothing moved: the leak is still where the latch is, the reset is refused.
    k.read("wok-1", 60.0)
    assert k.reset().valves_open["main-inlet"] is False


def test_every_field_that_says_what_a_detector_stands_for_is_held_while_not_normal() -> None:
    k = Kitchen(plan()).running()
    leak_at_wok_1(k)
    cases = {
        "bus": plan(**{"wok-1": (HOT, "rs485-2:1")}),
        "zone": plan(**{"wok-1": (BAKERY, SENSORS["wok-1"])}),
        "profile": SafetyPlan(
            tuple(
                dataclasses.replace(d, profile="other#2") if d.name == "wok-1" else d
                for d in plan().detectors
            ),
            plan().valves,
        ),
        "zone's valves": dataclasses.replace(
            plan(), valves=(ValvePlan("main-inlet", (BAKERY,), has_feedback=False),)
        ),
        "zone's two_detector_confirmation": dataclasses.replace(
            plan(), two_detector_zones=frozenset({HOT})
        ),
        "detector": SafetyPlan(
            tuple(d for d in plan().detectors if d.name != "wok-1"), plan().valves
        ),
    }
    for field, new in cases.items():
        assert refused(k, new)["fields"] == [field], field
    assert k.detector("wok-1").latched == Level.HIGH
    # A set point may change: it is not what the detector stands for.
    lower = SafetyPlan(
        tuple(
            dataclasses.replace(d, low_lel=10.0) if d.name == "wok-1" else d
            for d in plan().detectors
        ),
        plan().valves,
    )
    assert "config.applied" in [e.kind for e in k.core.replan(lower, k.at()).events]


def test_a_rename_plus_a_re_add_and_a_swap_of_addresses_are_refused() -> None:
    k = Kitchen(plan()).running()
    leak_at_wok_1(k)
    renamed = SafetyPlan(
        (
            DetectorPlan("wok-1-new", HOT, 20.0, 50.0, sensor="rs485-1:1", profile="p#1"),
            DetectorPlan("wok-1", HOT, 20.0, 50.0, sensor="rs485-1:7", profile="p#1"),
            *plan().detectors[1:],
        ),
        plan().valves,
    )
    assert refused(k, renamed)["fields"] == ["name"]
    swapped = plan(**{"wok-1": (HOT, SENSORS["wok-2"]), "wok-2": (HOT, SENSORS["wok-1"])})
    assert refused(k, swapped)["detectors"] == ["wok-1"]


def test_a_detector_in_fault_or_inhibited_is_held_too_and_a_normal_one_may_move() -> None:
    k = Kitchen(plan()).running()
    k.feed(InhibitRequest(k.at(), "wok-2", 300.0, "tech"))
    details = refused(k, plan(**{"wok-2": (HOT, "rs485-1:8")}))
    assert "wok-2 is inhibited for calibration" in str(details["reasons"])
    k.feed(InhibitRequest(k.at(), "wok-2", 0.0, "tech"))
    k.all_normal()
    out = k.core.replan(plan(**{"wok-2": (HOT, "rs485-1:8")}), k.at())
    assert "config.applied" in [e.kind for e in out.events]
    # The moved detector is a new sensor: it must answer before a reset may open anything.
    assert not k.detector("wok-2").has_reading


def test_a_restart_without_the_latched_detector_keeps_an_orphan_latch() -> None:
    """A hand-edited config without wok-1, then a restart, with the leak still at rs485-1:1."""
    smaller = SafetyPlan(tuple(d for d in plan().detectors if d.name != "wok-1"), plan().valves)
    k = Kitchen(smaller, latched={"wok-1@rs485-1:1": Level.HIGH})
    assert k.core.restored == {}
    assert [(o.name, o.sensor, o.level) for o in k.view().orphans] == [
        ("wok-1", "rs485-1:1", Level.HIGH)
    ]
    raised = [e for e in k.events if e.kind == "fault.raised" and e.source == "wok-1"]
    assert raised and raised[0].details["fault"] == "orphan_latch"
    assert k.out.red == Light.FLASH_ALARM and k.out.yellow == Light.FLASH_FAULT and k.out.sounder
    # Every detector still configured is clean: the reset is refused all the same, everywhere.
    k.all_normal()
    k.all_normal()
    out = k.reset()
    assert not any(out.valves_open.values())
    assert any("wok-1" in b and "orphan latch" in b for b in k.core.reset_blockers())
    assert k.core.latched() == {"wok-1@rs485-1:1": Level.HIGH}  # kept for the next restart
    # Only a technician clears it, with a reason.
    k.feed(OrphanLatchClear(k.at(), "wok-1", "li.wei", "  "))
    assert k.view().orphans and "operator.refused" in k.kinds()
    k.feed(OrphanLatchClear(k.at(), "rs485-1:1", "li.wei", "detector removed, no gas on site"))
    assert not k.view().orphans
    cleared = [e for e in k.events if e.kind == "operator.orphan_cleared"]
    assert cleared[0].details["operator"] == "li.wei"
    assert cleared[0].details["reason"] == "detector removed, no gas on site"
    assert k.reset().valves_open == {"main-inlet": True, "bakery-valve": True}


def test_a_restart_puts_each_latch_back_on_its_sensor_whatever_the_name() -> None:
    renamed = plan()
    renamed = SafetyPlan(
        (dataclasses.replace(renamed.detectors[0], name="wok-left"), *renamed.detectors[1:]),
        renamed.valves,
    )
    core = SafetyCore(renamed, 0.0, {"wok-1@rs485-1:1": Level.LOW})
    assert core.restored == {"wok-left": Level.LOW} and not core.orphans()
    # Re-addressed by hand: the latch stays with rs485-1:1 (now nobody): an orphan.
    moved = plan(**{"wok-1": (HOT, "rs485-1:5")})
    core = SafetyCore(moved, 0.0, {"wok-1@rs485-1:1": Level.LOW})
    assert core.restored == {} and list(core.orphans()) == ["wok-1@rs485-1:1"]
    # A latch stored by name by an older release goes back by name (the upgrade step).
    core = SafetyCore(plan(), 0.0, {"wok-1": Level.HIGH})
    assert core.restored == {"wok-1": Level.HIGH}


def test_an_orphan_latch_goes_back_to_its_sensor_when_a_reload_configures_it_again() -> None:
    smaller = SafetyPlan(tuple(d for d in plan().detectors if d.name != "wok-1"), plan().valves)
    k = Kitchen(smaller, latched={"wok-1@rs485-1:1": Level.HIGH})
    out = k.core.replan(plan(**{"wok-1": (BAKERY, SENSORS["wok-1"])}), k.at())
    assert "config.applied" in [e.kind for e in out.events]
    assert not k.view().orphans
    assert k.detector("wok-1").latched == Level.HIGH
    k.read("wok-1", 60.0)
    k.read("wok-1", 60.0)
    assert k.reset().valves_open == {"main-inlet": False, "bakery-valve": False}
