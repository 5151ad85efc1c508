"""The durable outbox: order, per-channel delivery state, bounds, crash survival, catch-up from
the event log. Real SQLite files; a real child process killed with SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.core.kinds import is_alarm_class, may_drop
from gateway.core.model import Event
from gateway.paths import outbox_db
from gateway.store.events import EventStore, StoredEvent
from gateway.uplinks.config import UplinkConfig
from gateway.uplinks.manager import Uplinks
from gateway.uplinks.mqtt import MqttConfig
from gateway.uplinks.outbox import (
    FILL_CLEAR,
    FILL_WARN,
    MIN_MAX_ROWS,
    Outbox,
    OutboxError,
)
from tests.uplink_fixtures import Mosquitto, UplinkSite

REPO = Path(__file__).resolve().parents[2]


def ev(
    seq: int, kind: str = "alarm.raised", source: str = "wok-1", **details: object
) -> StoredEvent:
    return StoredEvent(seq, 1_700_000_000.0 + seq, kind, source, dict(details))


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


@pytest.fixture
def box(tmp_path: Path) -> Outbox:
    return Outbox(outbox_db(tmp_path), "hz-001", ["mqtt", "gb26875"])


def test_alarm_class_kinds() -> None:
    for kind in ("alarm.raised", "alarm.cleared", "fault.raised", "valve.closed", "valve.failed"):
        assert is_alarm_class(kind), kind
    assert is_alarm_class("operator.reset") and is_alarm_class("operator.reset_refused")
    for kind in ("controller.started", "operator.silence", "config.applied", "uplink.down"):
        assert not is_alarm_class(kind), kind
    # Never dropped, though not first: every operator action and the log's own state.
    for kind in ("operator.silence", "operator.orphan_cleared", "store.recovered"):
        assert not may_drop(kind), kind
    for kind in ("power.battery_low", "fan.failed", "events.lost"):
        assert is_alarm_class(kind) and not may_drop(kind), kind


def test_items_carry_the_event_and_a_stable_event_id(box: Outbox) -> None:
    box.add(ev(7, "alarm.raised", "wok-1", level="high", lel=62.5))
    [item] = box.peek("mqtt")
    assert (item.seq, item.kind, item.source) == (7, "alarm.raised", "wok-1")
    assert item.details == {"level": "high", "lel": 62.5}
    assert item.utc == 1_700_000_007.0
    assert item.event_id == "hz-001-7"
    assert item.alarm_class


def test_alarm_class_goes_first_and_order_is_kept_within_a_class(box: Outbox) -> None:
    kinds = ["controller.started", "alarm.raised", "operator.silence", "valve.closed", "uplink.up"]
    for seq, kind in enumerate(kinds, start=1):
        box.add(ev(seq, kind))
    assert [i.seq for i in box.peek("mqtt")] == [2, 4, 1, 3, 5]
    assert [i.seq for i in box.peek("mqtt", limit=3)] == [2, 4, 1]


def test_each_channel_has_its_own_delivery_state(box: Outbox, tmp_path: Path) -> None:
    for seq in (1, 2, 3):
        box.add(ev(seq))
    box.ack("mqtt", 1)
    box.ack("mqtt", 2)
    assert [i.seq for i in box.peek("mqtt")] == [3]
    assert [i.seq for i in box.peek("gb26875")] == [1, 2, 3]
    assert (box.pending("mqtt"), box.pending("gb26875")) == (1, 3)
    assert box.unacked_channels(1) == ["gb26875"]
    assert box.unacked_channels(3) == ["gb26875", "mqtt"]
    # Kept until every channel has it, then deleted.
    assert rows(box.path, "items") == 3
    assert box.ack_many("gb26875", [1, 2]) == 2
    assert rows(box.path, "items") == 1
    assert box.unacked_channels(1) == []


def test_acking_twice_or_an_unknown_seq_changes_nothing(box: Outbox) -> None:
    box.add(ev(1))
    box.ack("mqtt", 1)
    box.ack("mqtt", 1)
    box.ack("mqtt", 999)
    assert box.pending("mqtt") == 0
    assert box.pending("gb26875") == 1


def test_an_event_is_taken_in_once(box: Outbox) -> None:
    box.add(ev(1))
    box.add(ev(2))
    box.ack("mqtt", 1)
    box.ack("gb26875", 1)
    box.add(ev(1))  # the recorder never does this; a replay must not resurrect it
    box.add(ev(2))
    assert [i.seq for i in box.peek("mqtt")] == [2]
    assert box.high_water == 2


def test_everything_survives_closing_and_reopening(tmp_path: Path) -> None:
    path = outbox_db(tmp_path)
    box = Outbox(path, "hz-001", ["mqtt", "sms"])
    for seq in range(1, 6):
        box.add(ev(seq, "fault.raised" if seq == 4 else "operator.silence"))
    box.ack("mqtt", 4)
    box.close()
    again = Outbox(path, "hz-001", ["mqtt", "sms"])
    assert [i.seq for i in again.peek("mqtt")] == [1, 2, 3, 5]
    assert [i.seq for i in again.peek("sms")] == [4, 1, 2, 3, 5]
    assert again.high_water == 5
    assert not again.fresh


def test_a_new_channel_gets_what_is_waiting_and_a_removed_one_is_forgotten(tmp_path: Path) -> None:
    path = outbox_db(tmp_path)
    box = Outbox(path, "hz-001", ["mqtt", "gb26875"])
    for seq in (1, 2):
        box.add(ev(seq))
    box.ack("mqtt", 1)
    box.close()
    box = Outbox(path, "hz-001", ["mqtt", "sms"])
    assert [i.seq for i in box.peek("sms")] == [1, 2]
    assert [i.seq for i in box.peek("mqtt")] == [2]
    with pytest.raises(ValueError, match="'gb26875': not configured; configured: mqtt, sms"):
        box.peek("gb26875")
    box.ack("mqtt", 2)
    box.ack_many("sms", [1, 2])
    assert rows(path, "items") == 0


def test_bounds_drop_only_non_alarm_events(tmp_path: Path) -> None:
    box = Outbox(outbox_db(tmp_path), "hz-001", ["mqtt"], max_rows=MIN_MAX_ROWS)
    # 600 alarm-class and 900 others, interleaved: 500 over the bound.
    events = [
        ev(seq, "alarm.raised" if seq % 5 in (0, 2) else "controller.started")
        for seq in range(1, 1501)
    ]
    box.add_many(events[:700])
    for e in events[700:]:
        box.add(e)
    alarms = {e.seq for e in events if is_alarm_class(e.kind)}
    waiting = box.peek("mqtt", limit=5000)
    kept = {i.seq for i in waiting}
    assert alarms <= kept, "an alarm-class event was dropped"
    assert len(kept) == MIN_MAX_ROWS
    assert box.dropped == 500
    others = sorted(kept - alarms)
    # The oldest others went first.
    assert others == [e.seq for e in events if e.seq not in alarms][-(MIN_MAX_ROWS - 600) :]


def test_operator_actions_are_never_dropped_by_the_bounds(tmp_path: Path) -> None:
    """The outbox's bounds and the recorder's drop the same kinds (gateway.core.kinds): an
    operator's silence or an inhibit is evidence, never pruned for room."""
    box = Outbox(outbox_db(tmp_path), "hz-001", ["mqtt"], max_rows=MIN_MAX_ROWS)
    kinds = ("operator.silence", "detector.service_due", "store.recovered", "uplink.down")
    box.add_many([ev(seq, kinds[seq % 4]) for seq in range(1, MIN_MAX_ROWS + 401)])
    kept = [i.kind for i in box.peek("mqtt", limit=5000)]
    assert kept.count("operator.silence") == (MIN_MAX_ROWS + 400) // 4
    assert kept.count("store.recovered") == (MIN_MAX_ROWS + 400) // 4
    assert box.dropped == 400
    assert all(may_drop(k) for k in set(kinds) - set(kept))


