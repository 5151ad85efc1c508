"""The hazard and commissioning ledger, rolled up from the kitchens' events, per district.

A kitchen's technician signs its commissioning record and opens and closes hazards at the
kitchen's console; those arrive here as ``commissioning.signed`` and ``hazard.*`` events. A
hazard's row shows its state (open, overdue, closed), who answers for it, its deadline and who
verified the fix. ``write_csv`` is the monthly report (UTF-8 with a BOM, so Excel shows the
Chinese text).
"""

from __future__ import annotations

import csv
import re
from typing import Any, TextIO

import psycopg
from psycopg.rows import dict_row

MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
COLUMNS = (
    "district",
    "site_id",
    "site_name",
    "record",
    "kind",
    "state",
    "item",
    "text",
    "responsible",
    "deadline",
    "opened_utc",
    "signed_or_verified_by",
    "closed_utc",
    "remark",
)


def ledger_rows(
    conn: psycopg.Connection[Any], district: str | None, month: str | None
) -> list[dict[str, Any]]:
    """One row per commissioning record and per hazard; ``month`` (YYYY-MM) keeps the rows
    opened or closed in that month."""
    if month is not None and not MONTH_RE.fullmatch(month):
        raise ValueError(f"month {month[:20]!r}: must be YYYY-MM")
    with conn.cursor(row_factory=dict_row) as cur:
        events = cur.execute(
            "SELECT e.site_id, s.name AS site_name, coalesce(d.name, '') AS district, e.kind,"
            " e.source, e.utc, e.details FROM events e JOIN sites s USING (site_id)"
            " LEFT JOIN districts d ON d.id = s.district_id"
            " WHERE (e.kind = 'commissioning.signed' OR e.kind LIKE 'hazard.%%')"
            " AND (%s::text IS NULL OR s.district_id = %s)"
            " ORDER BY e.site_id, e.seq",
            (district, district),
        ).fetchall()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        d = e["details"] or {}
        base = {"district": e["district"], "site_id": e["site_id"], "site_name": e["site_name"]}
        if e["kind"] == "commissioning.signed":
            record = d.get("record")
            if not isinstance(record, dict):
                record = {}
            rows[(e["site_id"], f"C:{d.get('record_id')}")] = {
                **base,
                "record": d.get("record_id", ""),
                "kind": "commissioning",
                "state": "signed",
                "text": d.get("summary", ""),
                "opened_utc": e["utc"],
                "signed_or_verified_by": record.get("technician", ""),
            }
            continue
        key = (e["site_id"], f"H:{e['source']}")
        row = rows.setdefault(key, {**base, "record": e["source"], "kind": "hazard"})
        if e["kind"] == "hazard.opened":
            row.update(
                state="open",
                item=d.get("item", ""),
                text=d.get("text", ""),
                responsible=d.get("responsible", ""),
                deadline=d.get("deadline", ""),
                opened_utc=e["utc"],
                remark=d.get("remark", ""),
                commissioning=d.get("record_id", ""),
            )
        elif e["kind"] == "hazard.overdue" and row.get("state") != "closed":
            row["state"] = "overdue"
        elif e["kind"] == "hazard.closed":
            row.update(
                state="closed",
                signed_or_verified_by=d.get("verified_by", ""),
                closed_utc=e["utc"],
                remark=d.get("remark", row.get("remark", "")),
            )
    out = [{c: r.get(c, "") for c in COLUMNS} for r in rows.values()]
    if month is not None:
        out = [
            r
            for r in out
            if str(r["opened_utc"]).startswith(month) or str(r["closed_utc"]).startswith(month)
        ]
    return out


def write_csv(
    conn: psycopg.Connection[Any], out: TextIO, district: str | None, month: str | None
) -> None:
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in ledger_rows(conn, district, month):
        writer.writerow({k: _cell(v) for k, v in row.items()})


def _cell(value: object) -> str:
    text = str(value)
    # A cell starting with = + - @ is a formula to a spreadsheet: a kitchen's remark must not
    # run as one on the district office's computer.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text
