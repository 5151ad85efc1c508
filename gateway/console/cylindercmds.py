"""The console's cylinder commands (一瓶一码): ``cylinders``, ``cylinder add|set|remove``.

Every change is recorded upstream (``cylinder.recorded`` / ``cylinder.changed`` /
``cylinder.removed``), then the city plan's cylinder rules are checked
(``gateway.console.cylinders.check``): a rule newly broken opens a hazard in the ledger, with
the technician as the responsible person and a deadline ``FIX_DAYS`` ahead, and goes upstream
as ``hazard.opened``. A rule already in the ledger as an open hazard is not filed twice.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from gateway.console.cylinders import (
    CYLINDER_ROOM,
    MAX_KG_WITHOUT_ROOM,
    CylinderError,
    Finding,
    check,
    check_code,
    parse_fields,
)

if TYPE_CHECKING:
    from gateway.console.commands import Console

FIX_DAYS = 7  # the deadline of a cylinder hazard, from the day it is found


def cmd_cylinders(c: Console, args: list[str]) -> None:
    if args:
        raise CylinderError("usage: cylinders")
    cylinders = c.cylinders.cylinders()
    if not cylinders:
        c.say("no cylinders recorded")
        return
    lines = [f"{'CODE':<24} {'KG':>3} {'KIND':<13} {'STATE':<7} PLACE"]
    for cyl in cylinders:
        lines.append(f"{cyl.code[:24]:<24} {cyl.kg:>3} {cyl.kind:<13} {cyl.state:<7} {cyl.place}")
    stored = sum(x.kg for x in cylinders if x.state != "empty")
    lines.append(f"{len(cylinders)} cylinder(s), {stored} kg of LPG not empty")
    findings = check(cylinders)
    lines += [f"HAZARD: {f.text}" for f in findings] or ["no cylinder hazard"]
    c.say("\n".join(lines))


def cmd_cylinder_add(c: Console, args: list[str]) -> None:
    if len(args) < 4:
        raise CylinderError(
            "usage: cylinder add CODE kg=N state=in-use|spare|empty place=NAME "
            f"[kind=single-phase|dual-phase] (the dedicated room is place={CYLINDER_ROOM})"
        )
    code = check_code(args[0])
    cyl = c.cylinders.add(code, parse_fields(args[1:], required=True), c.technician)
    c.record("cylinder.recorded", cyl.code, cyl.as_dict())
    c.say(f"cylinder {cyl.code} recorded: {cyl.kg} kg {cyl.kind}, {cyl.state} at {cyl.place}")
    _file_hazards(c)


def cmd_cylinder_set(c: Console, args: list[str]) -> None:
    if len(args) < 2:
        raise CylinderError("usage: cylinder set CODE key=value ... (kg state place kind)")
    cyl = c.cylinders.update(args[0], parse_fields(args[1:], required=False), c.technician)
    c.record("cylinder.changed", cyl.code, cyl.as_dict())
    c.say(f"cylinder {cyl.code}: {cyl.kg} kg {cyl.kind}, {cyl.state} at {cyl.place}")
    _file_hazards(c)


def cmd_cylinder_remove(c: Console, args: list[str]) -> None:
    if len(args) != 1:
        raise CylinderError("usage: cylinder remove CODE (it left the site)")
    cyl = c.cylinders.remove(args[0])
    c.record("cylinder.removed", cyl.code, cyl.as_dict())
    c.say(f"cylinder {cyl.code} removed from the site's list")


def _file_hazards(c: Console) -> None:
    """Open a hazard for each rule broken now that has no open hazard yet."""
    open_items = {h.item for h in c.hazards.hazards()}
    for finding in check(c.cylinders.cylinders()):
        if finding.rule in open_items:
            c.say(f"HAZARD (already open): {finding.text}")
            continue
        _open(c, finding)


def _open(c: Console, finding: Finding) -> None:
    deadline = (c.today() + dt.timedelta(days=FIX_DAYS)).isoformat()
    hazard = c.hazards.open_hazard(
        item=finding.rule,
        text=_plan_text(finding),
        remark=finding.text,
        responsible=c.technician,
        deadline=deadline,
        opened_by=c.technician,
        record_id=None,
    )
    c.record(
        "hazard.opened",
        hazard.label,
        {
            "item": hazard.item,
            "text": hazard.text,
            "remark": hazard.remark,
            "responsible": hazard.responsible,
            "deadline": hazard.deadline,
        },
    )
    c.say(f"HAZARD {hazard.label} opened, due {deadline}: {finding.text}")


def _plan_text(finding: Finding) -> str:
    """What the city plan says, for the ledger's hazard text."""
    if finding.rule.endswith("stored-over-100kg"):
        return f"more than {MAX_KG_WITHOUT_ROOM} kg of LPG cylinders without a cylinder room"
    if finding.rule.endswith("dual-phase-50kg"):
        return "50 kg gas-liquid dual-phase cylinder (banned)"
    return "in-use and spare cylinders not separated"
