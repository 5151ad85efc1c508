"""What a detector entry stands for, and the orphan latch: the rules that keep a latch on its
physical sensor (bus, address) across reloads and restarts (used by ``core.safety``).

Pure: plans in, verdicts and texts out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.core.model import DetectorPlan, Level, SafetyPlan


@dataclass(frozen=True, slots=True)
class OrphanView:
    """An orphan latch: an alarm latched on ``sensor`` (``bus:address``; None when it was stored
    by name only) while it was the detector ``name``, which the configuration no longer has."""

    name: str
    sensor: str | None
    level: Level


def orphan_text(orphan: OrphanView) -> str:
    where = f"sensor {orphan.sensor}" if orphan.sensor is not None else "its old sensor"
    return (
        f"{orphan.level.name.lower()} alarm latched on {where}, which the configuration no "
        "longer has (orphan latch): every valve stays closed until a technician has checked it "
        "and cleared it at the console"
    )


def identity_changes(
    held: Iterable[tuple[DetectorPlan, str | None]], old_plan: SafetyPlan, plan: SafetyPlan
) -> list[tuple[str, str, str]]:
    """(detector, field, reason) for each change ``plan`` makes to what a held detector stands
    for. ``held`` pairs each detector of ``old_plan`` with why it is held (None: it is normal
    and may change). Every field is compared through the sensor, so a rename plus a re-add, a
    re-address or a swap of addresses is caught as well as a removal."""
    new_by_sensor = {dp.sensor_key: dp for dp in plan.detectors}
    new_by_name = {dp.name: dp for dp in plan.detectors}
    out: list[tuple[str, str, str]] = []
    for old, why in held:
        if why is None:
            continue
        new = new_by_sensor.get(old.sensor_key)
        if new is None:
            moved = new_by_name.get(old.name)
            fields = _sensor_fields(old.sensor_key, moved.sensor_key) if moved else ["detector"]
        else:
            fields = []
            if new.name != old.name:
                fields.append("name")
            if (new.profile, new.range_lel) != (old.profile, old.range_lel):
                fields.append("profile")
            if new.zone != old.zone:
                fields.append("zone")
            elif not _zone_valves(plan, old.zone) >= _zone_valves(old_plan, old.zone):
                # A valve added to the zone starts closed and the latch keeps it closed; one
                # taken out of it would no longer answer to this detector.
                fields.append("zone's valves")
            elif (old.zone in plan.two_detector_zones) != (old.zone in old_plan.two_detector_zones):
                fields.append("zone's two_detector_confirmation")
        for f in fields:
            change = "be removed (or renamed and re-added)" if f == "detector" else f"change {f}"
            out.append(
                (
                    old.name,
                    f,
                    f"detector {old.name} {why} (sensor {old.sensor_key}): it cannot {change} "
                    "until it is normal again and a local reset has cleared any latch",
                )
            )
    return out


def _sensor_fields(old: str, new: str) -> list[str]:
    """Which of bus and address differ between two sensor ids (``bus:address``)."""
    old_bus, _, old_addr = old.rpartition(":")
    new_bus, _, new_addr = new.rpartition(":")
    pairs = (("bus", old_bus, new_bus), ("address", old_addr, new_addr))
    return [f for f, a, b in pairs if a != b] or ["sensor"]


def _zone_valves(plan: SafetyPlan, zone: str) -> frozenset[str]:
    return frozenset(v.name for v in plan.valves if zone in v.zones)
