"""The durable event log: every alarm, fault, valve action and operator action, kept without power
(GB 16808: at least 999 records), plus a small state table (latched alarms) read at start-up.

One SQLite file. Why these settings:

* ``journal_mode=WAL``: readers (the control API, ``gasguard events``) never block the writer
  (the recorder thread), and a commit appends to one file instead of rewriting pages in place.
* ``synchronous=FULL``: in WAL mode this fsyncs the WAL at every commit, so a transaction is on
  the card when ``commit`` returns. An alarm record written just before a power cut (the typical
  sequence: gas, alarm, someone switches the kitchen off at the breaker) must survive it.
  ``NORMAL`` would only survive a crash of the process, not of the power. The cost on an SD card
  is one fsync per commit: a few ms to tens of ms, and a rewrite of at least one flash page each
  time (wear). That is why the recorder batches whatever is waiting into one transaction, and
  why rotation deletes in batches instead of once per insert.
* ``PRAGMA user_version`` holds the schema version so a later gasguard can migrate; a file with a
  newer version than this code knows is refused, never half-understood.
* ``seq`` is never handed out twice: the writer numbers each event one above the highest number
  the file knows (its newest row, which rotation never deletes, or the ``seq_floor`` state row
  a new file starts from). Not ``AUTOINCREMENT``: that rewrites a second page at every commit,
  for the same guarantee. Uplinks resume with ``since(seq)``. A new file starts at the current
  time in milliseconds, so numbers keep rising even when a lost or corrupt log is replaced:
  upstream receivers de-duplicate by (site, seq). (Schema 1 files used AUTOINCREMENT; opening
  one as the writer migrates it.)
* Wear: with 1 KiB pages and no AUTOINCREMENT a commit of a few events appends one or two
  pages to the WAL; the recorder commits everything waiting at once.

sqlite3 objects must not be shared between threads: each thread opens its own ``EventStore``
(the recorder, which writes) or ``EventStore.open_readonly(path)`` (readers).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.core.kinds import EVENTS_LOST, alarm_class_sql, droppable_sql
from gateway.core.model import Event, Level
from gateway.log import error
from gateway.store.sqlite import open_durable

SCHEMA_VERSION = 2
# GB 16808 asks for at least 999 records; the config enforces the same range.
MIN_CAPACITY = 999
MAX_CAPACITY = 10_000_000
MAX_QUERY_LIMIT = 100_000
LATCHED_KEY = "latched"
SEQ_FLOOR_KEY = "seq_floor"  # the number a new file counts up from
FORWARDED_KEY = "uplinks_forwarded"  # the uplinks' high-water mark, as they last reported it
_DROPPABLE_SQL, _KEPT_ARGS = droppable_sql()
_ALARM_SQL, _ALARM_ARGS = alarm_class_sql()

_SCHEMA_V2 = (
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        utc REAL NOT NULL,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        details TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        utc REAL NOT NULL
    )""",
)


class EventStoreError(Exception):
    """The event store cannot be used: missing, corrupt, from a newer gasguard, or a disk error.
    The message names the file."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as stored: ``seq`` its never-reused number, ``utc`` seconds since the epoch."""

    seq: int
    utc: float
    kind: str
    source: str
    details: dict[str, Any]


def _jsonable(value: Any) -> Any:
    """``value`` made into strict JSON data. Never raises: an event must never be lost because
    its details hold a NaN, an enum or an object JSON does not know."""
    if isinstance(value, Level):  # before int: Level is an IntEnum
        return value.name.lower()
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)  # "nan": not a JSON number
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=repr)
    return str(value)


