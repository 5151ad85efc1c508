"""The durable outbox: every stored event waits here until every uplink channel has it
acknowledged end to end by its receiver.

One SQLite file beside the event log (``outbox.db``), opened with ``journal_mode=WAL`` and
``synchronous=FULL`` for the same reason as the event log: an alarm handed to the outbox just
before the power is cut must still be forwarded after the restart. ``add`` is durable when it
returns; ``ack`` too (an ack lost to a power cut would only cause a re-send, which receivers
de-duplicate by event id).

Delivery policy (what is kept, in what order, and when something is dropped):

* Every event is queued for every channel and kept until **every** channel has acknowledged it;
  then its rows are deleted. Alarms are never dropped.
* Order is kept per channel, with alarm-class events (``alarm.*``, ``fault.*``, ``valve.*``,
  ``operator.reset*`` ..., ``gateway.core.kinds``) ahead of the others: after an outage the brigade
  hears about the gas before it hears that the controller started. Within a class, events go
  in their event-log order (``seq``).
* Status snapshots and heartbeats are never queued: a channel sends the latest status when it
  can (coalesced), not a backlog of stale ones.
* Bounds: ``max_rows`` (default 100 000) and ``max_age_s`` (default none) only ever drop rows
  of kinds that ``gateway.core.kinds.may_drop``, oldest first, each drop logged
  (``outbox.dropped``). Alarm-class rows and operator actions are never dropped; the file grows
  instead (a kitchen raises a handful of alarms a year).
* Before it gets there, ``fill()`` warns: at ``FILL_WARN`` of ``max_rows``, or when the card
  has less than ``CARD_RESERVE_BYTES`` free. The uplinks process records that as
  ``uplink.outbox_filling`` and the status shows it as a fault (a centre that stopped
  acknowledging, a site with no receiving centre left in ``delivery = "centre"``).
* If a write fails (disk full, I/O error), the events stay in memory in order and are written
  before anything newer on the next ``add``; the event log still has them, and ``catch_up``
  recovers them after a restart.

Start-up (the order matters, see ``catch_up``): open the outbox, ``catch_up(event_reader)`` to
take in events that reached the event log but not the outbox (a SIGKILL between the two
commits), then subscribe ``add`` to the recorder.

Thread safety: one connection guarded by a lock; ``add`` runs on the recorder thread, ``peek``
and ``ack`` on channel threads, ``pending`` on the status thread. None of them is ever called by
the safety thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.core.kinds import droppable_sql, is_alarm_class
from gateway.log import error, log, warn
from gateway.store.events import EventReader, StoredEvent, details_json
from gateway.store.sqlite import open_durable

SCHEMA_VERSION = 1
DEFAULT_MAX_ROWS = 100_000
MIN_MAX_ROWS = 1_000
MAX_MAX_ROWS = 10_000_000
MAX_PEEK = 10_000
# Events that stay in memory while the disk refuses writes; beyond this they are left to
# ``catch_up`` from the event log at the next start (the high-water mark does not advance).
MAX_BACKLOG = 100_000
# Age pruning runs at most this often (it scans the table).
PRUNE_EVERY_S = 60.0
# A fresh outbox (none on disk) forwards the events of this window from the event log; older
# history was never promised to a receiver that did not exist yet.
FRESH_WINDOW_S = 24 * 3600.0
CATCH_UP_PAGE = 1000
# fill(): warn at this share of max_rows (before anything is dropped), clear below FILL_CLEAR;
# warn too while the card has less than CARD_RESERVE_BYTES free.
FILL_WARN = 0.8
FILL_CLEAR = 0.7
CARD_RESERVE_BYTES = 64 * 1024 * 1024

# What goes first and what is never dropped: gateway.core.kinds, the one home of both lists.
# The bounds below drop only rows of kinds that ``may_drop``.
_KEPT_SQL, _KEPT_ARGS = droppable_sql()

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS items (
        seq INTEGER PRIMARY KEY,
        utc REAL NOT NULL,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        details TEXT NOT NULL,
        prio INTEGER NOT NULL,
        added REAL NOT NULL
    )""",
    # prio 0 = alarm class, 1 = others: ORDER BY prio, seq is "alarms first, then in order".
    """CREATE TABLE IF NOT EXISTS pending (
        channel TEXT NOT NULL,
        prio INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (channel, prio, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS pending_seq ON pending (seq)",
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    # When each alarm-class event was raised and when each channel's receiver acknowledged
    # it (written in the acknowledging transaction, kept DELIVERY_KEEP_S): the delivery-time
    # statistics (gateway.uplinks.delivery).
    """CREATE TABLE IF NOT EXISTS deliveries (
        channel TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        raised_utc REAL NOT NULL,
        acked_utc REAL NOT NULL,
        PRIMARY KEY (channel, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS deliveries_acked ON deliveries (acked_utc)",
    # Seconds each channel's link was up, per hour (hours since the epoch): its availability.
    """CREATE TABLE IF NOT EXISTS uptime (
        channel TEXT NOT NULL,
        hour INTEGER NOT NULL,
        up_s REAL NOT NULL,
        total_s REAL NOT NULL,
        PRIMARY KEY (channel, hour)
    ) WITHOUT ROWID""",
)
DELIVERY_KEEP_S = 8 * 86400.0  # a little over the 7-day statistics


@dataclass(frozen=True, slots=True)
class OutboxFill:
    """How full the outbox is: events held, the bound, its bytes on the card, the card's free
    bytes, and what is wrong (``warning``, None while it is fine)."""

    rows: int
    max_rows: int
    file_bytes: int
    card_free_bytes: int | None
    warning: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def missing_seqs(after: int, seqs: Sequence[int]) -> list[tuple[int, int]]:
    """The holes (first, last) in ``seqs`` (ascending) following ``after`` (0: no start)."""
    holes = []
    prev = after
    for seq in seqs:
        if prev and seq > prev + 1:
            holes.append((prev + 1, seq - 1))
        prev = seq
    return holes


class OutboxError(Exception):
    """The outbox file cannot be used: corrupt, from a newer gasguard, or a disk error. The
    message names the file."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One event waiting for a channel. ``event_id`` is unique and stable across restarts:
    ``f"{site_id}-{seq}"``; receivers de-duplicate by it."""

    seq: int  # the event's seq in the event log (per-site sequence number)
    utc: float
    kind: str  # alarm.raised, fault.raised, valve.closed, operator.reset, ...
    source: str  # detector, valve or "site"
    details: dict[str, Any]
    event_id: str

    @property
    def alarm_class(self) -> bool:
        return is_alarm_class(self.kind)


def _check_channels(channels: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for name in channels:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"outbox channel {name!r}: must be a non-empty string")
        if name in out:
            raise ValueError(f"outbox channel {name!r}: listed twice")
        out.append(name)
    return tuple(out)


class Outbox:
    """Durable (SQLite WAL, synchronous=FULL, beside the event log) per-channel delivery queue.

    Policy: every stored event is kept until every channel has it acknowledged end to end
    (alarms are never dropped); once every channel acked, its rows are deleted. Status snapshots
    and heartbeats are not queued (channels send the latest status, coalesced). Order kept per
    channel; alarm-class events before others. ``max_rows`` / ``max_age_s`` only ever drop
    non-alarm rows, oldest first, never alarm-class ones.

    ``channels`` are the channel names (``"mqtt"``, ``"gb26875"``, ``"sms"``). A channel that
    was not in the file before gets every event still waiting; a channel no longer configured
    has its rows removed (logged). Raises OutboxError for a corrupt or newer file, ValueError
    for bad arguments.
    """

    def __init__(
        self,
        path: Path,
        site_id: str,
        channels: Sequence[str],
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_age_s: float | None = None,
        busy_timeout_s: float = 5.0,
    ) -> None:
        if not isinstance(site_id, str) or not site_id.strip():
            raise ValueError(f"outbox site id {site_id!r}: must be a non-empty string")
        if (
            isinstance(max_rows, bool)
            or not isinstance(max_rows, int)
            or not MIN_MAX_ROWS <= max_rows <= MAX_MAX_ROWS
        ):
            raise ValueError(
                f"outbox max_rows {max_rows!r}: must be a whole number from {MIN_MAX_ROWS} "
                f"to {MAX_MAX_ROWS}"
            )
        if max_age_s is not None and (
            isinstance(max_age_s, bool)
            or not isinstance(max_age_s, int | float)
            or not 60.0 <= max_age_s <= 10 * 365 * 86400.0
        ):
            raise ValueError(
                f"outbox max_age_s {max_age_s!r}: must be None or seconds from 60 to 10 years"
            )
        self.path = Path(path)
        self.site_id = site_id
        self.channels = _check_channels(channels)
        self.max_rows = max_rows
        self.max_age_s = None if max_age_s is None else float(max_age_s)
        self._lock = threading.RLock()
        self._watchers: list[Callable[[], None]] = []
        self._backlog: list[StoredEvent] = []
        self._last_prune = 0.0
        self._last_delivery_prune = 0.0
        self._filling = False  # fill() warned and has not cleared yet (hysteresis)
        self.last_error: str | None = None
        self.dropped = 0
        self.gaps_found: list[tuple[int, int]] = []  # holes catch_up met in the event log
        self.fresh = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutboxError(f"outbox {self.path}: cannot create its directory: {e}") from e
        # check_same_thread=False: several threads use it, always under self._lock.
        self._conn, _version = open_durable(
            self.path,
            "outbox",
            SCHEMA_VERSION,
            OutboxError,
            busy_timeout_s=busy_timeout_s,
            check_same_thread=False,
        )
        try:
            self._prepare()
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise OutboxError(
                f"outbox {self.path} is corrupt or not a SQLite database: {e}; move it aside "
                "and restart (the event log still has every event; a new outbox catches up)"
            ) from e
        except BaseException:
            self._conn.close()
            raise
        # Seqs at or below this were taken in before this process opened the file. Events above
        # it that a racing catch_up finds already acknowledged are not re-queued.
        self._opened_high_water = self.high_water
        self._done_since_open: set[int] | None = set()
        self._rows = self._count()

    # -- set-up -----------------------------------------------------------------------------------

    def _prepare(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in _SCHEMA:
                conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            old_site = self._meta("site_id")
            if old_site is not None and old_site != self.site_id:
                # Waiting events get the new id prefix; receivers keyed on the old one will see
                # them as new (a duplicate at worst, never a loss).
                warn("outbox.site_changed", path=self.path, old=old_site, new=self.site_id)
            self._set_meta("site_id", self.site_id)
            known_text = self._meta("channels")
            known: list[str] = json.loads(known_text) if known_text else []
            for gone in [c for c in known if c not in self.channels]:
                n = conn.execute("DELETE FROM pending WHERE channel = ?", (gone,)).rowcount
                warn("outbox.channel_removed", path=self.path, channel=gone, dropped=n)
            for new in [c for c in self.channels if c not in known]:
                n = conn.execute(
                    "INSERT OR IGNORE INTO pending (channel, prio, seq) "
                    "SELECT ?, prio, seq FROM items",
                    (new,),
                ).rowcount
                if known_text is not None:
                    log("outbox.channel_added", path=self.path, channel=new, waiting=n)
            self._set_meta("channels", json.dumps(list(self.channels)))
            conn.execute("DELETE FROM items WHERE seq NOT IN (SELECT seq FROM pending)")
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def _error(self, e: sqlite3.Error, doing: str) -> OutboxError:
        return OutboxError(f"outbox {self.path}: {doing} failed: {e}")

    # -- public state -----------------------------------------------------------------------------

    @property
    def high_water(self) -> int:
        """The highest event seq ever taken in (0 for a new outbox)."""
        with self._lock:
            try:
                value = self._meta("high_water")
            except sqlite3.Error as e:
                raise self._error(e, "reading the high-water mark") from e
        return int(value) if value else 0

    @property
    def failing(self) -> bool:
        """True while events are waiting in memory because the last write failed."""
        return bool(self._backlog)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every ``add`` that stored something (channels use it to
        wake their thread at once instead of polling). It runs on the recorder thread: it must
        only set a flag or an ``threading.Event``."""
        self._watchers.append(callback)

    # -- taking events in ------------------------------------------------------------------------

    def add(self, event: StoredEvent) -> None:
        """Queue ``event`` for every channel; durable on return (recorder thread).

        Events must come in seq order (the recorder's order); one at or below the high-water
        mark was already taken in and is ignored. Never raises for a disk error: the event stays
        in memory, in order, and is written before anything newer (``failing`` is True and the
        error is logged)."""
        self.add_many([event])

    def add_many(self, events: Iterable[StoredEvent]) -> None:
        """``add`` for several events in one transaction (one fsync)."""
        with self._lock:
            self._backlog.extend(events)
            if not self._backlog:
                return
            try:
                self._write(self._backlog, advance=True)
            except (OutboxError, sqlite3.Error) as e:
                self.last_error = str(e)
                error("outbox.write_failed", path=self.path, waiting=len(self._backlog), error=e)
                if len(self._backlog) > MAX_BACKLOG:
                    # Still in the event log; the high-water mark did not move past them, so
                    # catch_up at the next start takes them in.
                    error(
                        "outbox.backlog_abandoned",
                        path=self.path,
                        events=len(self._backlog),
                        first_seq=self._backlog[0].seq,
                    )
                    self._backlog.clear()
                return
            self._backlog.clear()
            self.last_error = None
        self._notify()

    def _notify(self) -> None:
        for callback in self._watchers:
            try:
                callback()
            except Exception as e:  # a channel's bug must not stop the recorder
                error("outbox.watcher_failed", watcher=callback, error=e)

    def _write(self, events: Sequence[StoredEvent], *, advance: bool) -> int:
        """Insert ``events`` for every channel in one transaction; returns how many were new.
        With ``advance``, events at or below the high-water mark are skipped (already taken in)
        and the mark moves to the last seq."""
        conn = self._conn
        now = time.time()
        added = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            high = int(self._meta("high_water") or 0)
            for event in events:
                seq = int(event.seq)
                if advance and seq <= high:
                    continue
                prio = 0 if is_alarm_class(event.kind) else 1
                cur = conn.execute(
                    "INSERT OR IGNORE INTO items (seq, utc, kind, source, details, prio, added) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        seq,
                        float(event.utc),
                        str(event.kind),
                        str(event.source),
                        details_json(event.details),
                        prio,
                        now,
                    ),
                )
                if cur.rowcount:
                    added += 1
                    conn.executemany(
                        "INSERT OR IGNORE INTO pending (channel, prio, seq) VALUES (?, ?, ?)",
                        [(c, prio, seq) for c in self.channels],
                    )
                high = max(high, seq)
            self._set_meta("high_water", str(high))
            dropped = self._prune_locked(now, added)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._rows += added - dropped
        if not self.channels:
            # Nothing will ever ack them: keep the mark, not the rows.
            conn.execute("DELETE FROM items")
            self._rows = 0
        return added

    def _prune_locked(self, now: float, adding: int) -> int:
        """Inside a transaction: drop non-alarm rows beyond ``max_rows`` or ``max_age_s``."""
        conn = self._conn
        dropped = 0
        over = self._rows + adding - self.max_rows
        if over > 0:
            seqs = [
                int(r[0])
                for r in conn.execute(
                    f"SELECT seq FROM items WHERE prio = 1 AND {_KEPT_SQL} ORDER BY seq LIMIT ?",
                    (*_KEPT_ARGS, over),
                ).fetchall()
            ]
            dropped += self._drop(seqs, "max_rows")
        if self.max_age_s is not None and now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            seqs = [
                int(r[0])
                for r in conn.execute(
                    f"SELECT seq FROM items WHERE prio = 1 AND {_KEPT_SQL} AND added < ? "
                    "ORDER BY seq",
                    (*_KEPT_ARGS, now - self.max_age_s),
                ).fetchall()
            ]
            dropped += self._drop(seqs, "max_age_s")
        return dropped

    def _drop(self, seqs: list[int], why: str) -> int:
        if not seqs:
            return 0
        conn = self._conn
        conn.executemany("DELETE FROM pending WHERE seq = ?", [(s,) for s in seqs])
        conn.executemany("DELETE FROM items WHERE seq = ?", [(s,) for s in seqs])
        self.dropped += len(seqs)
        warn(
            "outbox.dropped",
            path=self.path,
            reason=why,
            events=len(seqs),
            first_seq=seqs[0],
            last_seq=seqs[-1],
            note="non-alarm events only",
        )
        return len(seqs)

    def catch_up(self, reader: EventReader) -> int:
        """Take in events that reached the event log but not the outbox (the process died
        between the two commits, or the outbox file is new). Returns how many were queued.

        Call it once at start-up, before or right after subscribing ``add`` to the recorder:
        it reads the event log from the high-water mark this outbox had when it was opened, and
        skips events already here or already acknowledged since. A fresh outbox takes the
        events of the last 24 h. An event log whose numbers went backwards (a new log file) is
        logged and followed from its start."""
        with self._lock:
            start = self._opened_high_water
            try:
                last = reader.last_seq()
            except Exception as e:
                raise OutboxError(f"outbox {self.path}: cannot read the event log: {e}") from e
            if last < start:
                error(
                    "outbox.event_log_replaced",
                    path=self.path,
                    outbox_high_water=start,
                    event_log_last_seq=last,
                    note="event ids restart; receivers may take new events for duplicates",
                )
                start = 0
                self._opened_high_water = 0
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._set_meta("high_water", "0")
                    self._conn.execute("COMMIT")
                except sqlite3.Error as e:
                    self._rollback()
                    raise self._error(e, "resetting the high-water mark") from e
            done = self._done_since_open or set()
            self.gaps_found = []
            cutoff = time.time() - FRESH_WINDOW_S if self.fresh else None
            total = 0
            cursor = start
            while True:
                try:
                    page = reader.since(cursor, CATCH_UP_PAGE)
                except Exception as e:
                    raise OutboxError(f"outbox {self.path}: cannot read the event log: {e}") from e
                if not page:
                    break
                self.gaps_found += missing_seqs(cursor, [e.seq for e in page])
                cursor = page[-1].seq
                todo = [
                    e for e in page if e.seq not in done and (cutoff is None or e.utc >= cutoff)
                ]
                try:
                    total += self._write(todo, advance=False)
                except sqlite3.Error as e:
                    raise self._error(e, "catching up") from e
                if len(page) < CATCH_UP_PAGE:
                    break
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                high = max(int(self._meta("high_water") or 0), cursor)
                self._set_meta("high_water", str(high))
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise self._error(e, "catching up") from e
            self._done_since_open = None
        if total:
            log("outbox.caught_up", path=self.path, events=total, from_seq=start)
            self._notify()
        return total

    # -- channels ---------------------------------------------------------------------------------

    def _check_channel(self, channel: str) -> None:
        if channel not in self.channels:
            raise ValueError(
                f"outbox channel {channel!r}: not configured; configured: "
                + (", ".join(self.channels) or "none")
            )

    def peek(self, channel: str, limit: int = 100) -> list[OutboxItem]:
        """Up to ``limit`` items ``channel`` has not had acknowledged: alarm-class first, then
        the others, each oldest first. Does not remove anything."""
        self._check_channel(channel)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PEEK:
            raise ValueError(f"outbox peek limit {limit!r}: must be a whole number 1..{MAX_PEEK}")
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT i.seq, i.utc, i.kind, i.source, i.details FROM pending p "
                    "JOIN items i ON i.seq = p.seq WHERE p.channel = ? "
                    "ORDER BY p.prio, p.seq LIMIT ?",
                    (channel, limit),
                ).fetchall()
            except sqlite3.Error as e:
                raise self._error(e, f"reading {channel}'s queue") from e
        items = []
        for seq, utc, kind, source, details in rows:
            try:
                parsed = json.loads(details)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                parsed = {"unreadable_details": details}  # forward it rather than hide it
            items.append(
                OutboxItem(
                    int(seq), float(utc), str(kind), str(source), parsed, self.event_id(int(seq))
                )
            )
        return items

    def event_id(self, seq: int) -> str:
        """The stable, unique id of event ``seq`` of this site."""
        return f"{self.site_id}-{seq}"

    def ack(self, channel: str, seq: int) -> None:
        """``channel``'s receiver acknowledged event ``seq`` (durable on return). Acking an
        event that is not waiting (already acked, unknown) does nothing."""
        self.ack_many(channel, [seq])

    def ack_many(self, channel: str, seqs: Iterable[int]) -> int:
        """``ack`` for several events in one transaction; returns how many were waiting."""
        self._check_channel(channel)
        wanted = []
        for seq in seqs:
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
                raise ValueError(f"outbox ack seq {seq!r}: must be a whole number >= 1")
            wanted.append(seq)
        if not wanted:
            return 0
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    acked = 0
                    deleted = 0
                    now = time.time()
                    for seq in wanted:
                        gone = conn.execute(
                            "DELETE FROM pending WHERE channel = ? AND prio IN (0, 1) AND seq = ?",
                            (channel, seq),
                        ).rowcount
                        acked += gone
                        if gone:
                            self._record_delivery(conn, channel, seq, now)
                        left = conn.execute(
                            "SELECT 1 FROM pending WHERE seq = ? LIMIT 1", (seq,)
                        ).fetchone()
                        if left is None:
                            n = conn.execute("DELETE FROM items WHERE seq = ?", (seq,)).rowcount
                            deleted += n
                            done = self._done_since_open
                            if n and done is not None:
                                done.add(seq)
                                if len(done) > MAX_BACKLOG:
                                    # catch_up was never called; stop tracking (it would
                                    # re-send some events at worst, never lose one).
                                    self._done_since_open = None
                    conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.Error as e:
                raise self._error(e, f"storing {channel}'s acknowledgements") from e
            self._rows -= deleted
            return acked

    def _record_delivery(
        self, conn: sqlite3.Connection, channel: str, seq: int, now: float
    ) -> None:
        """Inside the acknowledging transaction: an alarm-class event's delivery time."""
        row = conn.execute("SELECT utc, kind, prio FROM items WHERE seq = ?", (seq,)).fetchone()
        if row is None or int(row[2]) != 0:
            return
        conn.execute(
            "INSERT OR REPLACE INTO deliveries (channel, seq, kind, raised_utc, acked_utc) "
            "VALUES (?, ?, ?, ?, ?)",
            (channel, seq, str(row[1]), float(row[0]), now),
        )
        if now - self._last_delivery_prune > 3600.0:
            self._last_delivery_prune = now
            conn.execute("DELETE FROM deliveries WHERE acked_utc < ?", (now - DELIVERY_KEEP_S,))
            conn.execute(
                "DELETE FROM uptime WHERE hour < ?", (int((now - DELIVERY_KEEP_S) // 3600),)
            )

    def deliveries(self, since_utc: float) -> list[tuple[str, int, str, float, float]]:
        """(channel, seq, kind, raised_utc, acked_utc) of the alarm-class events acknowledged
        since ``since_utc``, oldest acknowledgement first."""
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT channel, seq, kind, raised_utc, acked_utc FROM deliveries "
                    "WHERE acked_utc >= ? ORDER BY acked_utc",
                    (since_utc,),
                ).fetchall()
            except sqlite3.Error as e:
                raise self._error(e, "reading the delivery times") from e
        return [(str(c), int(q), str(k), float(r), float(a)) for c, q, k, r, a in rows]

    def add_uptime(self, channel: str, hour: int, up_s: float, total_s: float) -> None:
        """Add ``up_s`` of ``total_s`` seconds to ``channel``'s ``hour`` (durable on return)."""
        self._check_channel(channel)
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO uptime (channel, hour, up_s, total_s) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(channel, hour) DO UPDATE SET up_s = up_s + excluded.up_s, "
                    "total_s = total_s + excluded.total_s",
                    (channel, hour, up_s, total_s),
                )
            except sqlite3.Error as e:
                raise self._error(e, f"storing {channel}'s uptime") from e

    def uptime(self, since_hour: int) -> dict[str, tuple[float, float]]:
        """Each channel's (up seconds, seconds counted) from ``since_hour`` on."""
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT channel, SUM(up_s), SUM(total_s) FROM uptime WHERE hour >= ? "
                    "GROUP BY channel",
                    (since_hour,),
                ).fetchall()
            except sqlite3.Error as e:
                raise self._error(e, "reading the uptime") from e
        return {str(c): (float(u), float(t)) for c, u, t in rows}

    def pending(self, channel: str) -> int:
        """How many events ``channel`` has not had acknowledged yet."""
        self._check_channel(channel)
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT COUNT(*) FROM pending WHERE channel = ?", (channel,)
                ).fetchone()
            except sqlite3.Error as e:
                raise self._error(e, f"counting {channel}'s queue") from e
        return int(row[0])

    def fill(self) -> OutboxFill:
        """How full the outbox is, with a warning from ``FILL_WARN`` of ``max_rows`` (cleared
        below ``FILL_CLEAR``) or while the card has less than ``CARD_RESERVE_BYTES`` free."""
        with self._lock:
            rows = self._rows
        file_bytes = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                file_bytes += os.stat(f"{self.path}{suffix}").st_size
        try:
            free: int | None = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = None
        share = rows / self.max_rows
        self._filling = share >= (FILL_CLEAR if self._filling else FILL_WARN)
        problems = []
        if self._filling:
            problems.append(
                f"{rows} events not acknowledged by every channel ({share:.0%} of the "
                f"{self.max_rows} it holds; beyond that the oldest non-alarm events are dropped)"
            )
        if free is not None and free < CARD_RESERVE_BYTES:
            problems.append(
                f"the card has {free / 1e6:.1f} MB free (outbox {file_bytes / 1e6:.1f} MB); "
                f"alarms wait in the event log if it fills"
            )
        return OutboxFill(
            rows, self.max_rows, file_bytes, free, "; ".join(problems) if problems else None
        )

    def unacked_channels(self, seq: int) -> list[str]:
        """The channels that have not acknowledged event ``seq`` yet ([] once all have, or for
        an event never taken in). For fallbacks: "no centre acknowledged this alarm in 60 s"."""
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT channel FROM pending WHERE seq = ? ORDER BY channel", (seq,)
                ).fetchall()
            except sqlite3.Error as e:
                raise self._error(e, f"reading the state of event {seq}") from e
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        """Close the file. Events still in memory after a write failure are logged as left to
        the next start's ``catch_up``."""
        with self._lock:
            if self._backlog:
                error(
                    "outbox.closed_with_backlog",
                    path=self.path,
                    events=len(self._backlog),
                    note="catch_up takes them from the event log at the next start",
                )
                self._backlog.clear()
            self._conn.close()


@dataclass(frozen=True, slots=True)
class OutboxState:
    """What another process may read of an outbox: its channels, its high-water mark, and the
    channels still waiting for one event."""

    channels: tuple[str, ...]
    high_water: int
    waiting: frozenset[str]


def read_state(path: Path, seq: int) -> OutboxState:
    """The state of the outbox at ``path`` for event ``seq``, read only (the console's ``test
    uplink`` while the uplinks process owns the file). Raises OutboxError."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as e:
        raise OutboxError(f"outbox {path}: cannot open: {e}") from e
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'channels'").fetchone()
        channels = tuple(str(c) for c in json.loads(row[0])) if row else ()
        row = conn.execute("SELECT value FROM meta WHERE key = 'high_water'").fetchone()
        high = int(row[0]) if row else 0
        waiting = frozenset(
            str(r[0]) for r in conn.execute("SELECT channel FROM pending WHERE seq = ?", (seq,))
        )
    except (sqlite3.Error, ValueError) as e:
        raise OutboxError(f"outbox {path}: cannot read: {e}") from e
    finally:
        conn.close()
    return OutboxState(channels, high, waiting)
