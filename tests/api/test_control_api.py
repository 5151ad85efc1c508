"""The local control socket (a real Unix socket in a temp directory) and the CLI text."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.control import (
    MAX_REQUEST_BYTES,
    CommandError,
    ControlClient,
    ControlError,
    ControlServer,
    Handler,
    int_arg,
    only_args,
)
from gateway.api.render import render_events, render_status
from gateway.store.events import StoredEvent

STATUS: dict[str, Any] = {
    "site": {"id": "NC-DEMO-0001", "name": "Example Noodle House", "address": "1 Example Road"},
    "uptime_s": 12.3,
    "now_utc": 1764300000.0,
    "simulated": False,
    "detectors": [
        {
            "name": "wok-1",
            "zone": "hot-kitchen",
            "bus": "bus0",
            "address": 1,
            "profile": "generic-cn-kitchen",
            "gas": "natural-gas",
            "lel": 3.2,
            "state": "normal",
            "level": "normal",
            "latched": "normal",
            "fault": None,
            "age_s": 0.4,
        },
        {
            "name": "wok-2",
            "zone": "hot-kitchen",
            "bus": "bus0",
            "address": 2,
            "profile": "generic-cn-kitchen",
            "gas": "natural-gas",
            "lel": None,
            "state": "comm-fault",
            "level": "normal",
            "latched": "high",
            "fault": "comm: no valid reply",
            "age_s": 42.7,
        },
    ],
    "valves": [
        {
            "name": "main-inlet",
            "kind": "held-open",
            "commanded": "closed",
            "reason": "high alarm at wok-1",
            "feedback": "closed",
            "confirmed": True,
            "failed": False,
        }
    ],
    "alarms": ["wok-1: high alarm (latched until reset)"],
    "faults": ["wok-2: comm: no valid reply"],
    "sounder": True,
    "silenced": False,
    "lights": {"red": "flash-alarm", "yellow": "off", "green": "on"},
    "reset_blockers": ["wok-1: gas at 55.0 %LEL"],
}


class Kitchen:
    """Handlers like the controller's: they count what reached them."""

    def __init__(self) -> None:
        self.resets: list[str] = []

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        only_args("status", args, ())
        return STATUS

    def reset(self, args: dict[str, Any]) -> dict[str, Any]:
        only_args("reset", args, ("operator",))
        operator = args.get("operator", "console")
        if not isinstance(operator, str):
            raise CommandError(f"reset: operator {operator!r}: must be text")
        self.resets.append(operator)
        return {"accepted": True}

    def events(self, args: dict[str, Any]) -> dict[str, Any]:
        only_args("events", args, ("limit",))
        return {"limit": int_arg("events", args, "limit", 1, 1000, 100)}

    def handlers(self) -> dict[str, Handler]:
        def explode(args: dict[str, Any]) -> dict[str, Any]:
            raise RuntimeError("boom")

        def not_json(args: dict[str, Any]) -> dict[str, Any]:
            return {"when": object()}

        return {
            "status": self.status,
            "reset": self.reset,
            "events": self.events,
            "explode": explode,
            "not-json": not_json,
        }


@pytest.fixture
def kitchen() -> Kitchen:
    return Kitchen()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "control.sock"


@pytest.fixture
def server(sock_path: Path, kitchen: Kitchen) -> Iterator[ControlServer]:
    srv = ControlServer(sock_path, kitchen.handlers(), client_timeout_s=1.0)
    srv.start()
    yield srv
    srv.stop()


def raw_exchange(path: Path, payload: bytes, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Send raw bytes, half-close, and read every response line until the server hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(path))
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may hang up on a huge request before reading it all
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return [json.loads(line) for line in data.splitlines()]


# -- protocol ------------------------------------------------------------------------------------


def test_status_round_trip(server: ControlServer, sock_path: Path) -> None:
    client = ControlClient(sock_path)
    assert client.call("status") == STATUS
    assert client.call("events", limit=5) == {"limit": 5}


