"""The ingest's writes: one batch of checked messages in one PostgreSQL transaction.

Events are keyed by (site id, seq), so a re-sent event changes nothing. New events feed the
incident rules (city/incidents.py); heartbeats and statuses update the site's row. Site rows are
locked in site-id order first, so two workers writing overlapping batches never deadlock, and
the desk is told what changed with one NOTIFY that PostgreSQL delivers at commit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from city.config import CityConfig
from city.incidents import Rule, rule_for
from city.messages import Incoming

NOTIFY_CHANNEL = "city_changes"
MAX_NOTIFIED_IDS = 200  # beyond this the desk is told to reload everything


@dataclass(slots=True)
class Written:
    """What one batch did."""

    stored: int = 0  # new events
    duplicates: int = 0  # events already stored (a re-send): acknowledged again, not stored
    incidents: set[int] = field(default_factory=set)
    sites: set[str] = field(default_factory=set)


def sync_districts(conn: psycopg.Connection[Any], cfg: CityConfig) -> None:
    """The config's districts in the table (names updated; none removed: history refers to
    them)."""
    with conn.transaction():
        for d in cfg.districts:
            conn.execute(
                "INSERT INTO districts (id, name) VALUES (%s, %s)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                (d.id, d.name),
            )


def write_batch(
    conn: psycopg.Connection[Any], cfg: CityConfig, items: Sequence[Incoming]
) -> Written:
    """Store ``items`` in one transaction; raises psycopg errors (nothing is then stored)."""
    out = Written()
    with conn.transaction():
        sites = sorted({i.site_id for i in items})
        conn.execute(
            "INSERT INTO sites (site_id, district_id)"
            " SELECT s, d FROM unnest(%s::text[], %s::text[]) AS t(s, d) ORDER BY s"
            " ON CONFLICT (site_id) DO UPDATE SET last_seen = now()",
            (sites, [cfg.district_for(s) for s in sites]),
        )
        out.sites.update(sites)
        # A silent site that speaks again: shown on its incident, which an officer closes.
        for row in conn.execute(
            "UPDATE incidents SET cleared_at = clock_timestamp(), updated_at = clock_timestamp()"
            " WHERE category = 'silent' AND site_id = ANY(%s) AND state <> 'closed'"
            " AND cleared_at IS NULL RETURNING id",
            (sites,),
        ).fetchall():
            log_step(conn, row[0], "kitchen", "heard again", "", None)
            out.incidents.add(row[0])
        for item in items:
            if item.leaf == "event":
                _event(conn, item, out)
            elif item.leaf == "heartbeat":
                conn.execute(
                    "UPDATE sites SET last_heartbeat = now(), pending = %s WHERE site_id = %s",
                    (item.doc.get("pending"), item.site_id),
                )
            else:
                conn.execute(
                    "UPDATE sites SET status = %s, status_at = now() WHERE site_id = %s",
                    (Jsonb(item.doc), item.site_id),
                )
        notify(conn, sorted(out.incidents), sorted(out.sites))
    return out


def notify(
    conn: psycopg.Connection[Any], incident_ids: Sequence[int], sites: Sequence[str] = ()
) -> None:
    """Tell the desk (at commit) which incidents and sites changed."""
    note: dict[str, Any] = (
        {"incidents": list(incident_ids), "sites": list(sites)[:MAX_NOTIFIED_IDS]}
        if len(incident_ids) <= MAX_NOTIFIED_IDS
        else {"all": True}
    )
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, json.dumps(note)))


def _event(conn: psycopg.Connection[Any], item: Incoming, out: Written) -> None:
    d = item.doc
    details = d.get("details") or {}
    row = conn.execute(
        "INSERT INTO events (site_id, seq, kind, class, source, utc, details, text_zh, text_en)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (site_id, seq) DO NOTHING RETURNING seq",
        (
            item.site_id,
            d["seq"],
            d["kind"],
            d["class"],
            d["source"],
            d["utc"],
            Jsonb(details),
            d.get("text_zh"),
            d.get("text"),
        ),
    ).fetchone()
    if row is None:
        out.duplicates += 1
        return
    out.stored += 1
    conn.execute(
        "UPDATE sites SET max_seq = greatest(max_seq, %s), stored = stored + 1 WHERE site_id = %s",
        (d["seq"], item.site_id),
    )
    if d["kind"] == "commissioning.signed":
        _name_site(conn, item.site_id, details)
    rule = rule_for(d["kind"], d["source"], details)
    if rule is None:
        return
    if rule.action == "open":
        _open(conn, item, rule, out)
    else:
        for (incident_id,) in conn.execute(
            "UPDATE incidents SET cleared_at = clock_timestamp(), updated_at = clock_timestamp()"
            " WHERE site_id = %s AND category = %s AND source = %s AND state <> 'closed'"
            " RETURNING id",
            (item.site_id, rule.category, rule.source),
        ).fetchall():
            log_step(conn, incident_id, "kitchen", "cleared", _text(d), d["seq"])
            out.incidents.add(incident_id)


def _name_site(conn: psycopg.Connection[Any], site_id: str, details: dict[str, Any]) -> None:
    """The kitchen's name and address as its technician signed them at commissioning."""
    record = details.get("record")
    site = record.get("site") if isinstance(record, dict) else None
    if isinstance(site, dict):
        conn.execute(
            "UPDATE sites SET name = coalesce(%s, name), address = coalesce(%s, address)"
            " WHERE site_id = %s",
            (_short(site.get("name")), _short(site.get("address")), site_id),
        )


def _short(value: object, limit: int = 200) -> str | None:
    return str(value)[:limit] if isinstance(value, str) and value else None


def _text(d: dict[str, Any]) -> str:
    return str(d.get("text_zh") or d.get("text") or f"{d['kind']} {d['source']}")


def _open(conn: psycopg.Connection[Any], item: Incoming, rule: Rule, out: Written) -> None:
    d = item.doc
    title_zh = str(d.get("text_zh") or f"{d['kind']}：{d['source']}")
    title_en = str(d.get("text") or f"{d['kind']}: {d['source']}")
    row = conn.execute(
        "INSERT INTO incidents (site_id, category, source, severity, title_zh, title_en,"
        " opened_seq, raised_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (site_id, category, source) WHERE state <> 'closed' DO UPDATE SET"
        " repeats = incidents.repeats + 1, cleared_at = NULL, updated_at = clock_timestamp(),"
        " title_zh = CASE WHEN excluded.severity > incidents.severity"
        "   THEN excluded.title_zh ELSE incidents.title_zh END,"
        " title_en = CASE WHEN excluded.severity > incidents.severity"
        "   THEN excluded.title_en ELSE incidents.title_en END,"
        " severity = greatest(incidents.severity, excluded.severity)"
        " RETURNING id, (xmax = 0) AS inserted",
        (
            item.site_id,
            rule.category,
            rule.source,
            rule.severity,
            title_zh,
            title_en,
            d["seq"],
            d["utc"],
        ),
    ).fetchone()
    assert row is not None
    incident_id, inserted = row
    log_step(conn, incident_id, "kitchen", "opened" if inserted else "repeat", title_zh, d["seq"])
    out.incidents.add(incident_id)


def log_step(
    conn: psycopg.Connection[Any],
    incident_id: int,
    actor: str,
    action: str,
    note: str,
    seq: int | None,
) -> None:
    """One step on an incident's timeline (in the caller's transaction): who, what, a note."""
    conn.execute(
        "INSERT INTO incident_log (incident_id, actor, action, note, seq)"
        " VALUES (%s, %s, %s, %s, %s)",
        (incident_id, actor, action, note, seq),
    )
