"""What waits for the event log is bounded by class (issue 27, item 4): the recorder's inbox
turns droppable events away when full and counts them; its backlog drops the oldest droppable
event in O(1), keeps every never-dropped one within a memory budget and, beyond it, keeps the
oldest and the newest and records the loss (``events.lost``) once the log can be written."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.core.kinds import EVENTS_LOST
from gateway.core.model import Event
from gateway.store import recorder as recorder_module
from gateway.store.backlog import Backlog, RecorderInbox, event_size
from gateway.store.events import EventStore
from gateway.store.recorder import Recorder, RecorderItem, droppable, new_inbox
from tests.conftest import SmallDisk

UTC0 = 1_764_300_000.0


def ev(i: int, kind: str) -> tuple[float, Event]:
    return UTC0 + i, Event(kind, "site", float(i), {"i": i})


def of(item: tuple[float, Event]) -> tuple[float, Event] | None:
    return item


def test_the_backlog_drops_the_oldest_droppable_events_and_keeps_the_order() -> None:
    size = event_size(ev(0, "uplink.down")[1])
    backlog: Backlog[tuple[float, Event]] = Backlog(of, max_droppable_bytes=10 * size)
    for i in range(30):
        backlog.append(ev(i, "uplink.down" if i % 3 else "operator.silence"))
    kinds = [e.kind for _, e in backlog.head(100)]
    assert kinds.count("operator.silence") == 10  # never dropped
    assert 8 <= kinds.count("uplink.down") <= 10  # the budget (sizes differ by a digit)
    assert backlog.dropped == 20 - kinds.count("uplink.down")
    kept = [int(e.details["i"]) for _, e in backlog.head(100)]
    assert kept == sorted(kept)  # arrival order, across both classes
    assert kept[-1] == 29 and 1 not in kept  # the oldest droppable went first
    backlog.pop_head(5)
    assert [int(e.details["i"]) for _, e in backlog.head(100)] == kept[5:]


def test_beyond_its_budget_the_backlog_keeps_the_oldest_and_newest_alarm() -> None:
    size = event_size(ev(0, "alarm.raised")[1])
    backlog: Backlog[tuple[float, Event]] = Backlog(of, max_kept_bytes=5 * size)
    for i in range(100):
        backlog.append(ev(i, "alarm.raised" if i % 2 else "power.battery_low"))
    kept = [int(e.details["i"]) for _, e in backlog.head(100)]
    assert kept[0] == 0 and kept[-1] == 99 and len(kept) <= 5
    assert backlog.loss.count == 100 - len(kept)
    assert set(backlog.loss.kinds) == {"alarm.raised", "power.battery_low"}
    assert backlog.loss.first_utc == UTC0 + 1


def test_the_inbox_counts_what_waits_and_turns_droppable_events_away_when_full() -> None:
    inbox: RecorderInbox[RecorderItem] = RecorderInbox(droppable, max_items=10)
    for i in range(10):
        inbox.put(ev(i, "uplink.down"))
    inbox.put(ev(10, "uplink.down"))  # full: turned away, counted
    inbox.put(ev(11, "fan.failed"))  # never dropped: in, whatever the count
    inbox.put(ev(12, "power.battery_low"))
    assert inbox.waiting == 12 and inbox.dropped == 1
    got = [inbox.get_nowait() for _ in range(12)]
    assert inbox.waiting == 0
    kinds = [item[1].kind for item in got if isinstance(item, tuple)]
    assert kinds[-2:] == ["fan.failed", "power.battery_low"]


def _failing_card(small_disk: SmallDisk, kept: int, droppable: int) -> tuple[Path, Recorder]:
    path = small_disk.path / "events.db"
    EventStore(path, 10_000).close()
    small_disk.fill()
    recorder = Recorder(
        path, 10_000, new_inbox(), retry_max_s=0.2,
        max_kept_bytes=kept * event_size(ev(1000, "alarm.raised")[1]),
        max_droppable_bytes=droppable * event_size(ev(1000, "uplink.down")[1]),
    )  # fmt: skip
    recorder.start()
    return path, recorder


def _after_recovery(small_disk: SmallDisk, path: Path, recorder: Recorder) -> list[Event]:
    try:
        assert not recorder.flush(1.0)
        small_disk.free()
        assert recorder.flush(20.0)
    finally:
        recorder.stop()
    with EventStore.open_readonly(path) as reader:
        return [Event(e.kind, e.source, 0.0, e.details) for e in reader.recent(10_000)]


def test_a_flood_while_the_card_fails_drops_no_fan_or_power_event(
    small_disk: SmallDisk,
) -> None:
    """The defect: the backlog's bound dropped ``fan.failed`` and ``power.battery_low`` as
    "not alarms" while the outbox promised never to drop them."""
    path, recorder = _failing_card(small_disk, kept=1000, droppable=20)
    for i in range(10):
        recorder.inbox.put(ev(i, "fan.failed"))
        recorder.inbox.put(ev(10 + i, "power.battery_low"))
    for i in range(300):
        recorder.inbox.put(ev(100 + i, "uplink.down"))
    deadline = time.monotonic() + 10
    while recorder.dropped < 250 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recorder.dropped >= 250
    events = _after_recovery(small_disk, path, recorder)
    kinds = [e.kind for e in events]
    assert kinds.count("fan.failed") == 10 and kinds.count("power.battery_low") == 10
    assert EVENTS_LOST not in kinds
    recovered = next(e for e in events if e.kind == "store.recovered")
    assert recovered.details["events_dropped"] >= 250


def test_beyond_the_memory_budget_the_first_and_last_alarms_stay_and_the_loss_is_recorded(
    small_disk: SmallDisk,
) -> None:
    path, recorder = _failing_card(small_disk, kept=20, droppable=20)
    for i in range(60):
        recorder.inbox.put(ev(1000 + i, "alarm.raised"))
    events = _after_recovery(small_disk, path, recorder)
    alarms = [int(e.details["i"]) for e in events if e.kind == "alarm.raised"]
    assert 1000 in alarms and 1059 in alarms  # the oldest and the newest
    lost = [e for e in events if e.kind == EVENTS_LOST]
    assert len(lost) == 1 and lost[0].details["count"] == 60 - len(alarms)
    assert lost[0].details["kinds"] == {"alarm.raised": 60 - len(alarms)}


def test_the_safety_process_inbox_is_the_bounded_one() -> None:
    from gateway.safety.controller import Controller  # the wiring, not a copy of it

    assert "new_inbox()" in Path(Controller.__init__.__code__.co_filename).read_text()


def test_what_the_inbox_turns_away_is_logged_once_a_second_with_a_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = new_inbox()
    inbox.max_items = 5
    for i in range(50):  # nobody drains yet: 45 turned away
        inbox.put(ev(i, "uplink.down"))
    lines: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setattr(recorder_module, "error", lambda event, **f: lines.append((event, f)))
    recorder = Recorder(tmp_path / "events.db", 10_000, inbox)
    recorder.start()
    try:
        assert recorder.flush(10)
    finally:
        recorder.stop()
    dropped = [f for event, f in lines if event == "recorder.inbox_dropped"]
    assert len(dropped) == 1 and dropped[0]["events"] == 45