def details_json(details: Mapping[str, Any]) -> str:
    """The compact JSON text stored for an event's details (also used by the CLI renderer)."""
    return json.dumps(
        _jsonable(details), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _check_utc(utc: float) -> float:
    if isinstance(utc, bool) or not isinstance(utc, int | float) or not math.isfinite(utc):
        raise ValueError(f"event utc {utc!r}: must be a finite number of seconds since the epoch")
    return float(utc)


def _check_limit(name: str, limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_QUERY_LIMIT:
        raise ValueError(f"{name} {limit!r}: must be an integer from 0 to {MAX_QUERY_LIMIT}")
    return limit


def _level_from_json(path: Path, name: object, value: object) -> Level:
    if isinstance(value, str):
        try:
            return Level[value.upper()]
        except KeyError:
            pass
    allowed = ", ".join(level.name.lower() for level in Level)
    raise EventStoreError(
        f"event store {path}: latched level of detector {name!r} is {value!r}: "
        f"must be one of {allowed}"
    )


class EventReader:
    """Read-only access to an event store, for one thread. Made by ``EventStore.open_readonly``;
    ``EventStore`` (the writer) has the same queries."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    def _error(self, e: sqlite3.Error, doing: str) -> EventStoreError:
        return EventStoreError(f"event store {self.path}: {doing} failed: {e}")

    def _query(self, sql: str, params: Sequence[Any], doing: str) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._error(e, doing) from e

    @staticmethod
    def _rows(rows: list[Any]) -> list[StoredEvent]:
        out = []
        for seq, utc, kind, source, details in rows:
            try:
                parsed = json.loads(details)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                # Never written by this code; show it rather than hide the record.
                parsed = {"unreadable_details": details}
            out.append(StoredEvent(int(seq), float(utc), str(kind), str(source), parsed))
        return out

    def recent(self, limit: int = 100) -> list[StoredEvent]:
        """The ``limit`` newest events, oldest first (newest last)."""
        _check_limit("limit", limit)
        rows = self._query(
            "SELECT seq, utc, kind, source, details FROM events ORDER BY seq DESC LIMIT ?",
            (limit,),
            "reading recent events",
        )
        rows.reverse()
        return self._rows(rows)

    def since(self, seq: int, limit: int = 1000) -> list[StoredEvent]:
        """Events with a number above ``seq``, oldest first, at most ``limit`` (for uplinks that
        resume where they stopped)."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"seq {seq!r}: must be an integer >= 0")
        _check_limit("limit", limit)
        rows = self._query(
            "SELECT seq, utc, kind, source, details FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
            "reading events",
        )
        return self._rows(rows)

    def count(self) -> int:
        """How many events are stored now."""
        return int(self._query("SELECT COUNT(*) FROM events", (), "counting events")[0][0])

    def last_seq(self) -> int:
        """The highest number ever handed out (0 for a new store), rotated or not."""
        try:
            return _read_last_seq(self._conn)
        except sqlite3.Error as e:
            raise self._error(e, "reading the last seq") from e

    def get_state(self, key: str) -> Any:
        """The JSON value stored under ``key`` in the state table, or None."""
        rows = self._query("SELECT value FROM state WHERE key = ?", (key,), f"reading {key!r}")
        if not rows:
            return None
        try:
            return json.loads(rows[0][0])
        except ValueError as e:
            raise EventStoreError(f"event store {self.path}: state {key!r} is not JSON: {e}") from e

    def quick_check(self) -> str | None:
        """None when SQLite's quick check finds nothing wrong, else what it found."""
        rows = self._query("PRAGMA quick_check", (), "checking the file")
        text = "; ".join(str(r[0]) for r in rows[:5])
        return None if text == "ok" else text

    def load_latched(self) -> dict[str, Level]:
        """Alarms latched before the last stop, detector name -> level ({} when none saved).
        Raises EventStoreError for a value that is not a known level: the controller must not
        guess what was latched."""
        data = self.get_state(LATCHED_KEY)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise EventStoreError(
                f"event store {self.path}: latched state is {data!r}: must be a JSON object"
            )
        return {str(name): _level_from_json(self.path, name, v) for name, v in data.items()}

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EventReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_schema(path: Path, conn: sqlite3.Connection) -> int:
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.OperationalError as e:  # unreachable now (locked, read-only medium, I/O)
        raise EventStoreError(f"event store {path}: cannot read: {e}") from e
    except sqlite3.DatabaseError as e:
        raise EventStoreError(
            f"event store {path} is corrupt or not a SQLite database: {e}; move it aside "
            "(it is evidence) and restart to begin a new one"
        ) from e
    if version > SCHEMA_VERSION:
        raise EventStoreError(
            f"event store {path} has schema version {version}: this gasguard reads versions "
            f"up to {SCHEMA_VERSION} (written by a newer gasguard)"
        )
    return version


class EventStore(EventReader):
    """The event log's writer. Open one per process, in the thread that writes (the recorder).

    ``capacity`` (999 .. 10 000 000, default 10 000) is the number of newest events always kept;
    older ones are deleted in batches of about a tenth of the capacity, so the file holds between
    ``capacity`` and ``capacity + batch`` events once full. ``busy_timeout_s`` is how long a write
    waits for another connection's lock before failing (the recorder then retries).
    """

    def __init__(
        self,
        path: Path,
        capacity: int = 10_000,
        *,
        busy_timeout_s: float = 5.0,
        first_seq: int = 0,
    ) -> None:
        if (
            isinstance(capacity, bool)
            or not isinstance(capacity, int)
            or not MIN_CAPACITY <= capacity <= MAX_CAPACITY
        ):
            raise ValueError(
                f"event capacity {capacity!r}: must be an integer from {MIN_CAPACITY} "
                f"(GB 16808) to {MAX_CAPACITY}"
            )
        path = Path(path)
        self.capacity = capacity
        self.rotate_batch = max(1, capacity // 10)
        self._first_seq = first_seq
        conn, version = open_durable(
            path, "event store", SCHEMA_VERSION, EventStoreError, busy_timeout_s=busy_timeout_s
        )
        super().__init__(path, conn)
        try:
            if version < SCHEMA_VERSION:
                self._migrate(version)
            self._rows_now: int | None = self.count()
            self._last_seq: int | None = self.last_seq()
        except sqlite3.Error as e:
            conn.close()
            raise EventStoreError(f"event store {path}: cannot prepare: {e}") from e
        except EventStoreError:
            conn.close()
            raise

    def _migrate(self, version: int) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version == 0:
                for sql in _SCHEMA_V2:
                    conn.execute(sql)
                # A new log starts numbering at the current time in milliseconds, so a log that
                # replaces a lost or corrupt one keeps counting upwards: upstream receivers
                # de-duplicate by (site, seq) and must never take a new alarm for an old one.
                # ``first_seq``: the writer knows a higher number (the log it replaces).
                floor = max(int(time.time() * 1000), self._first_seq - 1)
                self._put_floor(floor)
            elif version == 1:
                # Same rows, same numbers; the AUTOINCREMENT counter becomes the floor.
                floor = _read_last_seq(conn)
                conn.execute(_SCHEMA_V2[0].replace("events (", "events_v2 (", 1))
                conn.execute(
                    "INSERT INTO events_v2 SELECT seq, utc, kind, source, details FROM events"
                )
                conn.execute("DROP TABLE events")
                conn.execute("ALTER TABLE events_v2 RENAME TO events")
                self._put_floor(floor)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _put_floor(self, floor: int) -> None:
        self._conn.execute(
            "INSERT INTO state (key, value, utc) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, utc = excluded.utc",
            (SEQ_FLOOR_KEY, json.dumps(floor), time.time()),
        )

    def take_back(self, other: Path) -> int:
        """Copy into this log the events of ``other`` numbered above this log's newest, with
        their numbers; the number of events copied. For a rollback after a failed upgrade: this
        log is the pre-upgrade backup put back, ``other`` the log the failed version wrote,
        whose events may already be upstream (receivers de-duplicate by site and number, so a
        number must never come back for another event) or not yet (they must not be lost).
        When ``other``'s events cannot be read in this schema's columns, none is copied and the
        numbering still continues above ``other``'s highest number. Raises EventStoreError."""
        uri = Path(other).resolve().as_uri() + "?mode=ro"
        conn = self._conn
        try:
            conn.execute("ATTACH DATABASE ? AS other", (uri,))
        except sqlite3.Error as e:
            raise EventStoreError(f"event store {other}: cannot read it: {e}") from e
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                newest = _read_last_seq(conn)
                try:
                    copied = conn.execute(
                        "INSERT INTO main.events (seq, utc, kind, source, details) "
                        "SELECT seq, utc, kind, source, details FROM other.events "
                        "WHERE seq > ? ORDER BY seq",
                        (newest,),
                    ).rowcount
                except sqlite3.OperationalError:
                    copied = 0  # another schema's columns: keep the numbers apart at least
                other_last = _read_last_seq_in(conn, "other")
                if other_last > _read_last_seq(conn):
                    self._put_floor(other_last)
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as e:
            raise self._error(e, f"taking back the events of {other}") from e
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("DETACH DATABASE other")
            self._rows_now = None
            self._last_seq = None
        return int(copied)

    def _rollback(self) -> None:
        # The original error says more; SQLite rolls back by itself after an I/O error.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    @staticmethod
    def open_readonly(path: Path | str) -> EventReader:
        """A reader for another thread or process (``gasguard events``). It cannot write.
        Raises EventStoreError if the file is missing, corrupt or from a newer gasguard."""
        path = Path(path)
        if not path.is_file():
            raise EventStoreError(
                f"event store {path}: no such file (the controller creates it on first start)"
            )
        try:
            conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as e:
            raise EventStoreError(f"event store {path}: cannot open: {e}") from e
        try:
            version = _check_schema(path, conn)
        except EventStoreError:
            conn.close()
            raise
        if version == 0:
            conn.close()
            raise EventStoreError(f"event store {path}: not a gasguard event store (no schema)")
        return EventReader(path, conn)

    # -- writing ---------------------------------------------------------------------------------

    def append(self, utc: float, event: Event) -> int:
        """Store one event; it is on disk when this returns. Returns its ``seq``."""
        return self.record([(utc, event)])[0]

    def append_many(self, items: Sequence[tuple[float, Event]]) -> list[int]:
        """Store several events in one transaction (one fsync); all or none. Returns their seqs
        in order."""
        return self.record(items)

    def save_latched(self, latched: Mapping[str, Level]) -> None:
        """Replace the saved latched alarms (detector name -> level); durable on return."""
        self.record((), latched)

    def put_state(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` in the state table; durable on return."""
        self.record((), state={key: value})

    def record(
        self,
        items: Sequence[tuple[float, Event]],
        latched: Mapping[str, Level] | None = None,
        state: Mapping[str, Any] | None = None,
        forwarded: int | None = None,
    ) -> list[int]:
        """Store events, and optionally the latched alarms and other state, in one transaction.
        Rotates old events out when the table has grown a batch beyond ``capacity``.

        ``forwarded``: the uplinks' high-water mark (the highest seq they have taken into their
        durable outbox; None: no uplinks, nothing waits to be forwarded). Rotation then never
        deletes a never-dropped event (``gateway.core.kinds``) above it: the log grows instead,
        by at most another ``capacity`` such events. What rotation must delete above the mark
        (a droppable event, or a never-dropped one beyond that bound) is recorded in the same
        transaction as an ``events.lost`` event with its seq range, which the uplinks forward.

        Raises ValueError for an invalid item (nothing written), EventStoreError on a disk or
        database error (nothing written; the caller may retry)."""
        rows = []
        for i, item in enumerate(items):
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Event)):
                raise ValueError(f"event item {i} is {item!r}: must be a (utc, Event) tuple")
            utc, event = item
            rows.append(
                (_check_utc(utc), str(event.kind), str(event.source), details_json(event.details))
            )
        states: dict[str, str] = {}
        if latched is not None:
            states[LATCHED_KEY] = details_json(
                {str(name): Level(level).name.lower() for name, level in latched.items()}
            )
        for key, value in (state or {}).items():
            states[str(key)] = json.dumps(_jsonable(value), allow_nan=False)
        if not rows and not states:
            return []
        now = time.time()
        conn = self._conn
        if self._rows_now is None:
            self._rows_now = self.count()
        if self._last_seq is None:
            self._last_seq = self.last_seq()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                seqs: list[int] = []
                # Under the write lock: another writer (a migration, a tool) may have added rows
                # since the cache was filled. One index lookup, no page written.
                newest = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
                last = max(self._last_seq, newest)
                for row in rows:
                    seq = last + 1 + len(seqs)
                    conn.execute(
                        "INSERT INTO events (seq, utc, kind, source, details) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (seq, *row),
                    )
                    seqs.append(seq)
                for key, text in states.items():
                    conn.execute(
                        "INSERT INTO state (key, value, utc) VALUES (?, ?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value, utc = excluded.utc",
                        (key, text, now),
                    )
                total = self._rows_now + len(rows)
                if total >= self.capacity + self.rotate_batch:
                    self._rotate(forwarded, last + len(seqs), now)
                    total = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as e:
            # A failed COMMIT may still have reached the disk: count and number again.
            self._rows_now = None
            self._last_seq = None
            raise self._error(e, "writing") from e
        self._rows_now = total
        if seqs:
            self._last_seq = seqs[-1]
        return seqs

    def _rotate(self, forwarded: int | None, newest: int, now: float) -> None:
        """Inside ``record``'s transaction: keep the ``capacity`` newest events, and above the
        uplinks' mark every alarm-class event and the newest ``capacity`` other never-dropped
        ones; record what had to go unforwarded (``events.lost``)."""
        conn = self._conn
        row = conn.execute(
            "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (self.capacity,)
        ).fetchone()
        if row is None:
            return
        cutoff = int(row[0])
        if forwarded is None:  # no uplinks: nothing waits
            conn.execute("DELETE FROM events WHERE seq <= ?", (cutoff,))
            return
        # Never dropped but not alarms (operator actions, console work): kept up to a bound,
        # since a local peer could flood them; alarms come only from the core.
        others = [
            int(r[0])
            for r in conn.execute(
                f"SELECT seq FROM events WHERE seq <= ? AND seq > ? AND NOT ({_DROPPABLE_SQL}) "
                f"AND NOT ({_ALARM_SQL}) ORDER BY seq DESC LIMIT ?",
                (cutoff, forwarded, *_KEPT_ARGS, *_ALARM_ARGS, self.capacity),
            ).fetchall()
        ]
        floor = min(others) if len(others) == self.capacity else -1  # older ones go too
        goes = f"seq <= ? AND (({_DROPPABLE_SQL}) OR (NOT ({_ALARM_SQL}) AND seq < ?))"
        args = (cutoff, *_KEPT_ARGS, *_ALARM_ARGS, floor)
        lost = conn.execute(
            f"SELECT COUNT(*), MIN(seq), MAX(seq) FROM events WHERE seq > ? AND {goes}",
            (forwarded, *args),
        ).fetchone()
        conn.execute("DELETE FROM events WHERE seq <= ? AND seq <= ?", (cutoff, forwarded))
        conn.execute(f"DELETE FROM events WHERE {goes}", args)
        count = int(lost[0])
        if count:
            details = {
                "count": count,
                "first_seq": int(lost[1]),
                "last_seq": int(lost[2]),
                "forwarded_seq": forwarded,
                "reason": "rotated out of the event log before the uplinks took it in",
            }
            conn.execute(
                "INSERT INTO events (seq, utc, kind, source, details) VALUES (?, ?, ?, ?, ?)",
                (newest + 1, now, EVENTS_LOST, "recorder", details_json(details)),
            )
            error("store.rotated_unforwarded", **details)

    def __enter__(self) -> EventStore:
        return self


def last_seq_of(path: Path) -> int:
    """The highest number a (possibly damaged) log at ``path`` handed out; 0 if unreadable."""
    try:
        conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return 0
    try:
        return _read_last_seq(conn)
    except (sqlite3.Error, ValueError, TypeError):
        return 0
    finally:
        conn.close()


def _read_last_seq(conn: sqlite3.Connection) -> int:
    """The highest number a log handed out: its newest row, its floor (schema 2) or its
    AUTOINCREMENT counter (schema 1), whichever is highest; 0 for an empty new file."""
    return _read_last_seq_in(conn, "main")


def _read_last_seq_in(conn: sqlite3.Connection, db: str) -> int:
    """``_read_last_seq`` of the database attached to ``conn`` as ``db``."""
    tables = {
        r[0] for r in conn.execute(f"SELECT name FROM {db}.sqlite_master WHERE type = 'table'")
    }
    highest = 0
    if "events" in tables:
        highest = int(conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {db}.events").fetchone()[0])
    if "state" in tables:
        row = conn.execute(
            f"SELECT value FROM {db}.state WHERE key = ?", (SEQ_FLOOR_KEY,)
        ).fetchone()
        if row is not None:
            highest = max(highest, int(json.loads(row[0])))
    if "sqlite_sequence" in tables:
        row = conn.execute(f"SELECT seq FROM {db}.sqlite_sequence WHERE name = 'events'").fetchone()
        if row is not None:
            highest = max(highest, int(row[0]))
    return highest


def forwarded_from_log(path: Path) -> int:
    """The uplinks' high-water mark the event log at ``path`` last saved; 0 when it has none or
    cannot be read (then rotation keeps every never-dropped event until they report)."""
    if not Path(path).exists():
        return 0
    try:
        with EventStore.open_readonly(path) as reader:
            value = reader.get_state(FORWARDED_KEY)
    except (EventStoreError, sqlite3.Error, OSError):
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def latched_from_log(path: Path) -> dict[str, Level]:
    """The latched alarms the event log at ``path`` holds, read only; {} (and an error logged)
    when it is missing or cannot be read: the latch file still has them."""
    if not Path(path).exists():
        return {}
    try:
        with EventStore.open_readonly(path) as reader:
            return reader.load_latched()
    except (EventStoreError, sqlite3.Error, OSError) as e:
        error("store.latched_unreadable", path=path, error=str(e)[:300])
        return {}