def test_alarm_class_events_are_kept_beyond_the_bound(tmp_path: Path) -> None:
    box = Outbox(outbox_db(tmp_path), "hz-001", ["mqtt"], max_rows=MIN_MAX_ROWS)
    box.add_many([ev(seq, "fault.raised") for seq in range(1, MIN_MAX_ROWS + 201)])
    assert box.pending("mqtt") == MIN_MAX_ROWS + 200
    assert box.dropped == 0


def test_the_outbox_warns_before_its_bound_and_clears_with_hysteresis(tmp_path: Path) -> None:
    box = Outbox(outbox_db(tmp_path), "hz-001", ["mqtt"], max_rows=MIN_MAX_ROWS)
    warn_at = int(FILL_WARN * MIN_MAX_ROWS)
    box.add_many([ev(seq, "controller.started") for seq in range(1, warn_at)])
    assert box.fill().warning is None
    box.add(ev(warn_at, "controller.started"))
    fill = box.fill()
    assert fill.rows == warn_at and fill.max_rows == MIN_MAX_ROWS and fill.file_bytes > 0
    assert fill.warning is not None and f"{warn_at} events not acknowledged" in fill.warning
    assert box.dropped == 0  # a warning, before anything is dropped
    # Below the warning level but above the clear level: still warning (no flapping).
    box.ack_many("mqtt", range(1, 51))
    assert box.fill().warning is not None
    box.ack_many("mqtt", range(51, warn_at - int(FILL_CLEAR * MIN_MAX_ROWS) + 2))
    assert box.fill().warning is None


