"""The status document the control API serves (``gasguard status --json``).

Built from the safety thread's published snapshot in the API thread. A detector in comm fault
has ``lel: null``: its last value is never shown as current, only the age of its last valid
reply (``age_s``).
"""

from __future__ import annotations

import datetime
from typing import Any

from gateway.config import Config
from gateway.core.model import Level, Outputs
from gateway.core.safety import CoreView, DetectorView
from gateway.maintenance import service_of


def detector_state(d: DetectorView) -> str:
    """normal, low-alarm, high-alarm, fault, comm-fault, inhibited or starting."""
    if d.fault is not None:
        return "comm-fault" if d.fault.startswith("comm") else "fault"
    if d.inhibited_until is not None:
        return "inhibited"
    if not d.has_reading:
        return "starting"
    level = max(d.level, d.latched)
    return {Level.NORMAL: "normal", Level.LOW: "low-alarm", Level.HIGH: "high-alarm"}[level]


def build_status(
    config: Config,
    view: CoreView,
    outputs: Outputs,
    reset_blockers: tuple[str, ...],
    *,
    now: float,
    wall: float,
    uptime_s: float,
    simulated: bool,
) -> dict[str, Any]:
    det_cfg = {d.name: d for d in config.detectors}
    today = datetime.date.fromtimestamp(wall)
    valve_cfg = {v.name: v for v in config.valves}
    detectors = []
    alarms = []
    faults = []
    for d in view.detectors:
        c = det_cfg.get(d.name)
        detectors.append(
            {
                "name": d.name,
                "label": c.label if c and c.label else d.name,
                "zone": d.zone,
                "bus": c.bus if c else None,
                "address": c.address if c else None,
                "profile": c.profile.name if c else None,
                "gas": c.gas.value if c else None,
                "lel": None if d.lel is None else round(d.lel, 1),
                # At or beyond full scale: ``lel`` is the full scale, the gas is at least that.
                "over_range": d.over_range,
                "state": detector_state(d),
                "level": d.level.name.lower(),
                "latched": d.latched.name.lower(),
                "fault": d.fault,
                "age_s": None
                if d.last_good_at is None
                else round(max(0.0, now - d.last_good_at), 1),
                "inhibited_s": None
                if d.inhibited_until is None
                else round(max(0.0, d.inhibited_until - now), 1),
                "service": service_of(c).as_status(today) if c else None,
            }
        )
        if d.latched > Level.NORMAL:
            still = "" if d.level > Level.NORMAL else ", gas now below the set point"
            alarms.append(f"{d.name}: {d.latched.name.lower()} alarm (latched until reset{still})")
        if d.fault is not None:
            faults.append(f"{d.name}: {d.fault}")
    for name, text in view.service:
        faults.append(f"{name}: {text}")
    if view.store_fault is not None:
        faults.append(f"store: {view.store_fault}")
    orphans = []
    for o in view.orphans:
        # A latched alarm and a fault at once: shown in both lists, naming the old detector.
        level = o.level.name.lower()
        where = o.sensor or "sensor unknown"
        alarms.append(f"{o.name}: {level} alarm latched ({where}); detector no longer configured")
        faults.append(
            f"{o.name}: orphan latch ({where}): every valve stays closed until a technician "
            "clears it at the console (clear-orphan)"
        )
        orphans.append({"name": o.name, "sensor": o.sensor, "level": level})
    valves = []
    for v in view.valves:
        vc = valve_cfg.get(v.name)
        if v.failed:
            faults.append(f"{v.name}: valve fault")
        valves.append(
            {
                "name": v.name,
                "label": vc.label if vc and vc.label else v.name,
                "kind": vc.kind if vc else None,
                "commanded": "open" if v.commanded_open else "closed",
                "reason": v.reason,
                "feedback": "none"
                if v.feedback_closed is None
                else ("closed" if v.feedback_closed else "open"),
                "confirmed": v.confirmed,
                "failed": v.failed,
            }
        )
    fan_cfg = {f.name: f for f in config.fans}
    fans = []
    for f in view.fans:
        fc = fan_cfg.get(f.name)
        if f.failed:
            faults.append(f"{f.name}: fan fault (not running when it should)")
        fans.append(
            {
                "name": f.name,
                "label": fc.label if fc and fc.label else f.name,
                "zones": list(f.zones),
                "commanded": "on" if f.commanded_on else "off",
                "reason": f.reason,
                "running": f.running,
                "failed": f.failed,
                "run_on_s": None
                if f.run_on_until is None
                else round(max(0.0, f.run_on_until - now), 1),
            }
        )
    if view.mains_failed:
        faults.append("power: mains failed, running on the backup battery")
    if view.battery_low:
        faults.append("power: backup battery low, valves closed")
    return {
        "site": {"id": config.site.id, "name": config.site.name, "address": config.site.address},
        "uptime_s": round(uptime_s, 1),
        "now_utc": wall,
        "simulated": simulated,
        "detectors": detectors,
        "valves": valves,
        "fans": fans,
        "power": {
            "mains": None
            if config.power.mains_failed_pin is None
            else ("failed" if view.mains_failed else "ok"),
            "battery": None
            if config.power.battery_low_pin is None
            else ("low" if view.battery_low else "ok"),
        },
        "alarms": alarms,
        "faults": faults,
        "orphan_latches": orphans,
        "sounder": outputs.sounder,
        "silenced": view.silenced,
        "lights": {
            "red": outputs.red.value,
            "yellow": outputs.yellow.value,
            "green": outputs.green.value,
        },
        "reset_blockers": list(reset_blockers),
    }
