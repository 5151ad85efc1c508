"""What the desk reads: open incidents, a site's page, its timeline and the gaps in its
sequence. Plain SQL, scoped by district where an officer asks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row


@dataclass(frozen=True, slots=True)
class Gap:
    """Events ``first``..``last`` of ``site_id`` have not arrived (the kitchen still holds them
    in its outbox, or they were lost on the way)."""

    site_id: str
    first: int
    last: int


def gaps(conn: psycopg.Connection[Any], site_ids: Sequence[str]) -> list[Gap]:
    found = conn.execute(
        "SELECT site_id, seq + 1, next - 1 FROM ("
        "  SELECT site_id, seq, lead(seq) OVER (PARTITION BY site_id ORDER BY seq) AS next"
        "  FROM events WHERE site_id = ANY(%s)) t WHERE next > seq + 1"
        " UNION ALL"
        " SELECT site_id, 1, min(seq) - 1 FROM events WHERE site_id = ANY(%s)"
        "  GROUP BY site_id HAVING min(seq) > 1"
        " ORDER BY 1, 2",
        (list(site_ids), list(site_ids)),
    ).fetchall()
    return [Gap(str(s), int(a), int(b)) for s, a, b in found]


INCIDENT_COLUMNS = (
    "i.id, i.site_id, s.district_id, d.name AS district, s.name AS site_name, i.category,"
    " i.source, i.severity, i.title_zh, i.title_en, i.state, i.opened_seq, i.raised_at,"
    " i.stored_at, i.cleared_at, i.repeats, i.first_viewed_at, i.first_viewed_by, i.acked_at,"
    " i.acked_by, i.dispatched_at, i.dispatched_by, i.resolved_at, i.resolved_by, i.closed_at,"
    " i.closed_by, i.escalation, i.escalated_at, i.updated_at,"
    " extract(epoch FROM i.first_viewed_at - i.stored_at) AS to_view_s,"
    " extract(epoch FROM i.acked_at - i.stored_at) AS to_ack_s"
)
INCIDENT_FROM = (
    " FROM incidents i JOIN sites s USING (site_id) LEFT JOIN districts d ON d.id = s.district_id"
)


def open_incidents(
    conn: psycopg.Connection[Any],
    district: str | None,
    limit: int = 5000,
    site_id: str | None = None,
) -> list[dict[str, Any]]:
    """Open incidents (not closed), most severe and newest first; ``district`` None = all,
    ``site_id`` one site's only."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {INCIDENT_COLUMNS}{INCIDENT_FROM}"
            " WHERE i.state <> 'closed' AND (%s::text IS NULL OR s.district_id = %s)"
            " AND (%s::text IS NULL OR i.site_id = %s)"
            " ORDER BY i.severity DESC, i.stored_at DESC LIMIT %s",
            (district, district, site_id, site_id, limit),
        ).fetchall()


def incidents_by_id(
    conn: psycopg.Connection[Any], ids: Sequence[int], district: str | None
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {INCIDENT_COLUMNS}{INCIDENT_FROM}"
            " WHERE i.id = ANY(%s) AND (%s::text IS NULL OR s.district_id = %s)",
            (list(ids), district, district),
        ).fetchall()


def incident_log(conn: psycopg.Connection[Any], incident_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT at, actor, action, note, seq FROM incident_log WHERE incident_id = %s"
            " ORDER BY id",
            (incident_id,),
        ).fetchall()


def site(
    conn: psycopg.Connection[Any], site_id: str, district: str | None
) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT s.*, d.name AS district, s.max_seq - s.stored AS missing"
            " FROM sites s LEFT JOIN districts d ON d.id = s.district_id"
            " WHERE s.site_id = %s AND (%s::text IS NULL OR s.district_id = %s)",
            (site_id, district, district),
        ).fetchone()


def timeline(conn: psycopg.Connection[Any], site_id: str, limit: int = 200) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT seq, kind, class, source, utc, details, text_zh, text_en, stored_at"
            " FROM events WHERE site_id = %s ORDER BY seq DESC LIMIT %s",
            (site_id, limit),
        ).fetchall()
