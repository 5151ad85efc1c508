"""What an officer does to an incident: acknowledge, dispatch, resolve, close, and the first
view. Each is signed with the operator's name and a note, written to the incident's timeline
and to the audit table in one transaction, and pushed to every open page.

The desk acts on its own records only. Nothing here (nor anywhere in city/) publishes to a
kitchen: a valve is opened only by a person at the kitchen, after every detector is normal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from city.desk.auth import Operator, audit
from city.store import log_step, notify

MAX_NOTE = 2000


@dataclass(frozen=True, slots=True)
class Action:
    """``to`` is the state after it; ``allowed_from`` the states it may follow."""

    name: str
    to: str
    allowed_from: tuple[str, ...]
    column: str  # <column>_at / <column>_by record when and who
    note_required: bool


ACTIONS = {
    a.name: a
    for a in (
        Action("acknowledge", "acknowledged", ("new",), "acked", False),
        Action("dispatch", "dispatched", ("new", "acknowledged"), "dispatched", True),
        Action("resolve", "resolved", ("new", "acknowledged", "dispatched"), "resolved", True),
        Action("close", "closed", ("acknowledged", "dispatched", "resolved"), "closed", True),
    )
}


class ActionRefused(ValueError):
    """Not allowed now (wrong state, another district, no note); the text says why."""


def act(
    conn: psycopg.Connection[Any],
    operator: Operator,
    incident_id: int,
    name: str,
    note: str,
    peer: str,
) -> str:
    """Apply action ``name``; the incident's new state. Raises ActionRefused."""
    action = ACTIONS.get(name)
    if action is None:
        raise ActionRefused(f"unknown action {name!r}; one of {sorted(ACTIONS)}")
    note = note.strip()
    if len(note) > MAX_NOTE:
        raise ActionRefused(f"note: {len(note)} characters, at most {MAX_NOTE}")
    if action.note_required and not note:
        raise ActionRefused(f"{name}: a note is required (what was done, by whom)")
    with conn.transaction():
        row = conn.execute(
            "SELECT i.state, s.district_id FROM incidents i JOIN sites s USING (site_id)"
            " WHERE i.id = %s FOR UPDATE OF i",
            (incident_id,),
        ).fetchone()
        if row is None or (operator.scope is not None and row[1] != operator.scope):
            raise ActionRefused(f"incident {incident_id}: not found in your district")
        state = str(row[0])
        if state not in action.allowed_from:
            raise ActionRefused(
                f"incident {incident_id} is {state}: "
                f"{name} follows {' or '.join(action.allowed_from)}"
            )
        # Dispatching or resolving an incident nobody acknowledged also acknowledges it.
        ack = (
            ", acked_at = coalesce(acked_at, clock_timestamp()),"
            " acked_by = coalesce(acked_by, %(who)s)"
            if action.column != "acked"
            else ""
        )
        conn.execute(
            f"UPDATE incidents SET state = %(to)s, {action.column}_at = clock_timestamp(),"
            f" {action.column}_by = %(who)s, updated_at = clock_timestamp(){ack}"
            " WHERE id = %(id)s",
            {"to": action.to, "who": operator.name, "id": incident_id},
        )
        log_step(conn, incident_id, operator.name, action.to, note, None)
        audit(conn, operator.name, f"incident.{name}", str(incident_id), {"note": note}, peer)
        notify(conn, [incident_id])
    return action.to


def mark_viewed(
    conn: psycopg.Connection[Any], operator: Operator, incident_ids: list[int], peer: str
) -> list[int]:
    """Record the first time each incident was on an officer's screen (time to first view).
    Later views change nothing. The ids newly marked."""
    with conn.transaction():
        rows = conn.execute(
            "UPDATE incidents i SET first_viewed_at = clock_timestamp(), first_viewed_by = %s,"
            " updated_at = clock_timestamp() FROM sites s"
            " WHERE s.site_id = i.site_id AND i.id = ANY(%s) AND i.first_viewed_at IS NULL"
            " AND (%s::text IS NULL OR s.district_id = %s) RETURNING i.id",
            (operator.name, incident_ids, operator.scope, operator.scope),
        ).fetchall()
        marked = [int(r[0]) for r in rows]
        for incident_id in marked:
            log_step(conn, incident_id, operator.name, "viewed", "", None)
        if marked:
            audit(conn, operator.name, "incident.viewed", ",".join(map(str, marked)), {}, peer)
            notify(conn, marked)
    return marked
