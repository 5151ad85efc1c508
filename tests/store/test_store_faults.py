"""A failing SD card as the recorder meets it: corrupt files, a full disk, a read-only store, a
log deleted while running, and a crash while the disk was full. Real SQLite files; the full and
read-only disks are real filesystems (``small_disk`` in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.core.model import Event, Level
from gateway.store.events import EventStore, EventStoreError, latched_from_log
from gateway.store.latchfile import SECTOR, SIZE, SLOT, LatchFile, union
from gateway.store.recorder import LatchedSnapshot, Recorder, RecorderItem
from tests.conftest import SmallDisk

UTC0 = 1_764_300_000.0


def ev(i: int, kind: str = "operator.silence") -> tuple[float, Event]:
    return UTC0 + i, Event(kind, "site", float(i), {"i": i})


def healthy_log(path: Path, events: int = 50) -> None:
    """A log as a site has it: created a day ago (its numbers started from that time in ms)."""
    EventStore(path, 10_000).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "UPDATE state SET value = ? WHERE key = 'seq_floor'",
            (str(int((time.time() - 86400) * 1000)),),
        )
    with EventStore(path, 10_000) as store:  # no rotation: every page is in use
        store.record([ev(i) for i in range(events)], {"wok-1": Level.HIGH})


def started(
    path: Path, **kwargs: object
) -> tuple[Recorder, queue.SimpleQueue[RecorderItem], list[str | None]]:
    inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
    health: list[str | None] = []
    recorder = Recorder(
        path,
        999,
        inbox,
        retry_max_s=0.2,
        on_health=health.append,
        **kwargs,  # type: ignore[arg-type]
    )
    recorder.start()
    return recorder, inbox, health


def stored_kinds(path: Path) -> list[str]:
    with EventStore.open_readonly(path) as reader:
        return [e.kind for e in reader.recent(1000)]


# -- corrupt files are moved aside, kept, and a new log continues upwards -------------------------


@pytest.mark.parametrize("where", ["header", "inner page", "last page"])
def test_a_really_corrupt_log_is_kept_and_a_new_one_numbers_upwards(
    tmp_path: Path, where: str
) -> None:
    path = tmp_path / "events.db"
    healthy_log(path, 2000)
    with EventStore.open_readonly(path) as reader:
        old_last = reader.last_seq()
    size = path.stat().st_size
    page = 4096
    offset = {"header": 0, "inner page": (size // page // 2) * page, "last page": size - page}
    with open(path, "r+b") as f:
        f.seek(offset[where])
        f.write(os.urandom(page))
    damaged = path.read_bytes()
    recorder, inbox, _health = started(path)
    try:
        inbox.put(ev(9999, "alarm.raised"))
        assert recorder.flush(5.0)
        assert recorder.health is None
    finally:
        recorder.stop()
    kept = [
        k for k in tmp_path.glob("events.db.corrupt-*") if not k.name.endswith(("-wal", "-shm"))
    ]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # the evidence, untouched
    with EventStore.open_readonly(path) as reader:
        events = reader.recent(10)
    assert [e.kind for e in events] == ["store.moved_aside", "alarm.raised"]
    assert events[0].details["kept_as"] == str(kept[0])
    assert min(e.seq for e in events) > old_last  # receivers never take it for an old one


def test_a_healthy_log_on_a_full_disk_is_called_a_full_disk_and_never_moved(
    small_disk: SmallDisk,
) -> None:
    path = small_disk.path / "events.db"
    healthy_log(path)
    before = path.read_bytes()
    inode = path.stat().st_ino
    small_disk.fill()
    recorder, inbox, health = started(path)
    try:
        assert recorder.health is not None and recorder.health.startswith("disk full")
        assert health and health[0] is not None and health[0].startswith("disk full")
        assert not list(small_disk.path.glob("events.db.corrupt-*"))
        for i in range(20):
            inbox.put(ev(100 + i, "alarm.raised"))
        assert not recorder.flush(0.5)
        assert recorder.backlog >= 20  # held in memory, in order
        small_disk.free()
        assert recorder.flush(10.0)
        assert recorder.health is None and health[-1] is None
    finally:
        recorder.stop()
    # The same file (a checkpoint may have bumped its change counter, bytes 24-27).
    assert path.stat().st_ino == inode and path.read_bytes()[:24] == before[:24]
    kinds = stored_kinds(path)
    assert kinds.count("alarm.raised") == 20 and "store.recovered" in kinds


def test_a_read_only_store_is_a_fault_at_start(small_disk: SmallDisk) -> None:
    path = small_disk.path / "events.db"
    healthy_log(path)
    small_disk.read_only(True)
    try:
        recorder, inbox, _health = started(path)
        try:
            assert recorder.health is not None and "read-only" in recorder.health
            inbox.put(ev(1, "alarm.raised"))
            assert not recorder.flush(0.5)
            small_disk.read_only(False)
            assert recorder.flush(10.0) and recorder.health is None
        finally:
            recorder.stop()
    finally:
        small_disk.read_only(False)
    assert "alarm.raised" in stored_kinds(path)


def test_a_log_deleted_while_running_is_noticed_and_the_latches_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    latch = LatchFile(tmp_path / "latched.state")
    recorder, inbox, health = started(path, latch_file=latch)
    try:
        inbox.put(ev(1, "alarm.raised"))
        inbox.put(LatchedSnapshot({"wok-1": Level.HIGH}))
        assert recorder.flush(5.0)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        inbox.put(ev(2, "alarm.raised"))
        assert recorder.flush(10.0)
        assert any(h is not None and "deleted" in h for h in health)
        assert health[-1] is None  # a new log is in place
    finally:
        recorder.stop()
    assert path.exists()
    with EventStore.open_readonly(path) as reader:
        assert reader.load_latched() == {"wok-1": Level.HIGH}
        kinds = [e.kind for e in reader.recent(100)]
    assert "store.replaced" in kinds and "alarm.raised" in kinds


def test_disk_full_then_a_crash_keeps_the_latch(small_disk: SmallDisk) -> None:
    path = small_disk.path / "events.db"
    latch = LatchFile(small_disk.path / "latched.state")
    recorder, inbox, _health = started(path, latch_file=latch)
    assert recorder.health is None
    assert (small_disk.path / "latched.state").stat().st_size == SIZE  # room taken at start
    small_disk.fill()
    inbox.put(ev(1, "alarm.raised"))
    inbox.put(LatchedSnapshot({"wok-1": Level.HIGH}))
    assert not recorder.flush(1.0)  # the event log cannot take it
    assert recorder.health is not None and recorder.health.startswith("disk full")
    # The process dies here (no stop, no flush). What does the next start restore?
    restored = union(latched_from_log(path), LatchFile(small_disk.path / "latched.state").load())
    assert restored == {"wok-1": Level.HIGH}
    recorder._abandon.set()  # end the thread (the test's own clean-up)
    recorder.stop(timeout=0.1)


def test_the_latch_file_survives_a_torn_write(tmp_path: Path) -> None:
    latch = LatchFile(tmp_path / "latched.state")
    latch.save({"wok-1": Level.LOW})
    latch.save({"wok-1": Level.HIGH, "wok-2": Level.LOW})
    # A power cut in the middle of the next write: its slot is garbage.
    data = bytearray((tmp_path / "latched.state").read_bytes())
    slot = 2048 * ((latch._generation + 1) % 2)
    data[slot : slot + 40] = os.urandom(40)
    (tmp_path / "latched.state").write_bytes(bytes(data))
    assert LatchFile(tmp_path / "latched.state").load() == {
        "wok-1": Level.HIGH,
        "wok-2": Level.LOW,
    }
    assert LatchFile(tmp_path / "missing.state").load() == {}


def test_enospc_is_what_a_full_tmpfs_gives(small_disk: SmallDisk) -> None:
    """Guards the tests above: the small disk really refuses writes when full."""
    small_disk.fill()
    with pytest.raises(OSError) as e, open(small_disk.path / "more", "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        os.fsync(f.fileno())
    assert e.value.errno == errno.ENOSPC


def test_a_recorder_that_crashes_is_a_store_fault(tmp_path: Path) -> None:
    """A bug in the recorder must not pass unseen: it reports a store fault and ends."""
    recorder, inbox, health = started(tmp_path / "events.db")
    recorder._save_latch = None  # type: ignore[assignment,method-assign]  # the "bug"
    inbox.put(LatchedSnapshot({"wok-1": Level.HIGH}))
    deadline = time.monotonic() + 5
    while not health and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health and health[-1] is not None and "recorder stopped" in health[-1]


def test_the_latch_file_falls_back_to_the_page_cache_where_direct_io_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tmpfs before Linux 6.6 and 4 KiB-sector devices refuse O_DIRECT with EINVAL.
    real_open = os.open

    def no_direct(path: str, flags: int, *args: int) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    latch = LatchFile(tmp_path / "latched.state")
    latch.save({"wok-1": Level.HIGH})
    latch.save({"wok-1": Level.HIGH, "fryer": Level.LOW})
    assert LatchFile(tmp_path / "latched.state").load() == {
        "wok-1": Level.HIGH,
        "fryer": Level.LOW,
    }


def test_a_latch_write_rewrites_whole_sectors_and_keeps_the_other_slot(tmp_path: Path) -> None:
    latch = LatchFile(tmp_path / "latched.state")
    latch.save({"wok-1": Level.LOW})
    before = (tmp_path / "latched.state").read_bytes()
    latch.save({"wok-1": Level.HIGH})
    after = (tmp_path / "latched.state").read_bytes()
    assert len(after) == SIZE
    changed = [i for i in range(SIZE) if before[i] != after[i]]
    # The new record went into the other slot, in whole sectors; the older one is untouched.
    assert changed and min(changed) // SLOT == max(changed) // SLOT
    assert max(changed) - min(changed) < SECTOR
    assert LatchFile(tmp_path / "latched.state").load() == {"wok-1": Level.HIGH}


# -- corrupt while running; a stop with the log still failing ------------------------------------


def test_a_log_that_becomes_corrupt_while_running_is_moved_aside_and_nothing_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 27, item 5: a write error that says the file is corrupt leads to the same check,
    move-aside and new log as at start (it used to retry the broken handle for ever)."""
    path = tmp_path / "events.db"
    healthy_log(path)
    recorder, inbox, _health = started(path)
    real = EventStore.record
    told: list[bool] = []

    def noticing(self: EventStore, *args: Any, **kwargs: Any) -> list[int]:
        if not told:  # SQLite meets the damaged page on the next write, once
            told.append(True)
            raise EventStoreError(f"event store {path}: database disk image is malformed")
        return real(self, *args, **kwargs)

    try:
        inbox.put(ev(1, "alarm.raised"))
        assert recorder.flush(5)
        with path.open("r+b") as f:  # the card damages the file under the running recorder
            f.seek(100)
            f.write(b"\xff" * 4096)
        monkeypatch.setattr(EventStore, "record", noticing)
        for i in range(2, 6):
            inbox.put(ev(i, "alarm.raised"))
        assert recorder.flush(20), recorder.health
    finally:
        recorder.stop()
    assert list(tmp_path.glob("events.db.corrupt-*"))
    kinds = stored_kinds(path)
    assert kinds.count("alarm.raised") >= 4 and "store.moved_aside" in kinds


