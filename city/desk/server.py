"""The duty page's HTTP server (standard library, one thread per request).

Pages: ``/login``, ``/`` (the desk: open incidents by district, a site's page) and
``/ledger.csv``. JSON API under ``/api/``; the live feed is server-sent events on
``/api/events``. Every request but the log-in needs a session; an officer sees and acts on
their own district only. Run it behind a TLS reverse proxy in a city (docs/city.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import re
import threading
from datetime import date, datetime
from decimal import Decimal
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg

from city import db, queries
from city.config import SITE_ID_RE, CityConfig
from city.desk.actions import ActionRefused, act, mark_viewed
from city.desk.auth import Operator, log_in, log_out, session_operator
from city.desk.hub import Hub
from city.ledger import ledger_rows, write_csv
from city.log import error, log

STATIC = Path(__file__).parent / "static"
COOKIE = "gg_session"
MAX_BODY = 16_384
SSE_KEEPALIVE_S = 15.0
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
INCIDENT_ACTION = re.compile(r"^/api/incidents/(\d{1,18})/([a-z]{1,20})$")
INCIDENT = re.compile(r"^/api/incidents/(\d{1,18})$")
SITE = re.compile(r"^/api/sites/([^/]{1,64})$")


def _json_default(value: object) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


def to_json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, default=_json_default).encode("utf-8")


class DeskServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cfg: CityConfig) -> None:
        self.cfg = cfg
        self.hub = Hub(cfg.dsn)
        self.stopping = threading.Event()
        super().__init__((cfg.desk.listen_host, cfg.desk.listen_port), DeskHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class DeskHandler(BaseHTTPRequestHandler):
    server: DeskServer
    server_version = "gasguard-city"

    # -- plumbing ----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are not logged one by one; actions are audited in the database

    @property
    def peer(self) -> str:
        return str(self.client_address[0])

    def _send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, to_json(doc), "application/json; charset=utf-8")

    def _error(self, status: int, text: str) -> None:
        self._json(status, {"error": text})

    def _redirect(self, to: str, headers: dict[str, str] | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": to, **(headers or {})})

    def _token(self) -> str:
        cookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(self.headers.get("Cookie", ""))
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel else ""

    def _operator(self, conn: psycopg.Connection[Any]) -> Operator | None:
        return session_operator(conn, self._token())

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            raise ValueError(f"request body {length} bytes, at most {MAX_BODY}")
        return self.rfile.read(length)

    def _json_body(self) -> dict[str, Any]:
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            # A cross-site form cannot send JSON: this and the SameSite cookie stop CSRF.
            raise ValueError("Content-Type must be application/json")
        doc = json.loads(self._body() or b"{}")
        if not isinstance(doc, dict):
            raise ValueError("the body must be a JSON object")
        return doc

    def _static(self, name: str) -> None:
        path = STATIC / name
        ctype = STATIC_TYPES.get(path.suffix)
        if ctype is None or not path.is_file():
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        self._send(HTTPStatus.OK, path.read_bytes(), ctype)

    # -- routes ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path
        try:
            if method == "GET" and path == "/login":
                self._static("login.html")
                return
            if method == "GET" and path.startswith("/static/") and "/" not in path[8:]:
                self._static(path[8:])
                return
            with db.connect(self.server.cfg.dsn, autocommit=True) as conn:
                if method == "POST" and path == "/login":
                    self._login(conn)
                    return
                operator = self._operator(conn)
                if operator is None:
                    if path.startswith("/api/"):
                        self._error(HTTPStatus.UNAUTHORIZED, "log in first")
                    else:
                        self._redirect("/login")
                    return
                self._authed(conn, operator, method, path, parse_qs(url.query))
        except (ValueError, UnicodeDecodeError) as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e)[:300])
        except psycopg.OperationalError as e:
            error("desk.db_down", path=path[:100], error=f"{type(e).__name__}: {e}"[:300])
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the database is not reachable; retrying")
        except psycopg.Error as e:
            error("desk.db_error", path=path[:100], error=f"{type(e).__name__}: {e}"[:300])
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "the desk failed; see its log")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _login(self, conn: psycopg.Connection[Any]) -> None:
        form = parse_qs(self._body().decode("utf-8"), max_num_fields=5)
        name = (form.get("name") or [""])[0].strip().lower()
        password = (form.get("password") or [""])[0]
        result = log_in(conn, name, password, self.server.cfg.desk.session_s, self.peer)
        if result is None:
            self._redirect("/login?failed=1")
            return
        _operator, token = result
        cookie = (
            f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/;"
            f" Max-Age={int(self.server.cfg.desk.session_s)}"
        )
        self._redirect("/", {"Set-Cookie": cookie})

    def _authed(
        self,
        conn: psycopg.Connection[Any],
        op: Operator,
        method: str,
        path: str,
        query: dict[str, list[str]],
    ) -> None:
        scope = op.scope
        if method == "GET":
            if path == "/":
                self._static("index.html")
            elif path == "/api/me":
                self._json(
                    HTTPStatus.OK,
                    {
                        "name": op.name,
                        "display_name": op.display_name,
                        "role": op.role,
                        "district": op.district,
                    },
                )
            elif path == "/api/incidents":
                self._json(HTTPStatus.OK, {"incidents": queries.open_incidents(conn, scope)})
            elif m := INCIDENT.match(path):
                found = queries.incidents_by_id(conn, [int(m[1])], scope)
                if not found:
                    self._error(HTTPStatus.NOT_FOUND, "no such incident in your district")
                    return
                self._json(
                    HTTPStatus.OK,
                    {"incident": found[0], "log": queries.incident_log(conn, int(m[1]))},
                )
            elif m := SITE.match(path):
                self._site(conn, m[1], scope)
            elif path == "/api/events":
                self._events(conn, scope)
            elif path == "/api/ledger":
                district = self._district_arg(op, query)
                self._json(
                    HTTPStatus.OK, {"rows": ledger_rows(conn, district, _arg(query, "month"))}
                )
            elif path == "/ledger.csv":
                district = self._district_arg(op, query)
                out = io.StringIO()
                write_csv(conn, out, district, _arg(query, "month"))
                self._send(
                    HTTPStatus.OK,
                    out.getvalue().encode("utf-8-sig"),
                    "text/csv; charset=utf-8",
                    {"Content-Disposition": 'attachment; filename="ledger.csv"'},
                )
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        if path == "/logout":
            log_out(conn, self._token(), op.name, self.peer)
            self._redirect("/login", {"Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/"})
            return
        if path == "/api/incidents/seen":
            ids = self._json_body().get("ids")
            if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids[:500]
            ):
                raise ValueError("ids: a list of incident ids")
            self._json(HTTPStatus.OK, {"marked": mark_viewed(conn, op, ids[:500], self.peer)})
            return
        if m := INCIDENT_ACTION.match(path):
            body = self._json_body()
            note = body.get("note", "")
            if not isinstance(note, str):
                raise ValueError("note: must be text")
            try:
                state = act(conn, op, int(m[1]), m[2], note, self.peer)
            except ActionRefused as e:
                self._error(HTTPStatus.CONFLICT, str(e))
                return
            self._json(HTTPStatus.OK, {"id": int(m[1]), "state": state})
            return
        self._error(HTTPStatus.NOT_FOUND, "not found")

    def _district_arg(self, op: Operator, query: dict[str, list[str]]) -> str | None:
        asked = _arg(query, "district")
        if op.scope is not None:
            return op.scope  # an officer's export is their district, whatever is asked
        return asked

    def _site(self, conn: psycopg.Connection[Any], site_id: str, scope: str | None) -> None:
        if not SITE_ID_RE.fullmatch(site_id):
            raise ValueError(f"site id {site_id[:64]!r} is not valid")
        found = queries.site(conn, site_id, scope)
        if found is None:
            self._error(HTTPStatus.NOT_FOUND, "no such site in your district")
            return
        incidents = queries.open_incidents(conn, scope, site_id=site_id)
        gaps = [{"first": g.first, "last": g.last} for g in queries.gaps(conn, [site_id])]
        self._json(
            HTTPStatus.OK,
            {
                "site": found,
                "incidents": incidents,
                "gaps": gaps,
                "timeline": queries.timeline(conn, site_id),
            },
        )

    def _events(self, conn: psycopg.Connection[Any], scope: str | None) -> None:
        """Server-sent events: ``incidents`` with the changed incidents of this operator's
        scope (closed ones included, so the page drops them), or ``reload``."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")  # a proxy must not hold the stream
        self.end_headers()
        feed = self.server.hub.subscribe()
        try:
            self._sse("hello", {"listening": self.server.hub.listening.is_set()})
            while not self.server.stopping.is_set():
                try:
                    change = feed.get(timeout=SSE_KEEPALIVE_S)
                except queue.Empty:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    continue
                if change.get("all"):
                    self._sse("reload", {})
                    continue
                ids = [i for i in change.get("incidents", []) if isinstance(i, int)]
                if ids:
                    try:
                        changed = queries.incidents_by_id(conn, ids, scope)
                    except psycopg.OperationalError:
                        # The database restarted under this stream: a new connection, and the
                        # page reloads the list (what changed meanwhile is not known here).
                        conn.close()
                        conn = db.connect(self.server.cfg.dsn, autocommit=True)
                        self._sse("reload", {})
                        continue
                    self._sse("incidents", {"incidents": changed})
                sites = [s for s in change.get("sites", []) if isinstance(s, str)]
                if sites:
                    self._sse("sites", {"sites": sites})
        finally:
            self.server.hub.unsubscribe(feed)
            conn.close()  # also the one opened after a restart (closing twice is harmless)

    def _sse(self, event: str, doc: Any) -> None:
        self.wfile.write(b"event: " + event.encode() + b"\ndata: " + to_json(doc) + b"\n\n")
        self.wfile.flush()


def _arg(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def serve(
    cfg: CityConfig,
    stop: threading.Event,
    ready: threading.Event | None = None,
    server_box: list[DeskServer] | None = None,
) -> int:
    """Serve until ``stop`` is set. ``server_box`` receives the server (tests read its port)."""
    db.prepare(cfg)
    server = DeskServer(cfg)
    server.hub.start()
    if server_box is not None:
        server_box.append(server)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="desk-http", daemon=True
    )
    thread.start()
    log("desk.serving", url=server.url)
    if ready is not None:
        ready.set()
    stop.wait()
    server.stopping.set()
    server.shutdown()
    server.server_close()
    server.hub.stop()
    log("desk.stopped")
    return 0
