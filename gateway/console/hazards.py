"""The hazard ledger (city plan 四(一)2–3): every hazard found at an inspection is registered
with a responsible person and a deadline and tracked until it is closed ("动态清零"); closing
one records who verified it.

Rows live in ``console.db`` (``hazards``). Deadlines are local calendar dates (YYYY-MM-DD): a
hazard is overdue from the day after its deadline. Overdue hazards are shown at login and in
``status``, and reported upstream once each (``hazard.overdue``): whoever notices first (the
console at a login, or the controller's hazard watch) claims the report in one transaction, so
it is sent once.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.console.store import ConsoleStore

MAX_TEXT = 200
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_DEADLINE_DAYS = 366


class HazardError(Exception):
    """A ledger change that is refused (unknown id, already closed, bad deadline, bad text)."""


@dataclass(frozen=True, slots=True)
class Hazard:
    id: int
    opened_utc: float
    opened_by: str
    record_id: str | None
    item: str
    text: str
    remark: str
    responsible: str
    deadline: str
    status: str  # "open" or "closed"
    closed_utc: float | None
    verified_by: str | None
    close_remark: str | None

    @property
    def label(self) -> str:
        return f"H-{self.id}"

    def overdue(self, today: dt.date) -> bool:
        return self.status == "open" and dt.date.fromisoformat(self.deadline) < today


def hazard_id(text: str) -> int:
    """``H-12`` or ``12`` as 12; HazardError otherwise."""
    match = re.fullmatch(r"(?:[Hh]-?)?(\d{1,9})", text.strip())
    if match is None:
        raise HazardError(f"hazard id {text[:40]!r}: must look like H-12")
    return int(match.group(1))


def parse_deadline(text: str, today: dt.date) -> str:
    """A deadline typed by the technician: ``YYYY-MM-DD`` or a number of days from today
    (``7``, ``7d``). Must be from today to a year ahead. Returns the ISO date."""
    value = text.strip().lower()
    days_match = re.fullmatch(r"(\d{1,3})\s*d?", value)
    if days_match:
        days = int(days_match.group(1))
        if not 0 <= days <= MAX_DEADLINE_DAYS:
            raise HazardError(f"deadline {text!r}: 0 to {MAX_DEADLINE_DAYS} days from today")
        return (today + dt.timedelta(days=days)).isoformat()
    if not DATE_RE.match(value):
        raise HazardError(f"deadline {text[:40]!r}: a date YYYY-MM-DD or a number of days")
    try:
        date = dt.date.fromisoformat(value)
    except ValueError as e:
        raise HazardError(f"deadline {text!r}: not a calendar date ({e})") from e
    if not today <= date <= today + dt.timedelta(days=MAX_DEADLINE_DAYS):
        raise HazardError(
            f"deadline {text!r}: from today ({today.isoformat()}) to "
            f"{(today + dt.timedelta(days=MAX_DEADLINE_DAYS)).isoformat()}"
        )
    return date.isoformat()


def clean_text(text: str, what: str, *, required: bool, limit: int = MAX_TEXT) -> str:
    """One line of printable text, at most ``limit`` characters; HazardError otherwise."""
    value = " ".join(text.split())
    if any(not ch.isprintable() for ch in value):
        raise HazardError(f"{what}: only printable characters")
    if required and not value:
        raise HazardError(f"{what}: must not be empty")
    if len(value) > limit:
        raise HazardError(f"{what}: at most {limit} characters (got {len(value)})")
    return value


def local_today() -> dt.date:
    return dt.date.fromtimestamp(time.time())


_COLUMNS = (
    "id, opened_utc, opened_by, record_id, item, text, remark, responsible, deadline, status, "
    "closed_utc, verified_by, close_remark"
)


def _row(r: tuple[object, ...]) -> Hazard:
    return Hazard(
        id=int(str(r[0])),
        opened_utc=float(str(r[1])),
        opened_by=str(r[2]),
        record_id=None if r[3] is None else str(r[3]),
        item=str(r[4]),
        text=str(r[5]),
        remark=str(r[6]),
        responsible=str(r[7]),
        deadline=str(r[8]),
        status=str(r[9]),
        closed_utc=None if r[10] is None else float(str(r[10])),
        verified_by=None if r[11] is None else str(r[11]),
        close_remark=None if r[12] is None else str(r[12]),
    )


def insert_hazard(
    conn: sqlite3.Connection,
    *,
    utc: float,
    item: str,
    text: str,
    remark: str,
    responsible: str,
    deadline: str,
    opened_by: str,
    record_id: str | None,
) -> int:
    """Insert one open hazard inside the caller's transaction; its id. HazardError for bad
    text or deadline (then the caller's transaction is rolled back: nothing half-stored)."""
    if not DATE_RE.match(deadline):
        raise HazardError(f"deadline {deadline!r}: must be YYYY-MM-DD")
    dt.date.fromisoformat(deadline)
    cur = conn.execute(
        "INSERT INTO hazards (opened_utc, opened_by, record_id, item, text, remark, "
        "responsible, deadline, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open')",
        (
            utc,
            opened_by,
            record_id,
            item,
            clean_text(text, "hazard text", required=True, limit=400),
            clean_text(remark, "remark", required=True),
            clean_text(responsible, "responsible person", required=True),
            deadline,
        ),
    )
    return int(cur.lastrowid or 0)


class HazardLedger:
    """The ledger in ``console.db``. ``today`` gives the local date (for deadlines)."""

    def __init__(
        self,
        store: ConsoleStore,
        *,
        wall: Callable[[], float] = time.time,
        today: Callable[[], dt.date] = local_today,
    ) -> None:
        self.store = store
        self.wall = wall
        self.today = today

    def open_hazard(
        self,
        *,
        item: str,
        text: str,
        remark: str,
        responsible: str,
        deadline: str,
        opened_by: str,
        record_id: str | None,
    ) -> Hazard:
        """Register one hazard (status open). ``deadline`` is an ISO date."""
        with self.store.transaction() as conn:
            new_id = insert_hazard(
                conn,
                utc=self.wall(),
                item=item,
                text=text,
                remark=remark,
                responsible=responsible,
                deadline=deadline,
                opened_by=opened_by,
                record_id=record_id,
            )
        return self.get(new_id)

    def get(self, hid: int) -> Hazard:
        row = self.store.conn.execute(
            f"SELECT {_COLUMNS} FROM hazards WHERE id = ?", (hid,)
        ).fetchone()
        if row is None:
            raise HazardError(f"no hazard H-{hid}")
        return _row(row)

    def hazards(self, *, include_closed: bool = False) -> list[Hazard]:
        """Open hazards by deadline (then id); with ``include_closed`` every hazard."""
        where = "" if include_closed else "WHERE status = 'open'"
        rows = self.store.conn.execute(
            f"SELECT {_COLUMNS} FROM hazards {where} ORDER BY status DESC, deadline, id"
        ).fetchall()
        return [_row(r) for r in rows]

    def overdue(self) -> list[Hazard]:
        today = self.today()
        return [h for h in self.hazards() if h.overdue(today)]

    def close(self, hid: int, verified_by: str, remark: str) -> Hazard:
        """Close an open hazard: ``verified_by`` checked on site that it is fixed."""
        note = clean_text(remark, "remark", required=True)
        with self.store.transaction() as conn:
            row = conn.execute("SELECT status FROM hazards WHERE id = ?", (hid,)).fetchone()
            if row is None:
                raise HazardError(f"no hazard H-{hid}")
            if row[0] != "open":
                raise HazardError(f"hazard H-{hid} is already closed")
            conn.execute(
                "UPDATE hazards SET status = 'closed', closed_utc = ?, verified_by = ?, "
                "close_remark = ? WHERE id = ?",
                (self.wall(), verified_by, note, hid),
            )
        return self.get(hid)

    def claim_overdue_reports(self) -> list[Hazard]:
        """Overdue hazards not yet reported upstream, marked reported now (in one
        transaction, so two processes never both report one)."""
        today = self.today()
        claimed: list[Hazard] = []
        with self.store.transaction() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM hazards WHERE status = 'open' "
                "AND overdue_reported_utc IS NULL"
            ).fetchall()
            for r in rows:
                hazard = _row(r)
                if hazard.overdue(today):
                    conn.execute(
                        "UPDATE hazards SET overdue_reported_utc = ? WHERE id = ?",
                        (self.wall(), hazard.id),
                    )
                    claimed.append(hazard)
        return claimed


def overdue_details(h: Hazard, today: dt.date) -> dict[str, object]:
    """The details of a ``hazard.overdue`` event."""
    return {
        "hazard": h.label,
        "item": h.item,
        "text": h.text,
        "responsible": h.responsible,
        "deadline": h.deadline,
        "days_overdue": (today - dt.date.fromisoformat(h.deadline)).days,
    }
