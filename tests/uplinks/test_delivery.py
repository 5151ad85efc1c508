"""Every alarm's delivery time per channel and each path's availability (issue 16, item 3),
on a real outbox file with a controlled wall clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.model import Event
from gateway.store.events import StoredEvent
from gateway.uplinks.delivery import DeliveryWatch
from gateway.uplinks.manager import _link_up
from gateway.uplinks.outbox import Outbox

T0 = 1_790_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", "NC-1", ["gb26875", "mqtt"])
    yield box
    box.close()


def event(seq: int, utc: float, kind: str = "alarm.raised") -> StoredEvent:
    return StoredEvent(seq, utc, kind, "wok-1", {"level": "high"})


def ack_after(outbox: Outbox, channel: str, seq: int, raised: float, after_s: float,
              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr("gateway.uplinks.outbox.time.time", lambda: raised + after_s)
    outbox.ack(channel, seq)


def test_alarm_class_acknowledgements_are_timed_per_channel_and_others_are_not(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox.add_many([event(1, T0), event(2, T0, "uplink.down"), event(3, T0 + 5)])
    ack_after(outbox, "gb26875", 1, T0, 0.4, monkeypatch)
    ack_after(outbox, "mqtt", 1, T0, 2.5, monkeypatch)
    ack_after(outbox, "gb26875", 2, T0, 0.1, monkeypatch)  # not an alarm-class event
    ack_after(outbox, "gb26875", 3, T0 + 5, 12.0, monkeypatch)
    rows = outbox.deliveries(T0 - 1)
    assert [(c, s, round(a - r, 3)) for c, s, _, r, a in rows] == [
        ("gb26875", 1, 0.4),
        ("mqtt", 1, 2.5),
        ("gb26875", 3, 12.0),
    ]


def test_the_summary_gives_percentiles_and_warns_once_of_a_slow_alarm(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded: list[Event] = []
    clock = Clock()
    watch = DeliveryWatch(outbox, recorded.append, wall=clock)
    outbox.add_many([event(s, T0 + s) for s in range(1, 21)])
    for s in range(1, 21):
        ack_after(outbox, "gb26875", s, T0 + s, 0.1 * s, monkeypatch)  # 0.1 .. 2.0 s
    ack_after(outbox, "mqtt", 20, T0 + 20, 14.0, monkeypatch)
    clock.now = T0 + 60
    summary = watch.tick({"gb26875": True, "mqtt": True})
    assert summary is not None
    gb = summary["channels"]["gb26875"]["24h"]
    assert (gb["count"], gb["p50_s"], gb["p95_s"], gb["max_s"]) == (20, 1.0, 1.9, 2.0)
    assert summary["channels"]["mqtt"]["7d"]["max_s"] == 14.0
    assert summary["warnings"] == [
        "mqtt: 1 alarm(s) acknowledged more than 10 s after they were raised in the last 24 h "
        "(worst 14.0 s)"
    ]
    assert [(e.kind, e.source, e.details["after_s"]) for e in recorded] == [
        ("uplink.delivery_slow", "mqtt", 14.0)
    ]
    clock.now += 20
    watch.tick({"gb26875": True, "mqtt": True})
    assert len([e for e in recorded if e.kind == "uplink.delivery_slow"]) == 1  # once each


def test_availability_counts_link_time_by_the_hour_and_warns_below_95_percent(
    outbox: Outbox,
) -> None:
    recorded: list[Event] = []
    clock = Clock()
    watch = DeliveryWatch(outbox, recorded.append, wall=clock)
    watch.tick({"gb26875": True, "mqtt": True})
    for _ in range(90):  # 90 minutes: MQTT down for the last 30
        clock.now += 60
        watch.tick({"gb26875": True, "mqtt": clock.now - T0 <= 3600})
    clock.now += 11  # the summary is worked out again
    summary = watch.tick({"gb26875": True, "mqtt": False})
    assert summary is not None
    assert summary["channels"]["gb26875"]["7d"]["availability"] == 1.0
    mqtt = summary["channels"]["mqtt"]["7d"]["availability"]
    assert mqtt == pytest.approx(3600 / 5411, abs=0.01)
    assert any(w.startswith("mqtt: link up 66.") for w in summary["warnings"])
    assert [(e.kind, e.source) for e in recorded] == [("uplink.availability_low", "mqtt")]
    # The hours are stored: a new watch (a restart) sees them.
    watch.flush()
    again = DeliveryWatch(outbox, recorded.append, wall=clock).tick({})
    assert again is not None
    assert again["channels"]["mqtt"]["7d"]["availability"] == pytest.approx(mqtt, abs=0.01)


def test_a_link_is_up_when_connected_or_its_modem_answers() -> None:
    assert _link_up({"connected": True}) and not _link_up({"connected": False})
    assert _link_up({"modem_ok": True}) and not _link_up({"modem_ok": None})
    assert not _link_up(None)