def test_max_age_drops_old_non_alarm_events_only(tmp_path: Path) -> None:
    path = outbox_db(tmp_path)
    box = Outbox(path, "hz-001", ["mqtt"], max_age_s=3600)
    box.add_many([ev(1, "alarm.raised"), ev(2, "controller.started"), ev(3, "config.applied")])
    box.close()
    with sqlite3.connect(path) as conn:  # these two waited for two hours
        conn.execute("UPDATE items SET added = added - 7200 WHERE seq IN (1, 2)")
    box = Outbox(path, "hz-001", ["mqtt"], max_age_s=3600)
    box.add(ev(4, "operator.silence"))
    assert [i.seq for i in box.peek("mqtt")] == [1, 3, 4]
    assert box.dropped == 1


def test_watchers_are_told_after_the_event_is_stored(box: Outbox) -> None:
    seen: list[int] = []
    box.watch(lambda: seen.append(box.pending("mqtt")))
    box.add(ev(1))
    box.add(ev(1))  # nothing new: no wake-up needed, but harmless
    assert seen[0] == 1


def test_a_failing_write_keeps_the_events_in_order_and_writes_them_later(tmp_path: Path) -> None:
    path = outbox_db(tmp_path)
    box = Outbox(path, "hz-001", ["mqtt"], busy_timeout_s=0.05)
    box.add(ev(1))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the file: every write fails
    try:
        box.add(ev(2))
        box.add(ev(3, "controller.started"))
        assert box.failing
        assert box.last_error is not None and "locked" in box.last_error
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    box.add(ev(4))
    assert not box.failing
    assert [i.seq for i in box.peek("mqtt")] == [1, 2, 4, 3]


def _log_and_outbox_with_two(tmp_path: Path, alarms: int) -> tuple[Path, list[int], Outbox]:
    """An event log of ``alarms`` alarms, and an outbox that took in the first two."""
    log_path = tmp_path / "events.db"
    with EventStore(log_path) as store:
        seqs = store.append_many(
            [(time.time(), Event("alarm.raised", f"wok-{i}", 0.0, {"i": i})) for i in range(alarms)]
        )
    box = Outbox(outbox_db(tmp_path), "hz-001", ["mqtt"])
    with EventStore.open_readonly(log_path) as reader:
        box.add_many(reader.since(0)[:2])
    return log_path, seqs, box


