"""The durable event log and the recorder thread, on real SQLite files in a temp directory."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.core.model import Event, Level
from gateway.store.events import EventStore, EventStoreError, StoredEvent
from gateway.store.recorder import LatchedSnapshot, Recorder, RecorderItem

UTC0 = 1_764_300_000.0


def ev(i: int, kind: str = "alarm.raised", source: str = "wok-1") -> tuple[float, Event]:
    return UTC0 + i, Event(kind, source, float(i), {"i": i, "lel": 10.0 + i})


# -- EventStore ----------------------------------------------------------------------------------


def test_append_recent_since(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "events.db"  # directories are created
    with EventStore(path, capacity=999) as store:
        seqs = [store.append(*ev(i)) for i in range(5)]
        seqs += store.append_many([ev(i, "fault.raised", "wok-2") for i in range(5, 8)])
        assert seqs == sorted(seqs) and len(set(seqs)) == 8

        recent = store.recent(3)
        assert [e.seq for e in recent] == seqs[-3:]  # newest last
        assert recent[-1] == StoredEvent(
            seqs[-1], UTC0 + 7, "fault.raised", "wok-2", {"i": 7, "lel": 17.0}
        )
        assert [e.details["i"] for e in store.recent(100)] == list(range(8))

        after = store.since(seqs[4], limit=2)
        assert [e.seq for e in after] == seqs[5:7]
        assert store.since(seqs[-1]) == []
        assert store.count() == 8
        assert store.last_seq() == seqs[-1]


def test_details_that_are_not_json_are_still_stored(tmp_path: Path) -> None:
    with EventStore(tmp_path / "e.db", capacity=999) as store:
        store.append(
            UTC0,
            Event(
                "alarm.raised", "wok-1", 1.0, {"lel": math.nan, "level": Level.HIGH, "t": (1, 2)}
            ),
        )
        (stored,) = store.recent(1)
    assert stored.details == {"lel": "nan", "level": "high", "t": [1, 2]}


def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    with EventStore(tmp_path / "e.db", capacity=999) as store:
        store.append(*ev(0))
        with pytest.raises(ValueError, match="utc"):
            store.append_many([ev(1), (math.nan, Event("x", "y", 0.0))])
        with pytest.raises(ValueError, match="limit"):
            store.recent(-1)
        assert store.count() == 1
    with pytest.raises(ValueError, match="capacity 10: must be an integer from 999"):
        EventStore(tmp_path / "f.db", capacity=10)


def test_seq_strictly_increases_across_reopen_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    capacity = 999
    seen: list[int] = []
    for _ in range(3):  # three restarts of the controller
        with EventStore(path, capacity=capacity) as store:
            for start in range(0, 400, 50):
                seen += store.append_many([ev(i) for i in range(start, start + 50)])
    assert len(seen) == 1200
    assert all(b > a for a, b in itertools.pairwise(seen))
    with EventStore(path, capacity=capacity) as store:
        kept = [e.seq for e in store.recent(100_000)]
        # The oldest ones were rotated out, and their numbers are not handed out again.
        assert kept[0] > seen[0]
        assert kept == seen[-len(kept) :]
        assert store.append(*ev(9999)) > seen[-1]


def test_two_writers_on_one_log_never_hand_out_the_same_number(tmp_path: Path) -> None:
    # The recorder is the only writer on a site, but a migration or a tool may append too: the
    # number is taken under the write lock, never from a stale cache (this failed with a
    # UNIQUE constraint error when the flood benchmark wrote beside the recorder).
    path = tmp_path / "e.db"
    seqs: list[int] = []
    with EventStore(path, capacity=999) as a, EventStore(path, capacity=999) as b:
        for i in range(20):
            seqs += (a if i % 2 else b).append_many([ev(i), ev(i + 100)])
    assert len(set(seqs)) == 40
    with EventStore(path, capacity=999) as store:
        assert [e.seq for e in store.since(0)] == sorted(seqs)


def test_a_restored_log_takes_back_what_a_failed_version_recorded(tmp_path: Path) -> None:
    """The rollback after a failed upgrade: the pre-upgrade backup comes back, and the events
    the failed version recorded after it are copied in with their numbers (they may be
    upstream already); the next number follows them."""
    live, backup = tmp_path / "events.db", tmp_path / "backup.db"
    with EventStore(live) as store:
        before = store.append_many([ev(i) for i in range(3)])
    with (
        contextlib.closing(sqlite3.connect(live)) as src,
        contextlib.closing(sqlite3.connect(backup)) as dst,
    ):
        src.backup(dst)
    with EventStore(live) as store:  # the failed version, carrying on in the migrated log
        failed = store.append_many([ev(i, "fault.raised", "fryer-1") for i in range(3, 5)])
    with contextlib.closing(sqlite3.connect(live)) as conn:
        conn.execute("PRAGMA user_version = 99")  # a schema the restored version cannot read
        conn.commit()
    with EventStore(backup) as store:
        assert store.take_back(live) == 2
        assert store.take_back(live) == 0  # twice changes nothing
        assert [e.seq for e in store.recent(10)] == before + failed
        assert [e.kind for e in store.recent(2)] == ["fault.raised"] * 2
        assert store.append(*ev(5)) == failed[-1] + 1


def test_a_failed_log_in_other_columns_still_moves_the_numbers_on(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO events VALUES (9999999999999, 'x')")
        conn.commit()
    with EventStore(tmp_path / "events.db") as store:
        last = store.append(*ev(0))
        assert store.take_back(other) == 0
        assert [e.seq for e in store.recent(10)] == [last]
        assert store.append(*ev(1)) == 10_000_000_000_000
        with pytest.raises(EventStoreError, match=r"missing\.db"):
            store.take_back(tmp_path / "missing.db")


def test_rotation_keeps_capacity_newest_and_deletes_in_batches(tmp_path: Path) -> None:
    capacity = 999
    counts: list[int] = []
    with EventStore(tmp_path / "e.db", capacity=capacity) as store:
        seqs = []
        for i in range(1100):
            seqs.append(store.append(*ev(i)))
            counts.append(store.count())
        # Never fewer than `capacity` once that many were written ...
        assert all(c >= min(i + 1, capacity) for i, c in enumerate(counts))
        # ... not a delete per insert: the table grows past capacity before a batch goes ...
        assert counts[capacity] == capacity + 1
        # ... and it is bounded by capacity plus one batch.
        assert max(counts) <= capacity + store.rotate_batch
        assert min(counts[capacity:]) == capacity  # a batch did go
        newest = [e.seq for e in store.recent(100_000)]
        assert newest == seqs[-len(newest) :]


def test_latched_state_round_trips_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventStore(path, capacity=999) as store:
        assert store.load_latched() == {}
        store.save_latched({"wok-1": Level.HIGH, "wok-2": Level.LOW, "fryer": Level.NORMAL})
        store.save_latched({"wok-1": Level.HIGH, "wok-2": Level.LOW})  # replaces, not merges
    with EventStore(path, capacity=999) as store:
        assert store.load_latched() == {"wok-1": Level.HIGH, "wok-2": Level.LOW}
    with EventStore.open_readonly(path) as reader:
        assert reader.load_latched() == {"wok-1": Level.HIGH, "wok-2": Level.LOW}


def test_unknown_latched_level_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    EventStore(path, capacity=999).close()
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO state VALUES ('latched', '{\"wok-1\": \"purple\"}', 0)")
    raw.close()
    with EventStore(path, capacity=999) as store, pytest.raises(EventStoreError, match="purple"):
        store.load_latched()


def test_readonly_reader_sees_writes_and_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventStore(path, capacity=999) as store:
        seq = store.append(*ev(1))
        with EventStore.open_readonly(path) as reader:
            assert [e.seq for e in reader.recent(10)] == [seq]
            seq2 = store.append(*ev(2))
            assert [e.seq for e in reader.since(seq)] == [seq2]
            assert not hasattr(reader, "append")


def test_missing_corrupt_and_newer_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(EventStoreError, match="no such file"):
        EventStore.open_readonly(tmp_path / "nothing.db")

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database, it is a shopping list " * 200)
    with pytest.raises(EventStoreError, match="corrupt"):
        EventStore(corrupt, capacity=999)
    with pytest.raises(EventStoreError, match="corrupt"):
        EventStore.open_readonly(corrupt)
    assert corrupt.read_bytes().startswith(b"this is not")  # evidence left as it was

    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as raw:
        raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(EventStoreError, match="schema version 99"):
        EventStore(newer, capacity=999)

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE t (x)")
    raw.close()
    with pytest.raises(EventStoreError, match="not a gasguard event store"):
        EventStore.open_readonly(foreign)


def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventStore(path, capacity=999) as store:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 1024
        # No AUTOINCREMENT: its counter would be a second page rewritten at every commit.
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "sqlite_sequence" not in tables


def schema_1_log(path: Path, events: int, deleted_newest: int) -> None:
    """A log as gasguard 1 wrote it: AUTOINCREMENT numbers, some newest rows gone (so the
    counter is above the newest row)."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, utc REAL NOT NULL, "
            "kind TEXT NOT NULL, source TEXT NOT NULL, details TEXT NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, utc REAL NOT NULL)"
        )
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', 5000)")
        for i in range(events):
            conn.execute(
                "INSERT INTO events (utc, kind, source, details) VALUES (?, ?, ?, ?)",
                (1764300000.0 + i, "alarm.raised", "wok-1", json.dumps({"i": i})),
            )
        conn.execute(
            "INSERT INTO state (key, value, utc) VALUES ('latched', '{\"wok-1\": \"high\"}', 0)"
        )
        conn.execute(
            "DELETE FROM events WHERE seq > (SELECT MAX(seq) FROM events) - ?", (deleted_newest,)
        )
        conn.execute("PRAGMA user_version = 1")


