"""A real mosquitto broker for the uplink tests, on a free loopback port.

``tests/conftest.py`` makes its fixtures (``mosquitto``, ``uplink_site``) available to every
test under tests/; the HIL suite imports ``Mosquitto`` itself. The fixture yields a
``Mosquitto``:

* ``host`` / ``port``: where the broker listens (always 127.0.0.1, plain MQTT, anonymous).
* ``stop()``: end the broker (SIGTERM: it saves its persistence file first, as a real broker
  restarted by its service manager would) and wait until the port refuses connections.
* ``kill()``: SIGKILL, no save: a broker that crashed or lost power.
* ``start()``: start it again on the same port; returns when it accepts connections.
* ``running``: whether it is up.

Also here, for the gateway side of uplink tests: ``UplinkSite`` (a real Recorder writing a real
event log, a real Outbox subscribed to it, an UplinkContext) with its ``uplink_site`` fixture,
``kitchen_status()`` and ``wait_for()``.

The broker needs the ``mosquitto`` apt package (``apt-get install -y mosquitto``); without it
the fixture fails with that instruction instead of silently skipping the uplink tests.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.core.model import Event
from gateway.paths import outbox_db
from gateway.store.events import EventStore, StoredEvent
from gateway.store.recorder import Recorder, RecorderItem
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.outbox import Outbox

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: on PATH, or where Debian installs it (/usr/sbin, which is
    not on a normal user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """One mosquitto process on a loopback port, its config and persistence in ``workdir``.
    ``extra_config`` lines are appended to the generated config (e.g. a TLS listener)."""

    def __init__(self, workdir: Path, port: int | None = None, extra_config: str = "") -> None:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError(
                "mosquitto broker not found: install it with `apt-get install -y mosquitto`"
            )
        self.binary = binary
        self.host = LOOPBACK
        self.port = port if port is not None else free_loopback_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true",
            # Persistent sessions and queued QoS 1 messages survive a restart, as on a real
            # broker; the file is written on SIGTERM (stop) but not on SIGKILL (kill).
            "persistence true",
            f"persistence_location {workdir}/",
            "persistence_file mosquitto.db",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 100000",
            # As a broker for alarms should be set up (small packets, no Nagle delay).
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            # As root mosquitto would switch to the "mosquitto" user, which cannot write the
            # test's temporary directory.
            lines.append("user root")
        self.config_path.write_text("\n".join(lines) + "\n" + extra_config, encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the broker; returns once it accepts TCP connections (fails after 10 s)."""
        if self.running:
            return
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(self.host, self.port):
            if self._process.poll() is not None:
                err = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                raise RuntimeError(
                    f"mosquitto on port {self.port} exited with {self._process.returncode}: "
                    f"{err.strip()} {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10 s")
            time.sleep(0.02)

    def _end(self, sig: int) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
        self._process = None
        # The listening socket is closed once the process is gone; wait until connects fail so
        # a test's "broker is down" phase really has no broker.
        deadline = time.monotonic() + 5.0
        while _accepts(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the broker gracefully (SIGTERM; it saves its persistence file)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Stop the broker abruptly (SIGKILL; nothing saved)."""
        self._end(signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@pytest.fixture(name="mosquitto")
def mosquitto_fixture(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running mosquitto broker on a free loopback port; stopped at teardown."""
    try:
        broker = Mosquitto(tmp_path / "mosquitto")
    except RuntimeError as e:
        pytest.fail(str(e))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# -- the gateway side of an uplink test ------------------------------------------------------------


def kitchen_status(site_id: str = "hz-001") -> dict[str, Any]:
    """A status document shaped like the controller's (``gateway.api.status.build_status``):
    two detectors and one valve, all normal. Tests change it in place."""
    return {
        "site": {"id": site_id, "name": "Test kitchen", "address": "1 Test Road"},
        "uptime_s": 1.0,
        "now_utc": time.time(),
        "simulated": True,
        "detectors": [
            {
                "name": "wok-1",
                "zone": "hot-kitchen",
                "lel": 1.0,
                "state": "normal",
                "level": "normal",
                "latched": "normal",
                "fault": None,
                "age_s": 0.1,
            },
            {
                "name": "fryer",
                "zone": "hot-kitchen",
                "lel": None,
                "state": "comm-fault",
                "level": "normal",
                "latched": "normal",
                "fault": "comm: timeout",
                "age_s": 12.0,
            },
        ],
        "valves": [
            {
                "name": "main",
                "kind": "held-open",
                "commanded": "closed",
                "reason": "start-up",
                "feedback": "closed",
                "confirmed": True,
                "failed": False,
            },
        ],
        "alarms": [],
        "faults": ["fryer: comm: timeout"],
        "sounder": False,
        "silenced": False,
        "lights": {"red": "off", "yellow": "flash-fault", "green": "on"},
        "reset_blockers": [],
    }


class UplinkSite:
    """The gateway side, made of the real parts: an event log written by a real ``Recorder``
    whose subscriber is a real ``Outbox``, and an ``UplinkContext`` whose ``record`` goes
    through the recorder's queue like the controller's. ``emit()`` plays the safety thread."""

    def __init__(
        self,
        workdir: Path,
        channels: Sequence[str] = ("mqtt",),
        site_id: str = "hz-001",
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.workdir = workdir
        self.site_id = site_id
        self.events_path = workdir / "events.db"
        self.inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
        self.recorder = Recorder(self.events_path, 999, self.inbox)
        self.outbox = Outbox(outbox_db(workdir), site_id, channels)
        self.recorder.subscribe(self.outbox.add)
        self.recorder.start()
        self.status_doc = kitchen_status(site_id)
        self.ctx = UplinkContext(
            site_id=site_id,
            site_name="Test kitchen",
            site_address="1 Test Road",
            status=status or (lambda: self.status_doc),
            record=lambda event: self.inbox.put((time.time(), event)),
        )

    def emit(self, kind: str, source: str, **details: Any) -> None:
        """Queue an event as the safety thread does (never blocks)."""
        self.inbox.put((time.time(), Event(kind, source, time.monotonic(), dict(details))))

    def flush(self) -> None:
        assert self.recorder.flush(5.0), "the recorder did not store its queue within 5 s"

    def logged(self) -> list[StoredEvent]:
        """Every event in the event log, oldest first."""
        self.flush()
        with EventStore.open_readonly(self.events_path) as reader:
            return reader.since(0, 100_000)

    def close(self) -> None:
        self.recorder.stop()
        self.outbox.close()


@pytest.fixture(name="uplink_site")
def uplink_site_fixture(tmp_path: Path) -> Iterator[Callable[..., UplinkSite]]:
    """Factory: ``uplink_site(channels=("mqtt",), site_id="hz-001")``; closed at teardown."""
    made: list[UplinkSite] = []

    def make(channels: Sequence[str] = ("mqtt",), site_id: str = "hz-001") -> UplinkSite:
        site = UplinkSite(tmp_path / f"site{len(made)}", channels, site_id)
        made.append(site)
        return site

    yield make
    for site in made:
        site.close()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()
