"""Rotation never deletes what the uplinks have not taken in (issue 27, item 3): above the
uplinks' reported high-water mark the event log keeps every alarm-class event and a bounded
number of other never-dropped ones; whatever rotation must delete there is recorded as
``events.lost`` with its seq range, and the uplinks report any hole they meet."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.core.kinds import EVENTS_LOST
from gateway.core.model import Event
from gateway.paths import outbox_db
from gateway.store.events import EventStore, forwarded_from_log
from gateway.store.recorder import Recorder, new_inbox
from gateway.uplinks.outbox import Outbox, missing_seqs
from gateway.uplinks.service import EventFollower

UTC0 = 1_764_300_000.0
CAPACITY = 999


def ev(i: int, kind: str) -> tuple[float, Event]:
    return UTC0 + i, Event(kind, "site", float(i), {"i": i})


def flood(store: EventStore, forwarded: int | None, kind: str, n: int, start: int = 1) -> None:
    for b in range(start, start + n, 100):
        store.record([ev(i, kind) for i in range(b, min(b + 100, start + n))], forwarded=forwarded)


def test_an_alarm_the_uplinks_have_not_taken_in_is_never_rotated_out(tmp_path: Path) -> None:
    """The campaign's case: the uplinks stopped, a flood of their own records (droppable)."""
    with EventStore(tmp_path / "events.db", CAPACITY) as store:
        (alarm,) = store.record([ev(0, "alarm.raised")], forwarded=0)
        flood(store, 0, "uplink.outbox_ok", 5000)
        events = store.since(0, 100_000)
    assert alarm in [e.seq for e in events]
    lost = [e for e in events if e.kind == EVENTS_LOST]
    assert lost and all(e.details["forwarded_seq"] == 0 for e in lost)
    counted = sum(int(e.details["count"]) for e in lost)
    floods = [e for e in events if e.kind == "uplink.outbox_ok"]
    assert counted == 5000 - len(floods)  # every rotated record is accounted for
    assert len(events) <= CAPACITY + CAPACITY // 10 + len(lost) + 1


def test_other_never_dropped_events_are_kept_up_to_a_bound_and_the_rest_recorded(
    tmp_path: Path,
) -> None:
    with EventStore(tmp_path / "events.db", CAPACITY) as store:
        (alarm,) = store.record([ev(0, "alarm.raised")], forwarded=0)
        flood(store, 0, "console.note", 4000)
        events = store.since(0, 100_000)
    assert alarm in [e.seq for e in events]  # alarms come only from the core: always kept
    notes = [e for e in events if e.kind == "console.note"]
    assert CAPACITY <= len(notes) <= 2 * CAPACITY + CAPACITY // 10
    counted = sum(int(e.details["count"]) for e in events if e.kind == EVENTS_LOST)
    assert counted == 4000 - len(notes)


def test_below_the_mark_and_without_uplinks_rotation_is_plain(tmp_path: Path) -> None:
    for forwarded in (None, 10**15):  # seqs count from the time in ms (~1.8e12)
        with EventStore(tmp_path / f"events-{forwarded}.db", CAPACITY) as store:
            store.record([ev(0, "alarm.raised")], forwarded=forwarded)
            flood(store, forwarded, "uplink.outbox_ok", 3000)
            events = store.since(0, 100_000)
        assert "alarm.raised" not in [e.kind for e in events]  # forwarded, or nobody waits
        assert EVENTS_LOST not in [e.kind for e in events]
        assert len(events) < CAPACITY + CAPACITY // 10


def test_the_recorder_keeps_the_uplinks_mark_durable_and_rotates_by_it(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    mark = [0]
    inbox = new_inbox()
    recorder = Recorder(path, CAPACITY, inbox, forwarded=lambda: mark[0])
    recorder.start()
    try:
        inbox.put(ev(0, "alarm.raised"))
        assert recorder.flush(10)
        for i in range(1, 3001):
            inbox.put(ev(i, "uplink.outbox_ok"))
        assert recorder.flush(30)
        mark[0] = 42
        inbox.put(ev(3001, "uplink.outbox_ok"))
        assert recorder.flush(10)
    finally:
        recorder.stop()
    with EventStore.open_readonly(path) as reader:
        kinds = [e.kind for e in reader.since(0, 100_000)]
    assert "alarm.raised" in kinds and EVENTS_LOST in kinds
    assert forwarded_from_log(path) == 42  # a restart starts from the mark, not from 0


def test_holes_in_the_numbers_are_found() -> None:
    assert missing_seqs(10, [11, 12, 15, 16, 20]) == [(13, 14), (17, 19)]
    assert missing_seqs(10, [14]) == [(11, 13)]
    assert missing_seqs(0, [500, 501]) == []  # a fresh outbox has no "before"


def test_the_follower_reports_events_that_never_reached_the_outbox(tmp_path: Path) -> None:
    log = tmp_path / "events.db"
    with EventStore(log, CAPACITY) as store:
        seqs = store.record([ev(i, "alarm.raised") for i in range(6)])
    box = Outbox(outbox_db(tmp_path), "hz-001", ["mqtt"])
    holes: list[tuple[int, int]] = []
    follower = EventFollower(log, box, on_gap=lambda a, b: holes.append((a, b)))
    try:
        with EventStore.open_readonly(log) as reader:
            follower.step(reader)
        assert holes == [] and box.high_water == seqs[-1]
        with EventStore(log, CAPACITY) as store:
            more = store.record([ev(i, "alarm.raised") for i in range(6, 10)])
        with sqlite3.connect(log) as conn:  # rotated out before the uplinks read them
            conn.execute("DELETE FROM events WHERE seq IN (?, ?)", (more[0], more[1]))
        with EventStore.open_readonly(log) as reader:
            follower.step(reader)
        assert holes == [(more[0], more[1])]
    finally:
        follower.watch.close()
        box.close()