def test_what_a_stop_could_not_store_is_spilled_and_replayed_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a stop with the log still failing, what is unsaved goes to the spill file beside it
    (it used to be abandoned: ``recorder.abandoned unsaved_items=15`` lost an alarm), and the
    next start stores it first."""
    path = tmp_path / "events.db"
    healthy_log(path)
    recorder, inbox, _health = started(path)

    def failing(*args: object, **kwargs: object) -> list[int]:
        raise EventStoreError(f"event store {path}: cannot write: disk I/O error")

    monkeypatch.setattr(EventStore, "record", failing)
    for i in range(15):
        inbox.put(ev(200 + i, "alarm.raised" if i == 7 else "operator.silence"))
    assert not recorder.flush(0.5)
    recorder.stop(0.2)
    spill = tmp_path / "events.spill"
    assert spill.exists() and len(spill.read_text().splitlines()) == 15
    monkeypatch.undo()
    again, _inbox, _ = started(path)
    try:
        assert again.flush(10)
    finally:
        again.stop()
    with EventStore.open_readonly(path) as reader:
        replayed = [e for e in reader.recent(100) if e.details.get("replayed_from")]
    assert [e.kind for e in replayed].count("alarm.raised") == 1
    assert len(replayed) == 15
    assert not spill.exists()