def test_a_schema_1_log_is_migrated_keeping_every_row_and_number(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    schema_1_log(path, events=20, deleted_newest=3)
    with EventStore.open_readonly(path) as reader:
        before = [(e.seq, e.kind, e.details) for e in reader.since(0, 1000)]
        assert reader.last_seq() == 5020
    with EventStore(path, capacity=999) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert [(e.seq, e.kind, e.details) for e in store.since(0, 1000)] == before
        assert store.load_latched() == {"wok-1": Level.HIGH}
        assert store.last_seq() == 5020
        # Never a number handed out before, even one whose row is gone.
        (seq,) = store.record([(1764400000.0, Event("alarm.raised", "wok-2", 1.0, {}))])
        assert seq == 5021
    with EventStore(path, capacity=999) as store:
        (seq,) = store.record([(1764400001.0, Event("alarm.raised", "wok-2", 1.0, {}))])
        assert seq == 5022


CHILD = """
import sys
from pathlib import Path
from gateway.core.model import Event
from gateway.store.events import EventStore
store = EventStore(Path(sys.argv[1]), capacity=999)
i = 0
while True:
    seq = store.append(1764300000.0 + i, Event("alarm.raised", "wok-1", float(i), {"i": i}))
    print(seq, flush=True)
    i += 1
"""


def test_every_acknowledged_event_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    printed: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(printed) < 200 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            printed.append(int(line))
        os.kill(child.pid, signal.SIGKILL)  # mid-write, most likely
        rest, _ = child.communicate(timeout=10)
        printed += [int(x) for x in rest.split()]
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert len(printed) >= 200
    with EventStore(path, capacity=999) as store:
        stored = {e.seq for e in store.recent(100_000)}
        assert set(printed) <= stored
        # And numbering goes on above anything the dead process handed out.
        assert store.append(*ev(0)) > max(stored)


# -- Recorder ------------------------------------------------------------------------------------


def test_recorder_drains_in_order_and_calls_subscribers_after_storing(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
    recorder = Recorder(path, 999, inbox)
    delivered: list[StoredEvent] = []
    found_in_db: list[bool] = []

    def uplink(stored: StoredEvent) -> None:
        # Runs in the recorder thread: the event must already be on disk, seen by a new reader.
        with EventStore.open_readonly(path) as reader:
            found_in_db.append(stored.seq in {e.seq for e in reader.since(stored.seq - 1, 1)})
        delivered.append(stored)

    def broken_uplink(stored: StoredEvent) -> None:
        raise RuntimeError("uplink down")

    recorder.subscribe(broken_uplink)  # must not stop recording or the next subscriber
    recorder.subscribe(uplink)
    for i in range(100):  # queued before start: drained in batches
        inbox.put(ev(i))
    recorder.start()
    inbox.put(LatchedSnapshot({"wok-1": Level.HIGH}))
    for i in range(100, 300):
        inbox.put(ev(i))
    assert recorder.flush(5.0)
    recorder.stop()

    assert [s.details["i"] for s in delivered] == list(range(300))
    assert all(found_in_db)
    seqs = [s.seq for s in delivered]
    assert all(b > a for a, b in itertools.pairwise(seqs))
    with EventStore.open_readonly(path) as reader:
        stored = reader.recent(1000)
        assert [(e.seq, e.details["i"]) for e in stored] == [
            (s.seq, s.details["i"]) for s in delivered
        ]
        assert reader.load_latched() == {"wok-1": Level.HIGH}


def test_recorder_stop_drains_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
    recorder = Recorder(path, 999, inbox)
    recorder.start()
    for i in range(50):
        inbox.put(ev(i))
    recorder.stop(timeout=5.0)
    assert not recorder.flush(0.1)  # not running any more
    with EventStore.open_readonly(path) as reader:
        assert [e.details["i"] for e in reader.recent(100)] == list(range(50))


def test_recorder_survives_a_transient_error_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
    recorder = Recorder(path, 999, inbox, busy_timeout_s=0.05, retry_max_s=0.2)
    recorder.start()
    inbox.put(ev(0))
    assert recorder.flush(5.0)

    # Another process holds the write lock (a real SQLite lock, not a mock): writes fail.
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(1, 20):
            inbox.put(ev(i))
        inbox.put(LatchedSnapshot({"wok-2": Level.LOW}))
        assert not recorder.flush(0.5)
        assert recorder.failing
        assert recorder.last_error is not None and "locked" in recorder.last_error
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    for i in range(20, 30):
        inbox.put(ev(i))
    assert recorder.flush(5.0)
    assert not recorder.failing
    recorder.stop()

    with EventStore.open_readonly(path) as reader:
        events = reader.recent(100)
        assert reader.load_latched() == {"wok-2": Level.LOW}
    ours = [e.details["i"] for e in events if e.kind == "alarm.raised"]
    assert ours == list(range(30))  # nothing lost, nothing reordered
    recovered = [e for e in events if e.kind == "store.recovered"]
    assert len(recovered) == 1 and "locked" in recovered[0].details["error"]


def test_recorder_start_moves_a_corrupt_store_aside_and_starts_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    garbage = b"\x00garbage" * 1000
    path.write_bytes(garbage)
    health: list[str | None] = []
    recorder = Recorder(path, 999, queue.SimpleQueue(), on_health=health.append)
    recorder.start()  # never raises for the store: detection must go on
    try:
        kept = list(tmp_path.glob("e.db.corrupt-*"))
        assert len(kept) == 1 and kept[0].read_bytes() == garbage  # the evidence, as it was
        assert recorder.flush(5.0) and recorder.health is None
    finally:
        recorder.stop()
    with EventStore.open_readonly(path) as reader:
        moved = [e for e in reader.recent(10) if e.kind == "store.moved_aside"]
    assert len(moved) == 1 and moved[0].details["kept_as"] == str(kept[0])


def test_recorder_stores_a_bad_item_instead_of_blocking(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
    recorder = Recorder(path, 999, inbox)
    recorder.start()
    inbox.put(ev(0))
    inbox.put((math.inf, Event("fault.raised", "wok-3", 1.0)))
    inbox.put("not an item")  # type: ignore[arg-type]
    inbox.put(ev(1))
    assert recorder.flush(5.0)
    recorder.stop()
    with EventStore.open_readonly(path) as reader:
        kinds = [(e.kind, e.source) for e in reader.recent(10)]
        bad_utc = next(e for e in reader.recent(10) if e.source == "wok-3")
    assert kinds == [
        ("alarm.raised", "wok-1"),
        ("fault.raised", "wok-3"),
        ("recorder.bad_item", "recorder"),
        ("alarm.raised", "wok-1"),
    ]
    assert bad_utc.details["given_utc"] == "inf" and math.isfinite(bad_utc.utc)


def test_a_replacement_log_keeps_numbering_upwards(tmp_path: Path) -> None:
    # Receivers de-duplicate by (site, seq): a log that replaces a lost one must not reuse seqs.
    first = tmp_path / "first.db"
    with EventStore(first, 1000) as store:
        old = store.append(1_764_300_000.0, Event("alarm.raised", "wok-1", 1.0, {}))
    time.sleep(0.01)
    second = tmp_path / "second.db"
    with EventStore(second, 1000) as store:
        new = store.append(1_764_300_001.0, Event("alarm.raised", "wok-1", 2.0, {}))
    assert new > old
