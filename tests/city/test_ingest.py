"""Ingest against a real mosquitto and a real PostgreSQL: stored once, acknowledged only after
the commit, duplicates harmless, gaps shown, bad messages refused with a reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from city.config import CityConfig
from city.devcluster import Cluster
from gateway.uplinks.mqtt.channel import MqttChannel
from gateway.uplinks.mqtt.config import MqttConfig
from tests.city.conftest import SITE, RunningWorker, rows
from tests.city.kitchens import BareKitchen, event_doc
from tests.uplink_fixtures import Mosquitto, UplinkSite, wait_for


def test_a_real_gateways_events_are_stored_once_and_leave_its_outbox_only_then(
    mosquitto: Mosquitto,
    uplink_site: Callable[..., UplinkSite],
    workers: Callable[..., RunningWorker],
    city_dsn: str,
) -> None:
    workers("w1")
    workers("w2")
    site = uplink_site(site_id=SITE)
    cfg = MqttConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        tls=False,
        ack_timeout_s=2.0,
        reconnect_min_s=1,
        reconnect_max_s=1,
    )
    channel = MqttChannel(cfg, site.outbox, site.ctx)
    channel.start()
    try:
        site.emit("alarm.raised", "wok-1", level="high", lel=62.0, zone="hot-kitchen")
        site.emit("valve.closing", "main", reason="high alarm at wok-1")
        site.emit("valve.closed", "main", confirmed=True)
        site.flush()
        assert wait_for(lambda: site.outbox.pending("mqtt") == 0, 15), "not acknowledged"
    finally:
        channel.stop()
    logged = [(e.seq, e.kind) for e in site.logged()]
    stored = rows(city_dsn, "SELECT seq, kind FROM events WHERE site_id = %s ORDER BY seq", SITE)
    # Every event the kitchen logged, once, with its own numbers.
    assert [tuple(r) for r in stored] == logged
    assert [k for _, k in logged] == ["alarm.raised", "valve.closing", "valve.closed"]
    (incident,) = rows(
        city_dsn,
        "SELECT category, source, severity, state, title_zh, district_id FROM incidents"
        " JOIN sites USING (site_id)",
    )
    assert incident == ("gas", "wok-1", 3, "new", "燃气泄漏高限报警：wok-1（62.0 %LEL）", "xihu")


def test_nothing_is_acknowledged_while_the_database_is_down_and_all_of_it_after(
    pg_cluster: Cluster,
    workers: Callable[..., RunningWorker],
    kitchen: Callable[..., BareKitchen],
    city_dsn: str,
) -> None:
    workers()
    k = kitchen()
    k.event(1)
    assert k.wait_acks({1})
    pg_cluster.stop()
    try:
        k.event(2, "fault.raised", "fryer-1", fault="comm")
        k.event(3, "valve.closed", "main")
        time.sleep(1.5)
        assert k.acked() == [1], "acknowledged without being stored"
    finally:
        pg_cluster.start()
    assert k.wait_acks({1, 2, 3}, 20)
    assert [r[0] for r in rows(city_dsn, "SELECT seq FROM events ORDER BY seq")] == [1, 2, 3]


def test_a_resent_event_is_acknowledged_again_and_stored_once(
    workers: Callable[..., RunningWorker], kitchen: Callable[..., BareKitchen], city_dsn: str
) -> None:
    workers()
    k = kitchen()
    doc = event_doc(SITE, 1, "alarm.raised", "wok-1", level="low", lel=22.0)
    k.send(doc)
    k.send(doc)
    assert wait_for(lambda: k.acked() == [1, 1], 10), k.acked()
    assert rows(city_dsn, "SELECT count(*) FROM events") == [(1,)]
    assert rows(city_dsn, "SELECT repeats FROM incidents") == [(0,)]


def test_a_gap_in_a_sites_sequence_is_counted_until_it_is_filled(
    workers: Callable[..., RunningWorker], kitchen: Callable[..., BareKitchen], city_dsn: str
) -> None:
    from city.queries import gaps

    workers()
    k = kitchen()
    for seq in (1, 2, 5):
        k.event(seq, "valve.closed", "main")
    assert k.wait_acks({1, 2, 5})
    assert rows(city_dsn, "SELECT max_seq - stored FROM sites") == [(2,)]
    assert _gaps(city_dsn, gaps) == [(SITE, 3, 4)]
    k.event(3, "valve.closed", "main")
    k.event(4, "valve.closed", "main")
    assert k.wait_acks({3, 4})
    assert rows(city_dsn, "SELECT max_seq - stored FROM sites") == [(0,)]
    assert _gaps(city_dsn, gaps) == []


def _gaps(dsn: str, gaps: Any) -> list[tuple[str, int, int]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return [(g.site_id, g.first, g.last) for g in gaps(conn, [SITE])]


@pytest.mark.parametrize(
    ("what", "topic", "payload"),
    [
        ("not JSON", "gasguard/hz-001/event", b"\xff\xfe not json"),
        ("a list", "gasguard/hz-001/event", b"[1, 2]"),
        (
            "wrong schema",
            "gasguard/hz-001/event",
            json.dumps({**event_doc(SITE, 7, "alarm.raised", "wok-1"), "schema": "x/9"}).encode(),
        ),
        (
            "another site's event",
            "gasguard/hz-001/event",
            json.dumps(event_doc("hz-gs-9", 7, "alarm.raised", "wok-1")).encode(),
        ),
        (
            "seq zero",
            "gasguard/hz-001/event",
            json.dumps(
                {**event_doc(SITE, 7, "alarm.raised", "wok-1"), "seq": 0, "event_id": "hz-001-0"}
            ).encode(),
        ),
        (
            "huge",
            "gasguard/hz-001/event",
            json.dumps(event_doc(SITE, 7, "alarm.raised", "wok-1", blob="x" * 70_000)).encode(),
        ),
        (
            "a NUL",
            "gasguard/hz-001/event",
            json.dumps(event_doc(SITE, 7, "alarm.raised", "wok\x00-1")).encode(),
        ),
        ("bad site id", "gasguard/hz 001!/event", b"{}"),
        (
            "status of another site",
            "gasguard/hz-001/status",
            json.dumps(
                {"schema": "gasguard.status/1", "site_id": "hz-002", "state": "online"}
            ).encode(),
        ),
        (
            "heartbeat with a negative backlog",
            "gasguard/hz-001/heartbeat",
            json.dumps({"site_id": SITE, "pending": -4}).encode(),
        ),
    ],
)
def test_a_bad_message_is_refused_with_its_reason_and_the_worker_goes_on(
    what: str,
    topic: str,
    payload: bytes,
    workers: Callable[..., RunningWorker],
    kitchen: Callable[..., BareKitchen],
    city_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w = workers()
    k = kitchen()
    k.client.publish(topic, payload, qos=1).wait_for_publish(5)
    k.event(1, "valve.closed", "main")  # a good one after it
    assert k.wait_acks({1})
    assert k.acked() == [1], f"{what}: acknowledged"
    assert rows(city_dsn, "SELECT site_id, seq FROM events") == [(SITE, 1)], what
    assert rows(city_dsn, "SELECT count(*) FROM incidents") == [(0,)], what
    assert w.worker.counters.rejected == 1, what
    logged = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    rejected = [r for r in logged if r["event"] == "ingest.rejected"]
    assert len(rejected) == 1 and rejected[0]["reason"], what


def test_one_workers_death_does_not_stop_ingest(
    city_config: Callable[..., CityConfig],
    kitchen: Callable[..., BareKitchen],
    city_dsn: str,
    tmp_path: Path,
) -> None:
    cfg = city_config()
    logs = [tmp_path / f"w{n}.log" for n in (1, 2)]
    procs = []
    for n, path in enumerate(logs, 1):
        with path.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "city.cli",
                        "--config",
                        str(cfg.path),
                        "ingest",
                        "--name",
                        f"w{n}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        assert wait_for(lambda: all("ingest.connected" in p.read_text() for p in logs), 20), (
            "the workers did not connect"
        )
        time.sleep(0.3)  # their subscriptions are in
        k = kitchen()
        for seq in range(1, 21):
            k.event(seq, "valve.closed", "main")
        assert k.wait_acks(set(range(1, 21)), 15)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(5)
        for seq in range(21, 61):
            k.event(seq, "valve.closed", "main")
        # As the kitchen's outbox does: re-send what is not acknowledged (what the dead worker
        # held when it died).
        deadline = time.monotonic() + 30
        while set(range(21, 61)) - set(k.acked()) and time.monotonic() < deadline:
            time.sleep(1.0)
            for seq in sorted(set(range(21, 61)) - set(k.acked())):
                k.event(seq, "valve.closed", "main")
        assert set(range(1, 61)) <= set(k.acked())
        assert rows(
            city_dsn, "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM events"
        ) == [(60, 60, 1, 60)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
