"""The site's LPG cylinders by their code (一瓶一码, city plan 三(三)2), and the cylinder hazards
the city plan names (二(四)2–3):

* more than ``MAX_KG_WITHOUT_ROOM`` (100 kg) of LPG stored anywhere but a dedicated cylinder
  room (the place named ``cylinder-room``);
* a 50 kg gas-liquid dual-phase cylinder (气液双相, banned);
* in-use and spare cylinders not separated (a spare in the same place as one in use).

A cylinder is recorded even when it is a hazard: refusing the record would hide the cylinder.
The hazard goes into the hazard ledger instead (once per rule while it lasts), and upstream.
Rows live in ``console.db`` (``cylinders``); the console process only.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.console.store import ConsoleStore

# Nominal LPG fill of the standard cylinder sizes (YSP4.7, YSP12, YSP26.2, YSP35.5, YSP118).
WEIGHT_CLASSES_KG = (2, 5, 10, 15, 50)
KINDS = ("single-phase", "dual-phase")
STATES = ("in-use", "spare", "empty")
CYLINDER_ROOM = "cylinder-room"
MAX_KG_WITHOUT_ROOM = 100
CODE_RE = re.compile(r"^[\x21-\x7e]{4,128}$")  # what a QR code or RFID reader types: no spaces
PLACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")

# The rules, by the ledger item their hazard is filed under.
RULE_STORED = "cylinders.stored-over-100kg"
RULE_DUAL_PHASE = "cylinders.dual-phase-50kg"
RULE_SEPARATION = "cylinders.in-use-and-spare-together"


class CylinderError(Exception):
    """A cylinder record that is refused (bad code, unknown one, a value outside its range)."""


@dataclass(frozen=True, slots=True)
class Cylinder:
    code: str
    kg: int
    kind: str
    state: str
    place: str
    recorded_utc: float
    recorded_by: str

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "kg": self.kg,
            "kind": self.kind,
            "state": self.state,
            "place": self.place,
        }


@dataclass(frozen=True, slots=True)
class Finding:
    """One broken rule: its ledger item and the text for people."""

    rule: str
    text: str


def check(cylinders: list[Cylinder]) -> list[Finding]:
    """The city plan's cylinder rules against what is on site now."""
    found = []
    outside = sum(c.kg for c in cylinders if c.state != "empty" and c.place != CYLINDER_ROOM)
    if outside > MAX_KG_WITHOUT_ROOM:
        found.append(
            Finding(
                RULE_STORED,
                f"{outside} kg of LPG stored outside a cylinder room (more than "
                f"{MAX_KG_WITHOUT_ROOM} kg needs a dedicated cylinder room)",
            )
        )
    dual = [c.code for c in cylinders if c.kind == "dual-phase" and c.kg == 50]
    if dual:
        found.append(
            Finding(
                RULE_DUAL_PHASE,
                f"banned 50 kg gas-liquid dual-phase cylinder on site: {', '.join(dual)}",
            )
        )
    in_use = {c.place for c in cylinders if c.state == "in-use"}
    mixed = sorted({c.place for c in cylinders if c.state == "spare" and c.place in in_use})
    if mixed:
        found.append(
            Finding(RULE_SEPARATION, f"in-use and spare cylinders together at {', '.join(mixed)}")
        )
    return found


def parse_fields(words: list[str], *, required: bool) -> dict[str, object]:
    """``kg=15 state=in-use place=kitchen kind=single-phase`` as checked values."""
    allowed = ("kg", "state", "place", "kind")
    out: dict[str, object] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise CylinderError(f"{word[:40]!r}: expected key=value ({', '.join(allowed)})")
        if key in out:
            raise CylinderError(f"{key} given twice")
        if key == "kg":
            if not value.isdigit() or int(value) not in WEIGHT_CLASSES_KG:
                classes = ", ".join(map(str, WEIGHT_CLASSES_KG))
                raise CylinderError(f"kg={value[:20]!r}: one of {classes}")
            out[key] = int(value)
        elif key == "state":
            if value not in STATES:
                raise CylinderError(f"state={value[:20]!r}: one of {', '.join(STATES)}")
            out[key] = value
        elif key == "kind":
            if value not in KINDS:
                raise CylinderError(f"kind={value[:20]!r}: one of {', '.join(KINDS)}")
            out[key] = value
        elif key == "place":
            if not PLACE_RE.match(value):
                raise CylinderError(
                    f"place={value[:40]!r}: 1-32 letters, digits, '_', '.' or '-' "
                    f"(the dedicated room is {CYLINDER_ROOM!r})"
                )
            out[key] = value
        else:
            raise CylinderError(f"unknown key {key[:20]!r}; allowed: {', '.join(allowed)}")
    missing = [k for k in ("kg", "state", "place") if required and k not in out]
    if missing:
        raise CylinderError(f"missing {', '.join(k + '=' for k in missing)}")
    return out


def check_code(code: str) -> str:
    if not CODE_RE.match(code):
        raise CylinderError(
            f"cylinder code {code[:40]!r}: 4-128 printable characters without spaces "
            "(as the scanner types it)"
        )
    return code


_COLUMNS = "code, kg, kind, state, place, recorded_utc, recorded_by"


def _row(r: tuple[object, ...]) -> Cylinder:
    return Cylinder(
        str(r[0]), int(str(r[1])), str(r[2]), str(r[3]), str(r[4]), float(str(r[5])), str(r[6])
    )


class CylinderRegister:
    """The cylinders at the site, in ``console.db``."""

    def __init__(self, store: ConsoleStore, *, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.wall = wall

    def cylinders(self) -> list[Cylinder]:
        rows = self.store.conn.execute(
            f"SELECT {_COLUMNS} FROM cylinders ORDER BY place, state, code"
        ).fetchall()
        return [_row(r) for r in rows]

    def get(self, code: str) -> Cylinder:
        row = self.store.conn.execute(
            f"SELECT {_COLUMNS} FROM cylinders WHERE code = ?", (code,)
        ).fetchone()
        if row is None:
            raise CylinderError(f"no cylinder {code[:40]!r} recorded")
        return _row(row)

    def add(self, code: str, fields: dict[str, object], by: str) -> Cylinder:
        check_code(code)
        try:
            with self.store.transaction() as conn:
                conn.execute(
                    f"INSERT INTO cylinders ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        code,
                        fields["kg"],
                        fields.get("kind", "single-phase"),
                        fields["state"],
                        fields["place"],
                        self.wall(),
                        by,
                    ),
                )
        except sqlite3.IntegrityError:
            raise CylinderError(f"cylinder {code!r} is already recorded") from None
        return self.get(code)

    def update(self, code: str, fields: dict[str, object], by: str) -> Cylinder:
        if not fields:
            raise CylinderError("nothing to change: give kg=, state=, place= or kind=")
        self.get(code)
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.store.transaction() as conn:
            conn.execute(
                f"UPDATE cylinders SET {sets}, recorded_utc = ?, recorded_by = ? WHERE code = ?",
                (*fields.values(), self.wall(), by, code),
            )
        return self.get(code)

    def remove(self, code: str) -> Cylinder:
        """The cylinder left the site (returned to the supplier)."""
        cylinder = self.get(code)
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM cylinders WHERE code = ?", (code,))
        return cylinder
