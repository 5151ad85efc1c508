"""The desk over HTTP against real PostgreSQL and mosquitto: log-in, districts, the officers'
actions and their record, the live feed, sessions that end, and no path to a valve."""

from __future__ import annotations

import ast
import http.cookiejar
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.city.conftest import OPERATORS, SITE, Desk, RunningWorker, rows
from tests.city.kitchens import BareKitchen

REPO = Path(__file__).resolve().parents[2]


class Browser:
    """An HTTP client with its own cookies, as one operator's browser."""

    def __init__(self, desk: Desk) -> None:
        self.url = desk.url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def login(self, name: str, password: str | None = None) -> str:
        """Log in; the final URL after the redirect."""
        form = urllib.parse.urlencode(
            {"name": name, "password": password or OPERATORS[name][2]}
        ).encode()
        with self.opener.open(f"{self.url}/login", form, timeout=10) as reply:
            return str(reply.geturl())

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with self.opener.open(f"{self.url}{path}", timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(self, path: str, doc: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.url}{path}",
            json.dumps(doc).encode(),
            {"Content-Type": "application/json"},
        )
        try:
            with self.opener.open(request, timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


class Feed:
    """The desk's live feed as a page reads it: a raw GET /api/events with the session cookie;
    ``until(name)`` reads events up to the first named ``name``."""

    def __init__(self, desk: Desk, browser: Browser, timeout: float = 15.0) -> None:
        (token,) = [c.value for c in browser.jar]
        host, port = desk.server.server_address[:2]
        self.sock = socket.create_connection((str(host), port), timeout=timeout)
        self.sock.sendall(
            f"GET /api/events HTTP/1.1\r\nHost: x\r\nCookie: gg_session={token}\r\n\r\n".encode()
        )
        self.stream = self.sock.makefile("rb")
        assert self.stream.readline().startswith(b"HTTP/1.0 200")

    def until(self, wanted: str, timeout: float = 10.0) -> list[tuple[str, Any]]:
        """(name, data) of each event read, the last one named ``wanted`` (or the timeout)."""
        deadline = time.monotonic() + timeout
        events: list[tuple[str, Any]] = []
        name = ""
        while time.monotonic() < deadline and not any(e[0] == wanted for e in events):
            line = self.stream.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
        return events

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def _alarm(kitchen: BareKitchen, seq: int = 1, source: str = "wok-1") -> None:
    kitchen.event(seq, "alarm.raised", source, level="high", lel=62.0)
    assert kitchen.wait_acks({seq})


def test_a_wrong_password_logs_nobody_in_and_is_audited(desk: Desk) -> None:
    b = Browser(desk)
    assert b.login("li.wei", "not-the-password").endswith("/login?failed=1")
    assert b.get("/api/incidents")[0] == 401
    assert b.login("li.wei").endswith("/")
    assert b.get("/api/me") == (
        200,
        {"name": "li.wei", "display_name": "Li Wei", "role": "officer", "district": "xihu"},
    )
    actions = rows(desk.cfg.dsn, "SELECT operator, action FROM audit ORDER BY id")
    assert ("li.wei", "login.failed") in actions and ("li.wei", "login") in actions
    # Only a hash of the password and of the session token is stored.
    (stored,) = rows(desk.cfg.dsn, "SELECT password_hash FROM operators WHERE name = 'li.wei'")
    assert stored[0].startswith("$argon2id$") and OPERATORS["li.wei"][2] not in stored[0]
    (token,) = [c.value for c in b.jar]
    assert rows(desk.cfg.dsn, "SELECT count(*) FROM sessions WHERE token_sha256 = %s", token) == [
        (0,)
    ]


def test_an_officer_sees_and_acts_on_their_own_district_only(
    desk: Desk,
    workers: Callable[..., RunningWorker],
    kitchen: Callable[..., BareKitchen],
) -> None:
    workers()
    _alarm(kitchen(SITE))  # xihu
    _alarm(kitchen("hz-gs-7"))  # gongshu
    xihu, gongshu, admin = Browser(desk), Browser(desk), Browser(desk)
    xihu.login("li.wei")
    gongshu.login("zhang.min")
    admin.login("admin")
    seen = {
        n: b.get("/api/incidents")[1]["incidents"]
        for n, b in (("xihu", xihu), ("gongshu", gongshu), ("admin", admin))
    }
    assert [i["site_id"] for i in seen["xihu"]] == [SITE]
    assert [i["site_id"] for i in seen["gongshu"]] == ["hz-gs-7"]
    assert sorted(i["site_id"] for i in seen["admin"]) == sorted([SITE, "hz-gs-7"])
    # A site's page lists that site's open incidents only.
    _, page = admin.get(f"/api/sites/{SITE}")
    assert [i["site_id"] for i in page["incidents"]] == [SITE]
    assert page["site"]["district_id"] == "xihu" and page["gaps"] == []
    other = seen["gongshu"][0]["id"]
    status, reply = xihu.post(f"/api/incidents/{other}/acknowledge", {"note": ""})
    assert status == 409 and "not found in your district" in reply["error"]
    assert xihu.get("/api/sites/hz-gs-7")[0] == 404
    assert rows(desk.cfg.dsn, "SELECT state FROM incidents WHERE id = %s", other) == [("new",)]


def test_acknowledge_dispatch_resolve_close_each_signed_with_a_note(
    desk: Desk,
    workers: Callable[..., RunningWorker],
    kitchen: Callable[..., BareKitchen],
) -> None:
    workers()
    k = kitchen(SITE)
    _alarm(k)
    b = Browser(desk)
    b.login("li.wei")
    (incident,) = b.get("/api/incidents")[1]["incidents"]
    iid = incident["id"]
    assert incident["state"] == "new" and incident["to_ack_s"] is None
    # Out of order or without the note the step needs: refused, nothing changes.
    assert b.post(f"/api/incidents/{iid}/close", {"note": "x"})[0] == 409
    assert b.post(f"/api/incidents/{iid}/dispatch", {"note": " "})[0] == 409
    assert b.post(f"/api/incidents/{iid}/open", {"note": "x"})[0] == 409  # no such action
    assert b.post(f"/api/incidents/{iid}/acknowledge", {"note": "called the kitchen"}) == (
        200,
        {"id": iid, "state": "acknowledged"},
    )
    assert b.post(f"/api/incidents/{iid}/dispatch", {"note": "engine 12 sent"})[0] == 200
    assert b.post(f"/api/incidents/{iid}/resolve", {"note": "hose clamp loose, fixed"})[0] == 200
    _, detail = b.get(f"/api/incidents/{iid}")
    assert detail["incident"]["acked_by"] == "li.wei"
    assert detail["incident"]["to_ack_s"] >= 0
    steps = [(s["actor"], s["action"], s["note"]) for s in detail["log"]]
    assert steps[0][:2] == ("kitchen", "opened")
    assert steps[1:] == [
        ("li.wei", "acknowledged", "called the kitchen"),
        ("li.wei", "dispatched", "engine 12 sent"),
        ("li.wei", "resolved", "hose clamp loose, fixed"),
    ]
    assert b.post(f"/api/incidents/{iid}/close", {"note": "checked on site, signed"})[0] == 200
    assert b.get("/api/incidents")[1]["incidents"] == []
    audited = rows(desk.cfg.dsn, "SELECT action, target FROM audit WHERE operator = 'li.wei'")
    assert [a for a, t in audited if t == str(iid)] == [
        "incident.acknowledge",
        "incident.dispatch",
        "incident.resolve",
        "incident.close",
    ]
    # A new alarm at the same detector after the close is a new incident.
    _alarm(k, 2)
    (fresh,) = b.get("/api/incidents")[1]["incidents"]
    assert fresh["id"] != iid and fresh["state"] == "new"


def test_the_first_view_is_recorded_once(
    desk: Desk, workers: Callable[..., RunningWorker], kitchen: Callable[..., BareKitchen]
) -> None:
    workers()
    _alarm(kitchen(SITE))
    a, b = Browser(desk), Browser(desk)
    a.login("li.wei")
    b.login("admin")
    (incident,) = a.get("/api/incidents")[1]["incidents"]
    assert a.post("/api/incidents/seen", {"ids": [incident["id"]]}) == (
        200,
        {"marked": [incident["id"]]},
    )
    assert b.post("/api/incidents/seen", {"ids": [incident["id"]]}) == (200, {"marked": []})
    (again,) = b.get("/api/incidents")[1]["incidents"]
    assert again["first_viewed_by"] == "li.wei" and again["to_view_s"] >= 0
    assert b.post("/api/incidents/seen", {"ids": "all"})[0] == 400


def test_the_live_feed_pushes_a_new_alarm(
    desk: Desk, workers: Callable[..., RunningWorker], kitchen: Callable[..., BareKitchen]
) -> None:
    workers()
    b = Browser(desk)
    b.login("li.wei")
    feed = Feed(desk, b)
    try:
        _alarm(kitchen(SITE))
        events = feed.until("incidents")
    finally:
        feed.close()
    pushed = [d for n, d in events if n == "incidents"]
    assert pushed, events
    assert pushed[0]["incidents"][0]["site_id"] == SITE
    assert pushed[0]["incidents"][0]["title_zh"] == "燃气泄漏高限报警：wok-1（62.0 %LEL）"


def test_five_wrong_passwords_lock_the_name_for_a_quarter_of_an_hour(desk: Desk) -> None:
    b = Browser(desk)
    for _ in range(5):
        assert b.login("li.wei", "guess").endswith("/login?failed=1")
    assert b.login("li.wei").endswith("/login?failed=1")  # the right one, but locked
    assert b.login("zhang.min").endswith("/")  # another name is not affected
    locked = rows(desk.cfg.dsn, "SELECT count(*) FROM audit WHERE action = 'login.locked'")
    assert locked == [(1,)]
    with psycopg.connect(desk.cfg.dsn, autocommit=True) as conn:
        conn.execute("UPDATE audit SET at = at - interval '16 minutes'")
    assert b.login("li.wei").endswith("/")


def test_an_expired_session_or_a_disabled_operator_is_logged_out(desk: Desk) -> None:
    b = Browser(desk)
    b.login("li.wei")
    assert b.get("/api/me")[0] == 200
    with psycopg.connect(desk.cfg.dsn, autocommit=True) as conn:
        conn.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    assert b.get("/api/me")[0] == 401
    b.login("li.wei")
    with psycopg.connect(desk.cfg.dsn, autocommit=True) as conn:
        conn.execute("UPDATE operators SET disabled = true WHERE name = 'li.wei'")
    assert b.get("/api/me")[0] == 401
    assert b.login("li.wei").endswith("/login?failed=1")


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/api/incidents/1/acknowledge", b"note=x", "application/x-www-form-urlencoded"),
        ("/api/incidents/1/acknowledge", b"[1]", "application/json"),
        ("/api/incidents/1/acknowledge", b"{not json", "application/json"),
        ("/api/incidents/1/acknowledge", b'{"note": 5}', "application/json"),
        ("/api/incidents/seen", b'{"ids": [true]}', "application/json"),
    ],
)
def test_a_bad_request_gets_a_clear_error_and_changes_nothing(
    desk: Desk, path: str, body: bytes, content_type: str
) -> None:
    b = Browser(desk)
    b.login("admin")
    before = rows(desk.cfg.dsn, "SELECT count(*) FROM audit")
    request = urllib.request.Request(f"{desk.url}{path}", body, {"Content-Type": content_type})
    with pytest.raises(urllib.error.HTTPError) as e:
        b.opener.open(request, timeout=10)
    assert e.value.code == 400 and json.loads(e.value.read())["error"]
    assert rows(desk.cfg.dsn, "SELECT count(*) FROM audit") == before


