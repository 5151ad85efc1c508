"""The commissioning inspection of the city plan: a guided checklist whose answers become one
signed record ("whoever inspects, signs and is responsible").

The checklist (``checklist(config)``) has one placement item per configured detector (for its
gas: LPG at most 0.3 m above the floor within 4 m of the appliance, natural gas at most 0.3 m
below the ceiling within 8 m; GB 50028 §10.8.2), one "installed and closing" item per valve
(backed by a ``test valve`` result), and the site items of the city plan 二(四)2–3.

Each item is pass, fail or not applicable, with a remark. The record names the site, the
technician and the time, carries the SHA-256 of the configuration in force, and is signed
with HMAC-SHA256 under the site key (``site.key``, see ``store.site_key``): anyone with the
key can check that the record was not altered after signing. Failed items open hazards in the
ledger in the same transaction as the record is stored: both or neither.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from gateway.config import Config
from gateway.console.hazards import insert_hazard
from gateway.console.store import ConsoleStore
from gateway.core.model import Gas

RESULTS = ("pass", "fail", "n/a")
SIGNATURE_ALG = "HMAC-SHA256"
RECORD_VERSION = 1


@dataclass(frozen=True, slots=True)
class ChecklistItem:
    """One question. ``valve`` is set for the valve items (answered from a valve test)."""

    id: str
    text: str
    valve: str | None = None


SITE_ITEMS = (
    ChecklistItem(
        "hose",
        "Connecting hose at most 2 m long, no home-made tee, not through a wall, door, "
        "window, ceiling or floor",
    ),
    ChecklistItem("lpg.basement", "No bottled LPG used in a basement or semi-basement"),
    ChecklistItem(
        "cylinders.storage", "More than 100 kg of cylinders only in a dedicated cylinder room"
    ),
    ChecklistItem("cylinders.apart", "In-use and spare cylinders kept apart"),
    ChecklistItem("cylinders.dual_phase", 'No 50 kg "gas-liquid dual-phase" cylinders'),
    ChecklistItem("regulator.fixed", "No regulator with an adjustable outlet pressure"),
    ChecklistItem("supply.pressure", "No medium-pressure supply to burners"),
    ChecklistItem("marks.detectors", "Certification marks on every gas detector"),
    ChecklistItem("marks.valve", "Certification mark on the emergency shutoff valve"),
    ChecklistItem("marks.hose", "Certification mark on the hose"),
    ChecklistItem("marks.regulator", "Certification mark on the regulator"),
    ChecklistItem("exits", "Exits and escape routes clear"),
    ChecklistItem(
        "staff.trained", "Staff trained: what the alarm means, the shutoff, the reset, evacuation"
    ),
)


def placement_text(gas: Gas) -> str:
    """Where a detector for ``gas`` must be (GB 50028 §10.8.2)."""
    if gas is Gas.LPG:
        return "at most 0.3 m above the floor, within 4 m of the appliance (LPG is heavier)"
    return "at most 0.3 m below the ceiling, within 8 m of the appliance (natural gas rises)"


def checklist(config: Config) -> list[ChecklistItem]:
    """Every item of the inspection for this site, in the order asked."""
    items = [
        ChecklistItem(
            f"detector.{d.name}",
            f"Detector {d.name} ({d.gas.value}, zone {d.zone}, {d.bus} address {d.address}) "
            f"present and placed {placement_text(d.gas)}",
        )
        for d in config.detectors
    ]
    items += [
        ChecklistItem(
            f"valve.{v.name}",
            f"Shutoff valve {v.name} ({v.kind}, zones {', '.join(v.zones)}) installed and "
            "closing on command (test valve)",
            valve=v.name,
        )
        for v in config.valves
    ]
    items += list(SITE_ITEMS)
    return items


@dataclass(frozen=True, slots=True)
class Answer:
    """The technician's answer to one item. For a failed item ``responsible`` and
    ``deadline`` (ISO date) open a hazard; ``evidence`` is what a test showed."""

    item: ChecklistItem
    result: str
    remark: str
    evidence: dict[str, Any] | None = None
    responsible: str | None = None
    deadline: str | None = None

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"result {self.result!r}: one of {', '.join(RESULTS)}")
        if self.result == "fail" and not (self.responsible and self.deadline and self.remark):
            raise ValueError(
                f"{self.item.id}: a failed item needs a remark, a responsible person and a deadline"
            )


def new_record_id(now_utc: float) -> str:
    stamp = dt.datetime.fromtimestamp(now_utc, tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"C-{stamp}-{secrets.token_hex(2)}"


def canonical(obj: Any) -> bytes:
    """The bytes that are signed: JSON with sorted keys, no spaces, UTF-8."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def key_id(key: bytes) -> str:
    """Names the key without revealing it (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(key).hexdigest()[:16]


def sign(record: dict[str, Any], key: bytes) -> dict[str, str]:
    return {
        "alg": SIGNATURE_ALG,
        "key_id": key_id(key),
        "value": hmac.new(key, canonical(record), hashlib.sha256).hexdigest(),
    }


def signature_ok(record: dict[str, Any], signature: dict[str, Any], key: bytes) -> bool:
    if signature.get("alg") != SIGNATURE_ALG or signature.get("key_id") != key_id(key):
        return False
    expected = hmac.new(key, canonical(record), hashlib.sha256).hexdigest()
    value = signature.get("value")
    return isinstance(value, str) and hmac.compare_digest(expected, value)


def build_record(
    *,
    record_id: str,
    config: Config,
    config_sha256: str,
    technician: str,
    started_utc: float,
    signed_utc: float,
    answers: list[Answer],
) -> dict[str, Any]:
    """The record as signed (without hazard ids: those are assigned when it is stored)."""
    counts = {r: sum(1 for a in answers if a.result == r) for r in RESULTS}
    return {
        "version": RECORD_VERSION,
        "id": record_id,
        "site": {
            "id": config.site.id,
            "name": config.site.name,
            "address": config.site.address,
        },
        "technician": technician,
        "started_utc": round(started_utc, 3),
        "signed_utc": round(signed_utc, 3),
        "config_sha256": config_sha256,
        "items": [
            {
                "id": a.item.id,
                "text": a.item.text,
                "result": a.result,
                "remark": a.remark,
                **({"evidence": a.evidence} if a.evidence is not None else {}),
                **(
                    {"responsible": a.responsible, "deadline": a.deadline}
                    if a.result == "fail"
                    else {}
                ),
            }
            for a in answers
        ],
        "summary": {"pass": counts["pass"], "fail": counts["fail"], "n/a": counts["n/a"]},
        "hazards_found": counts["fail"] > 0,
    }


@dataclass(frozen=True, slots=True)
class StoredRecord:
    id: str
    signed_utc: float
    technician: str
    record: dict[str, Any]
    signature: dict[str, Any]
    hazard_ids: tuple[int, ...]


class CommissioningBook:
    """Signed commissioning records in ``console.db``."""

    def __init__(self, store: ConsoleStore) -> None:
        self.store = store

    def store_signed(
        self, record: dict[str, Any], signature: dict[str, str], answers: list[Answer]
    ) -> StoredRecord:
        """Store the record and open one hazard per failed item, in one transaction."""
        hazard_ids: list[int] = []
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO commissioning (id, signed_utc, technician, body, signature) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    record["id"],
                    record["signed_utc"],
                    record["technician"],
                    canonical(record).decode(),
                    json.dumps(signature),
                ),
            )
            for a in answers:
                if a.result != "fail":
                    continue
                assert a.responsible is not None and a.deadline is not None
                hazard_ids.append(
                    insert_hazard(
                        conn,
                        utc=float(record["signed_utc"]),
                        item=a.item.id,
                        text=a.item.text,
                        remark=a.remark,
                        responsible=a.responsible,
                        deadline=a.deadline,
                        opened_by=str(record["technician"]),
                        record_id=str(record["id"]),
                    )
                )
        return StoredRecord(
            str(record["id"]),
            float(record["signed_utc"]),
            str(record["technician"]),
            record,
            dict(signature),
            tuple(hazard_ids),
        )

    def get(self, record_id: str) -> StoredRecord | None:
        row = self.store.conn.execute(
            "SELECT id, signed_utc, technician, body, signature FROM commissioning WHERE id = ?",
            (record_id,),
        ).fetchone()
        if row is None:
            return None
        hazards = self.store.conn.execute(
            "SELECT id FROM hazards WHERE record_id = ? ORDER BY id", (record_id,)
        ).fetchall()
        return StoredRecord(
            str(row[0]),
            float(row[1]),
            str(row[2]),
            json.loads(row[3]),
            json.loads(row[4]),
            tuple(int(h[0]) for h in hazards),
        )

    def records(self) -> list[StoredRecord]:
        ids = self.store.conn.execute(
            "SELECT id FROM commissioning ORDER BY signed_utc DESC"
        ).fetchall()
        out = []
        for (rid,) in ids:
            rec = self.get(str(rid))
            if rec is not None:
                out.append(rec)
        return out