def test_catch_up_takes_what_the_event_log_has_and_the_outbox_missed(tmp_path: Path) -> None:
    log_path, seqs, box = _log_and_outbox_with_two(tmp_path, 6)
    path = outbox_db(tmp_path)
    box.ack("mqtt", seqs[0])
    box.close()
    # Restart: events 3..6 reached the event log but not the outbox (killed in between).
    box = Outbox(path, "hz-001", ["mqtt"])
    with EventStore.open_readonly(log_path) as reader:
        assert box.catch_up(reader) == 4
    assert [i.seq for i in box.peek("mqtt")] == seqs[1:]
    assert [i.details for i in box.peek("mqtt")] == [{"i": i} for i in range(1, 6)]


def test_catch_up_racing_the_live_subscription_loses_nothing_and_resends_nothing(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "events.db"
    with EventStore(log_path) as store:
        store.append_many([(time.time(), Event("alarm.raised", "wok-1", 0.0)) for _ in range(5)])
    with EventStore.open_readonly(log_path) as reader:
        stored = reader.since(0)
    box = Outbox(outbox_db(tmp_path), "hz-001", ["mqtt"])
    box.add(stored[0])
    box.close()
    box = Outbox(outbox_db(tmp_path), "hz-001", ["mqtt"])
    # The recorder already delivered 4 and 5 live, and 4 was acknowledged, before catch_up ran.
    box.add(stored[3])
    box.add(stored[4])
    box.ack("mqtt", stored[3].seq)
    with EventStore.open_readonly(log_path) as reader:
        box.catch_up(reader)
    assert [i.seq for i in box.peek("mqtt")] == [stored[i].seq for i in (0, 1, 2, 4)]


def test_a_fresh_outbox_takes_only_the_last_day_of_the_event_log(tmp_path: Path) -> None:
    log_path = tmp_path / "events.db"
    now = time.time()
    with EventStore(log_path) as store:
        store.append(now - 3 * 86400, Event("alarm.raised", "old", 0.0))
        store.append(now - 60, Event("alarm.raised", "recent", 0.0))
    box = Outbox(outbox_db(tmp_path), "hz-001", ["mqtt"])
    assert box.fresh
    with EventStore.open_readonly(log_path) as reader:
        assert box.catch_up(reader) == 1
    assert [i.source for i in box.peek("mqtt")] == ["recent"]


def test_events_survive_sigkill_of_the_writer(tmp_path: Path) -> None:
    """A child adds events and prints each seq once ``add`` returned; it is SIGKILLed mid-run.
    Every seq it reported must be in the outbox afterwards."""
    path = outbox_db(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys, time
        from gateway.store.events import StoredEvent
        from gateway.uplinks.outbox import Outbox
        box = Outbox({str(path)!r}, "hz-001", ["mqtt"])
        for seq in range(1, 100000):
            box.add(StoredEvent(seq, time.time(), "alarm.raised", "wok-1", {{"n": seq}}))
            print(seq, flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    confirmed = 0
    try:
        while confirmed < 150:
            line = child.stdout.readline()
            assert line, "the child died before writing 150 events"
            confirmed = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    box = Outbox(path, "hz-001", ["mqtt"])
    waiting = [i.seq for i in box.peek("mqtt", limit=10_000)]
    assert waiting[:confirmed] == list(range(1, confirmed + 1))
    assert waiting == list(range(1, len(waiting) + 1))  # nothing torn, nothing out of order


def test_a_corrupt_file_is_refused_with_its_name(tmp_path: Path) -> None:
    path = outbox_db(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match=re.escape(f"outbox {path} is corrupt")):
        Outbox(path, "hz-001", ["mqtt"])


def test_a_file_from_a_newer_gasguard_is_refused(tmp_path: Path) -> None:
    path = outbox_db(tmp_path)
    Outbox(path, "hz-001", ["mqtt"]).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 9")
    with pytest.raises(OutboxError, match="schema version 9: this gasguard reads versions up to 1"):
        Outbox(path, "hz-001", ["mqtt"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"site_id": ""}, "site id '': must be a non-empty string"),
        ({"channels": ["mqtt", "mqtt"]}, "channel 'mqtt': listed twice"),
        ({"channels": [""]}, "channel '': must be a non-empty string"),
        ({"max_rows": 10}, "max_rows 10: must be a whole number from 1000"),
        ({"max_age_s": 1}, "max_age_s 1: must be None or seconds from 60"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"site_id": "hz-001", "channels": ["mqtt"]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Outbox(outbox_db(tmp_path), **args)  # type: ignore[arg-type]
    assert not outbox_db(tmp_path).exists()  # refused before anything was written


def test_bad_peek_and_ack_arguments_change_nothing(box: Outbox) -> None:
    box.add(ev(1))
    with pytest.raises(ValueError, match=r"peek limit 0: must be a whole number 1\.\.10000"):
        box.peek("mqtt", 0)
    with pytest.raises(ValueError, match="ack seq -1: must be a whole number >= 1"):
        box.ack_many("mqtt", [1, -1])
    with pytest.raises(ValueError, match="channel 'sms': not configured"):
        box.ack("sms", 1)
    assert box.pending("mqtt") == 1


def test_a_filling_outbox_is_recorded_once_as_an_uplink_event_and_its_end_too(
    tmp_path: Path, mosquitto: Mosquitto, uplink_site: Callable[..., UplinkSite]
) -> None:
    site = uplink_site()
    cfg = UplinkConfig(
        mqtt=MqttConfig(host=mosquitto.host, port=mosquitto.port, tls=False, ack_timeout_s=600.0)
    )
    uplinks = Uplinks(cfg, tmp_path / "data", "hz-001")
    box = uplinks.outbox
    assert box is not None
    box.max_rows = MIN_MAX_ROWS
    uplinks.start(site.ctx)
    try:
        box.add_many([ev(seq, "controller.started") for seq in range(1, MIN_MAX_ROWS)])
        fill = uplinks.check_outbox()
        assert fill is not None and fill["warning"] is not None
        assert uplinks.check_outbox() is not None  # still filling: not recorded again
        box.ack_many("mqtt", range(1, MIN_MAX_ROWS))
        assert (uplinks.check_outbox() or {}).get("warning") is None
    finally:
        uplinks.stop()
        uplinks.close()
    kinds = [(e.kind, e.source) for e in site.logged() if e.kind.startswith("uplink.outbox")]
    assert kinds == [("uplink.outbox_filling", "outbox"), ("uplink.outbox_ok", "outbox")]


def test_catch_up_reports_the_events_that_never_reached_the_outbox(tmp_path: Path) -> None:
    """Issue 27: events rotated out of the log while the uplinks were stopped leave a hole in
    the numbers; catch-up finds it (the service records ``uplink.events_missing``)."""
    log_path, seqs, box = _log_and_outbox_with_two(tmp_path, 8)
    path = outbox_db(tmp_path)
    box.close()
    with sqlite3.connect(log_path) as conn:  # rotated out before the uplinks came back
        conn.execute("DELETE FROM events WHERE seq IN (?, ?, ?)", (seqs[2], seqs[3], seqs[5]))
    box = Outbox(path, "hz-001", ["mqtt"])
    with EventStore.open_readonly(log_path) as reader:
        assert box.catch_up(reader) == 3
    assert box.gaps_found == [(seqs[2], seqs[3]), (seqs[5], seqs[5])]