def test_socket_file_mode_is_0660(server: ControlServer, sock_path: Path) -> None:
    st_mode = os.stat(sock_path).st_mode
    assert stat.S_ISSOCK(st_mode)
    assert stat.S_IMODE(st_mode) == 0o660


def test_several_requests_on_one_connection_are_answered_in_order(
    server: ControlServer, sock_path: Path, kitchen: Kitchen
) -> None:
    replies = raw_exchange(
        sock_path,
        b'{"cmd": "reset", "args": {"operator": "chef"}, "id": 1}\n'
        b'{"cmd": "status", "id": "two"}\n'
        b'{"cmd": "events", "args": {"limit": 7}}',  # the last line needs no newline
    )
    assert replies == [
        {"ok": True, "result": {"accepted": True}, "id": 1},
        {"ok": True, "result": STATUS, "id": "two"},
        {"ok": True, "result": {"limit": 7}},
    ]
    assert kitchen.resets == ["chef"]


BAD_LINES = [
    (b"hello there", "invalid JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"", "empty request"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (b'{"cmd": "open-valve"}', "unknown command 'open-valve'"),
    (b'{"cmd": 7}', "cmd 7"),
    (b'{"args": {}}', "cmd None"),
    (b'{"cmd": "status", "extra": 1}', "unknown request key"),
    (b'{"cmd": "reset", "args": [1]}', "must be a JSON object"),
    (b'{"cmd": "reset", "args": {"operator": 5}}', "operator 5: must be text"),
    (b'{"cmd": "reset", "args": {"force": true}}', "unknown argument(s) 'force'"),
    (b'{"cmd": "events", "args": {"limit": 5000}}', "limit = 5000: must be an integer from 1"),
    (b'{"cmd": "events", "args": {"limit": NaN}}', "NaN is not a JSON number"),
    (b"[" * 50_000, "invalid JSON"),
    (b'{"cmd": "explode"}', "explode failed: RuntimeError: boom"),
    (b'{"cmd": "not-json"}', "not JSON"),
]


@pytest.mark.parametrize(("line", "expected"), BAD_LINES)
def test_bad_requests_get_an_error_and_change_nothing(
    server: ControlServer, sock_path: Path, kitchen: Kitchen, line: bytes, expected: str
) -> None:
    # The bad line, then a good one on the same connection: the server still answers it.
    replies = raw_exchange(sock_path, line + b'\n{"cmd": "status"}\n')
    assert len(replies) == 2
    assert replies[0]["ok"] is False
    assert expected in replies[0]["error"]
    assert replies[1] == {"ok": True, "result": STATUS}
    assert kitchen.resets == []


def test_huge_request_is_refused_and_the_server_goes_on(
    server: ControlServer, sock_path: Path, kitchen: Kitchen
) -> None:
    huge = b'{"cmd": "reset", "args": {"operator": "' + b"x" * (2 * MAX_REQUEST_BYTES) + b'"}}\n'
    replies = raw_exchange(sock_path, huge)
    assert len(replies) == 1
    assert replies[0]["ok"] is False and "larger than 65536 bytes" in replies[0]["error"]
    assert kitchen.resets == []
    assert ControlClient(sock_path).call("status") == STATUS


def test_client_gets_the_servers_error(server: ControlServer, sock_path: Path) -> None:
    client = ControlClient(sock_path)
    with pytest.raises(ControlError, match="explode failed: RuntimeError: boom"):
        client.call("explode")
    with pytest.raises(ControlError, match="unknown command 'fly'"):
        client.call("fly")
    assert client.call("status") == STATUS


def test_client_error_when_no_server(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no controller listening at"):
        ControlClient(tmp_path / "control.sock", timeout=1.0).call("status")


def test_a_hanging_client_is_dropped(server: ControlServer, sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(os.fspath(sock_path))
        s.sendall(b'{"cmd": "sta')  # and then nothing: the server hangs up (timeout 1 s)
        assert s.recv(100) == b""  # within the socket's 5 s timeout, or recv raises
    assert ControlClient(sock_path).call("status") == STATUS


def test_too_many_connections_are_refused(sock_path: Path, kitchen: Kitchen) -> None:
    # This test's uid stands for an ordinary local client (not root, not the service's user).
    srv = ControlServer(
        sock_path,
        kitchen.handlers(),
        client_timeout_s=5.0,
        max_connections=2,
        privileged_uids={os.getuid() + 1},
    )
    srv.start()
    idle: list[socket.socket] = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(os.fspath(sock_path))
            idle.append(s)
        time.sleep(0.2)  # let the server register both
        with pytest.raises(ControlError, match="busy: at most 2"):
            ControlClient(sock_path).call("status")
        for s in idle:
            s.close()
        deadline = time.monotonic() + 5
        while True:  # the slots free up once the server sees the hang-ups
            try:
                assert ControlClient(sock_path).call("status") == STATUS
                break
            except ControlError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        for s in idle:
            s.close()
        srv.stop()


def test_slots_are_kept_for_the_console_and_root(kitchen: Kitchen) -> None:
    """Ordinary local clients (another user, here ``nobody``) holding every ordinary slot
    cannot lock out the console (the service's own user, here this test's) or root."""
    if os.getuid() != 0 or shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists():
        pytest.fail("this test runs clients as user nobody: it needs root and setpriv (CI has)")
    # pytest's own temporary directories are private to root: a directory nobody can reach.
    sock_dir = Path(tempfile.mkdtemp(prefix="gasguard-slots-", dir="/tmp"))
    os.chmod(sock_dir, 0o755)
    sock_path = sock_dir / "control.sock"
    srv = ControlServer(sock_path, kitchen.handlers(), client_timeout_s=20.0, max_connections=2)
    srv.start()
    os.chmod(sock_path, 0o666)  # let user nobody in, for the test only
    hold = (
        "import socket, sys, time; s = socket.socket(socket.AF_UNIX); "
        "s.connect(sys.argv[1]); print('in', flush=True); time.sleep(15)"
    )
    holders = [
        subprocess.Popen(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "/usr/bin/python3", "-c", hold, os.fspath(sock_path)],
            stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]  # fmt: skip
    try:
        for h in holders:
            assert h.stdout is not None and h.stdout.readline().strip() == b"in"
        time.sleep(0.2)  # let the server register both
        # A third ordinary client is busy-refused; this test's own uid still gets in.
        third = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "/usr/bin/python3", "-c",
             "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
             "print(s.recv(200).decode())",
             os.fspath(sock_path)],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        assert "busy" in third.stdout
        assert ControlClient(sock_path).call("status") == STATUS
    finally:
        for h in holders:
            h.kill()
            h.wait()
        srv.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


# -- socket file life cycle ----------------------------------------------------------------------


def test_stale_socket_file_is_replaced(sock_path: Path, kitchen: Kitchen) -> None:
    sock_path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(sock_path))
    stale.close()  # the file stays, nobody listens: a controller that died
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    srv = ControlServer(sock_path, kitchen.handlers())
    srv.start()
    try:
        assert ControlClient(sock_path).call("status") == STATUS
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
    finally:
        srv.stop()
    assert not sock_path.exists()  # stop() removes its own socket


def test_a_live_socket_or_a_regular_file_is_not_replaced(
    server: ControlServer, sock_path: Path, kitchen: Kitchen
) -> None:
    second = ControlServer(sock_path, kitchen.handlers())
    with pytest.raises(ControlError, match="another controller is already listening"):
        second.start()
    assert ControlClient(sock_path).call("status") == STATUS  # the first one still serves

    not_a_socket = sock_path.parent / "notes.txt"
    not_a_socket.write_text("do not delete")
    with pytest.raises(ControlError, match="is not a socket"):
        ControlServer(not_a_socket, kitchen.handlers()).start()
    assert not_a_socket.read_text() == "do not delete"


def test_stop_drops_open_connections(sock_path: Path, kitchen: Kitchen) -> None:
    srv = ControlServer(sock_path, kitchen.handlers(), client_timeout_s=30.0)
    srv.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(os.fspath(sock_path))
        s.sendall(b'{"cmd": "status"}\n')
        assert json.loads(s.makefile("rb").readline())["ok"] is True
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        stopper.join(10.0)
        assert not stopper.is_alive()
        assert s.recv(100) == b""
    with pytest.raises(ControlError):
        ControlClient(sock_path, timeout=1.0).call("status")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(junk=st.binary(max_size=2000))
def test_random_bytes_never_crash_the_server(
    server: ControlServer, sock_path: Path, kitchen: Kitchen, junk: bytes
) -> None:
    replies = raw_exchange(sock_path, junk)
    # One reply per line sent; every one of them is a well-formed error or result.
    assert len(replies) <= junk.count(b"\n") + 1
    for reply in replies:
        assert isinstance(reply["ok"], bool)
        if not reply["ok"]:
            assert isinstance(reply["error"], str) and reply["error"]
    assert ControlClient(sock_path).call("status") == STATUS
    assert kitchen.resets == []


# -- text for the CLI ----------------------------------------------------------------------------


def _line_of(text: str, name: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(name + " ")]
    return line


def test_render_status_shows_no_reply_and_no_number_for_a_comm_fault() -> None:
    text = render_status(STATUS)
    wok2 = _line_of(text, "wok-2")
    assert "no reply" in wok2
    assert "42 s ago" in wok2  # the age of its last good reading
    assert "%LEL" not in wok2
    wok1 = _line_of(text, "wok-1")
    assert "3.2 %LEL" in wok1 and "0.4 s ago" in wok1

    # Even if a stale number reached us by mistake, it is never shown for a silent detector.
    bad = json.loads(json.dumps(STATUS))
    bad["detectors"][1]["lel"] = 47.5
    wok2 = _line_of(render_status(bad), "wok-2")
    assert "47.5" not in wok2 and "no reply" in wok2


def test_render_status_shows_every_field() -> None:
    text = render_status(STATUS)
    for needle in (
        "NC-DEMO-0001",
        "Example Noodle House",
        "1 Example Road",
        "2025-11-28T03:20:00Z",
        "12 s",
        "live",
        "SHUT OFF at main-inlet",
        "wok-1: high alarm (latched until reset)",
        "wok-2: comm: no valid reply",
        "Sounder:   on (not silenced)",
        "red flash-alarm, yellow off, green on",
        "wok-1: gas at 55.0 %LEL",
        "hot-kitchen",
        "generic-cn-kitchen",
        "natural-gas",
        "comm-fault",
        "held-open",
        "high alarm at wok-1",
    ):
        assert needle in text, needle
    valve = _line_of(text, "main-inlet")
    assert valve.split()[:6] == ["main-inlet", "held-open", "closed", "closed", "yes", "no"]
    assert "\x1b" not in text  # no colour codes

    simulated = render_status({**STATUS, "simulated": True, "reset_blockers": []})
    assert "SIMULATED" in simulated and "Reset:     possible now" in simulated


def test_render_status_columns_are_aligned() -> None:
    lines = render_status(STATUS).splitlines()
    header = next(ln for ln in lines if ln.split()[:2] == ["NAME", "ZONE"])
    col = header.index("READING")
    assert _line_of("\n".join(lines), "wok-1")[col:].startswith("3.2 %LEL")
    assert _line_of("\n".join(lines), "wok-2")[col:].startswith("no reply")


def test_render_status_survives_missing_fields_and_escape_codes() -> None:
    text = render_status({"site": {"id": "x\x1b[31mred"}, "detectors": [{"name": "d1"}]})
    assert "\x1b" not in text
    assert "d1" in text


def test_render_events_one_line_each() -> None:
    events = [
        StoredEvent(7, 1764300000.25, "alarm.raised", "wok-1", {"level": "high", "lel": 55.0}),
        StoredEvent(1234, 1764300061.0, "operator.reset", "site", {"operator": "reset-button"}),
    ]
    lines = render_events(events).splitlines()
    assert len(lines) == 3  # header + one per event
    assert lines[1].split() == [
        "7",
        "2025-11-28T03:20:00.250Z",
        "alarm.raised",
        "wok-1",
        '{"level":"high","lel":55.0}',
    ]
    assert lines[2].split()[:2] == ["1234", "2025-11-28T03:21:01.000Z"]
    assert lines[1].index("alarm.raised") == lines[2].index("operator.reset")  # aligned
    assert render_events([]) == "no events\n"


def test_render_status_shows_uplinks_and_an_unanswered_duty_check() -> None:
    from gateway.api.render import render_status

    status = {
        "site": {"id": "S", "name": "n", "address": "a"},
        "uptime_s": 1.0,
        "now_utc": 1_764_300_000.0,
        "detectors": [],
        "valves": [],
        "duty_check_pending_utc": 1_764_300_000.0,
        "uplinks": {
            "mqtt": {"broker": "127.0.0.1:1883", "connected": True, "pending": 0},
            "gb26875": {
                "centre": "10.0.0.1:26875",
                "connected": False,
                "pending": 3,
                "last_error": "connection refused",
            },
            "sms": {"port": "/dev/ttyUSB2", "modem_ok": True, "pending": 0},
        },
    }
    text = render_status(status)
    assert "DUTY CHECK from the fire centre at 2025-11-28T03:20:00Z: press SILENCE" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert "up" in lines["mqtt"].split() and "127.0.0.1:1883" in lines["mqtt"]
    assert "DOWN" in lines["gb26875"] and "connection refused" in lines["gb26875"]
    assert "up" in lines["sms"].split()


def test_state_changing_commands_need_a_privileged_peer(sock_path: Path, kitchen: Kitchen) -> None:
    """The peer's uid comes from the kernel (SO_PEERCRED): a process of a user who may only
    look (here: this test's own uid, left out of the privileged ones) gets status, never a
    reset."""
    others_only = {os.getuid() + 1}
    srv = ControlServer(
        sock_path, kitchen.handlers(), privileged={"reset"}, privileged_uids=others_only
    )
    srv.start()
    try:
        client = ControlClient(sock_path)
        assert client.call("status")["detectors"] is not None
        with pytest.raises(ControlError, match=f"reset: not permitted for uid {os.getuid()}"):
            client.call("reset", operator="tech")
        assert kitchen.resets == []
    finally:
        srv.stop()
    allowed = ControlServer(sock_path, kitchen.handlers(), privileged={"reset"})  # root, self
    allowed.start()
    try:
        assert ControlClient(sock_path).call("reset", operator="tech") == {"accepted": True}
        assert kitchen.resets == ["tech"]
    finally:
        allowed.stop()


def test_render_status_shows_the_fans_and_the_power_when_the_site_has_them() -> None:
    assert "Exhaust fans" not in render_status(STATUS) and "Power:" not in render_status(STATUS)
    status = json.loads(json.dumps(STATUS))
    status["fans"] = [
        {
            "name": "hood",
            "zones": ["hot-kitchen"],
            "commanded": "on",
            "running": False,
            "failed": True,
            "reason": "high alarm at wok-1",
        }
    ]
    status["power"] = {"mains": "failed", "battery": "ok"}
    text = render_status(status)
    hood = _line_of(text, "hood")
    for needle in ("hot-kitchen", "on", "stopped", "FAILED", "high alarm at wok-1"):
        assert needle in hood, needle
    assert "Power:     mains FAILED (on battery), backup battery ok" in text


def test_render_status_shows_each_detectors_service_dates() -> None:
    status = json.loads(json.dumps(STATUS))
    status["detectors"][0]["service"] = {
        "installed": "2025-01-01",
        "calibrated": "2025-01-02",
        "overdue": "calibration overdue since 2026-01-02 (58 days)",
        "text": "calibration overdue since 2026-01-02 (58 days)",
    }
    status["detectors"][1]["service"] = {"text": "install and calibration dates not recorded"}
    text = render_status(status)
    wok1 = [line for line in text.splitlines() if "2025-01-02" in line]
    assert wok1 and "OVERDUE: calibration overdue since 2026-01-02" in wok1[0]
    assert "Detector service" not in render_status(STATUS)
