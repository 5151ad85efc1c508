"""The watch: silent sites become incidents, unacknowledged incidents climb the ladder to an
emulated SMS gateway and webhook receivers, and every step is on the incident's timeline."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from city.config import CityConfig, load
from city.watch import Watch
from tests.city.conftest import SITE, RunningWorker, rows
from tests.city.kitchens import BareKitchen
from tests.uplink_fixtures import wait_for


class Receiver:
    """An emulated SMS gateway / webhook endpoint: records each POSTed JSON by path; answers
    ``status`` (500 plays a receiver that is down)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((self.path, json.loads(body)))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def watch_config(city_config: Callable[..., CityConfig], receiver: Receiver) -> CityConfig:
    cfg = city_config(
        """
[[escalation]]
after_s = 60
to = "district"

[[escalation]]
after_s = 180
to = "fire"
"""
    )
    # The desk's SMS and fire-centre endpoints point at the emulated receiver.
    text = cfg.path.read_text(encoding="utf-8").replace(
        "watch_every_s = 0.2",
        f'watch_every_s = 0.2\nsms_url = "{receiver.url}/sms"\n'
        f'fire_webhook = "{receiver.url}/fire"\nfire_phone = "+86 119"',
    )
    text = text.replace(
        'duty_phone = "+86 571 0000 0001"',
        f'duty_phone = "+86 571 0000 0001"\nwebhook = "{receiver.url}/xihu"',
    )
    cfg.path.write_text(text, encoding="utf-8")
    return load(cfg.path)


def _age(dsn: str, seconds: float, table: str = "incidents", column: str = "stored_at") -> None:
    """Make every row ``seconds`` older (instead of waiting in the test)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"UPDATE {table} SET {column} = {column} - make_interval(secs => %s)",
            (seconds,),
        )


def _stored(
    cfg: CityConfig,
    workers: Callable[..., RunningWorker],
    kitchen: Callable[..., BareKitchen],
    *events: tuple[str, str, dict[str, Any]],
) -> BareKitchen:
    """A worker running on ``cfg``, and ``events`` (kind, source, details) from the test's
    kitchen, stored and acknowledged."""
    workers(cfg=cfg)
    k = kitchen(SITE)
    for seq, (kind, source, details) in enumerate(events, 1):
        k.event(seq, kind, source, **details)
    assert k.wait_acks(set(range(1, len(events) + 1)))
    return k


def test_an_unacknowledged_alarm_goes_to_the_district_then_the_fire_centre(
    watch_config: CityConfig,
    receiver: Receiver,
    workers: Callable[..., RunningWorker],
    kitchen: Callable[..., BareKitchen],
) -> None:
    cfg = watch_config
    _stored(cfg, workers, kitchen, ("alarm.raised", "wok-1", {"level": "high", "lel": 62.0}))
    watch = Watch(cfg)
    watch.round()
    assert receiver.received == []  # not yet due
    _age(cfg.dsn, 61)
    watch.round()
    paths = [p for p, _ in receiver.received]
    assert paths == ["/sms", "/xihu"]
    sms = receiver.received[0][1]
    assert sms["to"] == "+86 571 0000 0001"
    assert sms["text"].startswith("【燃气报警未确认】燃气泄漏高限报警：wok-1")
    assert receiver.received[1][1]["site_id"] == SITE and receiver.received[1][1]["level"] == 1
    watch.round()
    assert len(receiver.received) == 2  # a step is taken once
    _age(cfg.dsn, 120)
    watch.round()
    assert [p for p, _ in receiver.received] == ["/sms", "/xihu", "/sms", "/fire"]
    assert receiver.received[2][1]["to"] == "+86 119"
    steps = rows(cfg.dsn, "SELECT actor, action FROM incident_log ORDER BY id")
    assert steps == [
        ("kitchen", "opened"),
        ("watch", "escalated to district"),
        ("watch", "escalated to fire"),
    ]
    sent = rows(cfg.dsn, "SELECT level, channel, ok FROM notifications ORDER BY id")
    assert sent == [(1, "sms", True), (1, "webhook", True), (2, "sms", True), (2, "webhook", True)]


def test_an_acknowledged_alarm_is_not_escalated_and_a_failed_message_is_on_the_timeline(
    watch_config: CityConfig,
    receiver: Receiver,
    workers: Callable[..., RunningWorker],
    kitchen: Callable[..., BareKitchen],
) -> None:
    cfg = watch_config
    _stored(
        cfg,
        workers,
        kitchen,
        ("alarm.raised", "wok-1", {"level": "high", "lel": 62.0}),
        ("fault.raised", "fryer-1", {"fault": "comm"}),
    )
    with psycopg.connect(cfg.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE incidents SET state = 'acknowledged', acked_at = now(), acked_by = 'li.wei'"
            " WHERE category = 'gas'"
        )
    receiver.status = 500
    _age(cfg.dsn, 61)
    Watch(cfg).round()
    bodies = [b for _, b in receiver.received]
    assert all("fryer-1" in json.dumps(b, ensure_ascii=False) for b in bodies) and bodies
    failed = rows(
        cfg.dsn,
        "SELECT i.category, l.action FROM incident_log l JOIN incidents i ON i.id = l.incident_id"
        " WHERE l.action LIKE '%%failed'",
    )
    assert failed == [("fault", "sms failed"), ("fault", "webhook failed")]
    assert rows(cfg.dsn, "SELECT escalation FROM incidents WHERE category = 'gas'") == [(0,)]


def test_a_silent_site_is_an_incident_until_it_speaks_and_an_officer_closes_it(
    watch_config: CityConfig,
    workers: Callable[..., RunningWorker],
    kitchen: Callable[..., BareKitchen],
) -> None:
    cfg = watch_config
    k = _stored(cfg, workers, kitchen, ("controller.started", "site", {}))
    watch = Watch(cfg)
    watch.round()
    assert rows(cfg.dsn, "SELECT count(*) FROM incidents") == [(0,)]
    _age(cfg.dsn, cfg.desk.silent_after_s + 1, "sites", "last_seen")
    watch.round()
    watch.round()  # one incident, not one per round
    (silent,) = rows(cfg.dsn, "SELECT category, severity, title_en, cleared_at FROM incidents")
    assert silent[0] == "silent" and silent[3] is None
    assert silent[2].startswith(f"Site silent: nothing from {SITE}")
    k.heartbeat()
    assert wait_for(
        lambda: rows(cfg.dsn, "SELECT cleared_at IS NOT NULL FROM incidents") == [(True,)], 10
    )
    assert rows(cfg.dsn, "SELECT state FROM incidents") == [("new",)]  # a person closes it
