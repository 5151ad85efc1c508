"""The safety process's side doors (issue 27, items 3, 5 and 6): who may use which socket, how
often, and in which order the valve and the recorder act.

The sockets are the real controller's, its peers real processes of other users (``setpriv``
as ``nobody`` and a second ordinary uid, as on the appliance a group member would be); the
controller's own test user is root here, as in CI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gateway.api.control import ControlClient, ControlError
from gateway.config import load_config
from gateway.core.model import Reading, ResetRequest
from gateway.core.safety import SafetyCore
from gateway.drivers.valve import make_valve
from gateway.paths import uplink_socket
from gateway.safety.controller import Controller
from gateway.safety.handlers import DUTY_CHECK_MIN_INTERVAL_S, UPLINK_RATE_LIMITS
from gateway.safety.loop import SafetyLoop
from gateway.sim.kitchen import SimulatedKitchen
from gateway.store.recorder import RecorderItem
from tests.uplink_fixtures import wait_for

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
OTHER = 65533  # a second ordinary account (a technician in the service's group)
READ_ONLY = {"status", "events"}  # what an ordinary member of the group may ask

# Sends each request line and prints each reply line; run as another user.
CLIENT = (
    "import json, socket, sys\n"
    "for line in sys.argv[2:]:\n"
    "    s = socket.socket(socket.AF_UNIX)\n"
    "    try:\n"
    "        s.connect(sys.argv[1])\n"
    "        try:\n"
    "            s.sendall(line.encode() + b'\\n')\n"
    "        except BrokenPipeError:\n"
    "            pass  # refused before it read: its answer is waiting\n"
    "        buf = b''\n"
    "        while b'\\n' not in buf:\n"
    "            data = s.recv(65536)\n"
    "            if not data: break\n"
    "            buf += data\n"
    "        print(buf.split(b'\\n')[0].decode() or '{}', flush=True)\n"
    "    except OSError as e:\n"
    "        print(json.dumps({'ok': False, 'error': 'oserror ' + str(e)}), flush=True)\n"
    "    finally:\n"
    "        s.close()\n"
)


def as_user(uid: int, sock: Path, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each request's reply, sent from a process running as ``uid``."""
    out = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/usr/bin/python3",
         "-c", CLIENT, os.fspath(sock), *(json.dumps(r) for r in requests)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's own are private to root)."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.fail("these tests run clients as other users: they need root and setpriv (CI has)")
    path = Path(tempfile.mkdtemp(prefix="gasguard-doors-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kitchen(tmp_path: Path) -> Iterator[SimulatedKitchen]:
    k = SimulatedKitchen(tmp_path, travel_s=0.05, poll_period_s=0.2, comm_fault_timeout_s=1.5)
    k.start()
    k.set_all_gas(1.0)
    yield k
    k.stop()


@pytest.fixture
def controller(kitchen: SimulatedKitchen, open_dir: Path) -> Iterator[Controller]:
    cfg = dataclasses.replace(kitchen.config(), control_socket=open_dir / "control.sock")
    c = Controller(cfg, pin_factory=kitchen.factory, simulated=True)
    c.start()
    for path in (cfg.control_socket, uplink_socket(cfg.control_socket)):
        os.chmod(path, 0o666)  # the file mode lets everyone in: peer credentials must decide
    yield c
    c.stop()


# -- item 6: the control socket's state-changing commands --------------------------------------


def test_every_command_that_changes_something_is_refused_to_an_ordinary_user(
    controller: Controller,
) -> None:
    """From the controller's real handler table: anything but reading is refused to a member of
    the group who is not root or the service's user. Taking ``reset`` (or any command) out of
    the privileged list, or not passing the list to the server, fails here."""
    assert controller.control is not None
    commands = sorted(controller.control.handlers)
    assert "reset" in commands
    replies = as_user(NOBODY, controller.config.control_socket, [{"cmd": c} for c in commands])
    for cmd, reply in zip(commands, replies, strict=True):
        if cmd in READ_ONLY:
            assert reply["ok"], (cmd, reply)
        else:
            assert not reply["ok"] and "not permitted" in reply["error"], (cmd, reply)
    # And the same reset from root (the console's user here) is answered by the core.
    answer = ControlClient(controller.config.control_socket).call("reset", operator="t")
    assert "accepted" in answer


# -- item 3: the uplink socket serves the uplinks' user and root only --------------------------


def test_the_uplink_socket_refuses_every_other_user_and_records_nothing(
    controller: Controller,
) -> None:
    sock = uplink_socket(controller.config.control_socket)
    before = controller.recorder.backlog if controller.recorder else 0
    requests: list[dict[str, Any]] = [
        {"cmd": "record", "args": {"kind": "uplink.duty_check", "source": "fire-centre"}},
        {"cmd": "record", "args": {"kind": "uplink.outbox_ok", "source": "outbox"}},
        {"cmd": "report", "args": {"channels": {}, "outbox": None, "delivery": None}},
        {"cmd": "status"},
    ]
    for uid in (NOBODY, OTHER):
        for reply in as_user(uid, sock, requests):
            assert not reply["ok"] and "may not use this socket" in reply["error"], reply
    assert controller.duty_check_pending is None
    assert controller.uplink_report is None
    assert controller.recorder is not None and controller.recorder.backlog == before
    # Root (the uplinks' user on this machine) is served.
    assert "detectors" in ControlClient(sock).call("status")


def test_records_and_reports_on_the_uplink_socket_are_rate_limited_per_peer(
    controller: Controller,
) -> None:
    sock = uplink_socket(controller.config.control_socket)
    client = ControlClient(sock)
    _, burst = UPLINK_RATE_LIMITS["record"]
    accepted = refused = 0
    for i in range(int(burst) * 2):
        try:
            client.call("record", kind="uplink.outbox_ok", source="outbox", details={"n": i})
            accepted += 1
        except ControlError as e:
            assert "rate limited" in str(e)
            refused += 1
    assert refused > 0
    # What passed is the burst and what the rate refilled meanwhile, never the whole flood.
    assert accepted < burst * 2


def test_one_duty_check_at_a_time_and_at_most_one_a_minute(controller: Controller) -> None:
    client = ControlClient(uplink_socket(controller.config.control_socket))
    client.call("record", kind="uplink.duty_check", source="fire-centre")
    assert wait_for(lambda: controller.duty_check_pending is not None)
    with pytest.raises(ControlError, match="already waiting"):
        client.call("record", kind="uplink.duty_check", source="fire-centre")
    assert controller.answer_duty_check("test")
    with pytest.raises(ControlError, match=f"every {DUTY_CHECK_MIN_INTERVAL_S:g} s"):
        client.call("record", kind="uplink.duty_check", source="fire-centre")


# -- item 5: a flood of one user's connections never locks a technician out --------------------


def test_one_users_slow_clients_cannot_lock_a_technician_out(controller: Controller) -> None:
    sock = controller.config.control_socket
    hold = (
        "import socket, sys, time\n"
        "held = []\n"
        "for _ in range(30):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n"
        "        s.connect(sys.argv[1]); held.append(s)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('in', flush=True); time.sleep(20)\n"
    )
    holder = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "/usr/bin/python3", "-c", hold, os.fspath(sock)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"in"
        # A technician (another ordinary uid) and root both get an answer, every time.
        for _ in range(5):
            started = time.monotonic()
            (reply,) = as_user(OTHER, sock, [{"cmd": "status"}])
            assert reply["ok"], reply
            assert "detectors" in ControlClient(sock, timeout=2.0).call("status")
            assert time.monotonic() - started < 30.0  # generous: a loaded machine
    finally:
        holder.kill()
        holder.wait()


# -- item 6: the valve acts before the recorder sees the event ----------------------------------


class _RecorderProbe(queue.SimpleQueue[RecorderItem]):
    """The recorder's inbox that notes the valve coil's level when each event arrives."""

    def __init__(self, coil: Callable[[], bool]) -> None:
        super().__init__()
        self.coil = coil
        self.seen: list[tuple[str, bool]] = []
        self.loop: SafetyLoop | None = None
        self.snapshot_latched: list[bool] = []  # the published status had the alarm already

    def put(self, item: RecorderItem, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, tuple):
            self.seen.append((item[1].kind, self.coil()))
            snap = None if self.loop is None else self.loop.snapshot
            if item[1].kind == "alarm.raised" and snap is not None:
                self.snapshot_latched.append(any(d.latched for d in snap.view.detectors))
        super().put(item, block, timeout)


def test_the_valve_pin_is_off_before_the_recorder_sees_the_alarm() -> None:
    """The real safety thread: when the recorder's inbox receives ``alarm.raised``, the valve's
    coil is already de-energised, and the published status already shows the alarm. Handing
    the events over before driving the valves, or before publishing the status, fails."""
    cfg = load_config(ROOT / "config" / "gasguard.example.toml")
    valve_cfg = dataclasses.replace(cfg.valves[0], feedback_pin=None)
    factory = MockFactory()
    valve = make_valve(valve_cfg, factory)
    coil = factory.pin(valve_cfg.output_pin)
    plan = dataclasses.replace(cfg, valves=(valve_cfg,), fans=()).plan()
    probe = _RecorderProbe(lambda: bool(coil.state))
    clock = time.monotonic
    loop = SafetyLoop(SafetyCore(plan, clock()), {valve_cfg.name: valve}, None, probe)
    probe.loop = loop
    loop.start()
    try:
        detectors = [d.name for d in plan.detectors]
        for _ in range(2):
            for name in detectors:
                loop.submit(Reading(name, clock(), 0.0))
        loop.submit(ResetRequest(clock()))
        assert wait_for(lambda: bool(coil.state)), "the reset did not open the valve"
        for _ in range(2):
            loop.submit(Reading(detectors[0], clock(), 60.0))
        assert wait_for(lambda: any(kind == "alarm.raised" for kind, _ in probe.seen))
        assert not coil.state
        alarm = [coil_on for kind, coil_on in probe.seen if kind == "alarm.raised"]
        assert alarm == [False], probe.seen  # de-energised before the recorder saw it
        # And the status anyone reads because of the event already carries it (issue 28).
        assert probe.snapshot_latched == [True]
        assert loop.failure is None
    finally:
        loop.stop()
        valve.close()


def test_a_connect_and_close_flood_never_refuses_the_console_or_root(
    controller: Controller,
) -> None:
    """Connect-and-close floods from another user filled the listen backlog (16): the console's
    user got EAGAIN 5 times in 10. With a deeper backlog and the client's short retry, every
    call from root (the console's user here) is answered."""
    sock = controller.config.control_socket
    flood = (
        "import socket, sys, time\n"
        "end = time.monotonic() + float(sys.argv[2])\n"
        "print('in', flush=True)\n"
        "while time.monotonic() < end:\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    s.setblocking(False)\n"
        "    try:\n"
        "        s.connect(sys.argv[1])\n"
        "    except OSError:\n"
        "        pass\n"
        "    s.close()\n"
    )
    flooders = [
        subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "/usr/bin/python3", "-c", flood, os.fspath(sock), "6"],
            stdout=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    try:
        for f in flooders:
            assert f.stdout is not None and f.stdout.readline().strip() == b"in"
        answered = 0
        for _ in range(10):
            assert "detectors" in ControlClient(sock, timeout=2.0).call("status")
            answered += 1
        assert answered == 10
    finally:
        for f in flooders:
            f.kill()
            f.wait()