def test_nothing_in_the_city_package_publishes_but_the_acknowledgement() -> None:
    """No path from the desk to a kitchen's valve: the only MQTT publish in city/ is the ack
    on ``<prefix>/<site>/ack`` (and a kitchen accepts only ``{"cmd": "status"}`` anyway)."""
    calls = []
    for path in (REPO / "city").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "publish"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "client"
            ):
                calls.append((path.name, ast.unparse(node.args[0])))
    assert calls == [("ingest.py", "f'{prefix}/{item.site_id}/ack'")]


def test_the_live_feed_comes_back_after_a_database_restart(
    desk: Desk,
    pg_cluster: Any,
    workers: Callable[..., RunningWorker],
    kitchen: Callable[..., BareKitchen],
) -> None:
    """A page's open stream outlives a PostgreSQL restart: it is told to reload (what changed
    meanwhile is not known), and an alarm stored afterwards is still pushed on it."""
    workers()
    k = kitchen(SITE)
    b = Browser(desk)
    b.login("li.wei")
    feed = Feed(desk, b)
    try:
        assert feed.until("hello")
        pg_cluster.restart()
        _alarm(k)
        names = [n for n, _ in feed.until("reload")]
        assert "reload" in names, names
        _alarm(k, 2, "fryer-1")
        pushed = [d for n, d in feed.until("incidents") if n == "incidents"]
    finally:
        feed.close()
    assert any(i["source"] == "fryer-1" for d in pushed for i in d["incidents"]), pushed
