"""Shared parts of the console tests. Its fixtures (``site``, ``module_site`` and
``pty_console``) reach every test in this folder through ``conftest.py``.

* ``site`` / ``module_site``: a simulated kitchen (emulated Modbus buses on real ptys, mock GPIO
  pins) and a real Controller (its control socket has the console's commands). Detector
  ``wok-3`` is installed on bus0 (address 3) but not in the configuration: a scan finds it.
  Technician ``tech-7`` (PIN 246810) exists.
* ``PtyConsole``: the real console ``Session`` serving a real pseudo-terminal through pyserial
  (as it serves /dev/ttyGS0), in a thread; the test is the technician's terminal on the other
  side: it types bytes and reads what the screen shows.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, load_config
from gateway.console.auth import Technicians
from gateway.console.session import Session
from gateway.console.store import ConsoleStore
from gateway.console.terminal import Hangup, SerialTerminal
from gateway.safety.controller import Controller
from gateway.sim.kitchen import SimBus, SimDetector, SimulatedKitchen
from gateway.store.events import EventStore, StoredEvent

TECH = "tech-7"
PIN = "246810"
PROMPT = re.compile(r"\] tech-7(?: \(config staged\))?> ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DETECTORS = (
    SimDetector("wok-1", "hot-kitchen", "bus0", 1, "generic-cn-kitchen", "natural-gas"),
    SimDetector("wok-2", "hot-kitchen", "bus0", 2, "generic-cn-kitchen", "natural-gas"),
    SimDetector("wok-3", "hot-kitchen", "bus0", 3, "generic-cn-kitchen", "natural-gas"),
    SimDetector("fryer", "hot-kitchen", "bus1", 1, "honeywell-sensepoint-xcd", "natural-gas"),
)
BUSES = (SimBus("bus0", 9600, "N"), SimBus("bus1", 19200, "E"))


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def unconfigure(config_path: Path, detector: str) -> None:
    """Remove one [[detector]] table from a generated kitchen config."""
    text = config_path.read_text()
    start = text.index(f'[[detector]]\nname = "{detector}"')
    end = text.index("[[", start + 5)
    config_path.write_text(text[:start] + text[end:])


@dataclass
class Site:
    kitchen: SimulatedKitchen
    controller: Controller
    config_path: Path
    data_dir: Path

    def config(self) -> Config:
        return load_config(self.config_path)

    def events(self) -> list[StoredEvent]:
        recorder = self.controller.recorder
        assert recorder is not None
        assert recorder.flush(5)
        with EventStore.open_readonly(self.controller.events_path) as reader:
            return reader.recent(10_000)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events()]

    def status(self) -> dict[str, Any]:
        return self.controller.status()


def _start_site(workdir: Path, comm_fault_timeout_s: float = 3.0) -> Site:
    kitchen = SimulatedKitchen(
        workdir,
        buses=BUSES,
        detectors=DETECTORS,
        travel_s=0.05,
        poll_period_s=0.2,
        comm_fault_timeout_s=comm_fault_timeout_s,
    )
    kitchen.start()
    kitchen.set_all_gas(1.0)
    unconfigure(kitchen.config_path, "wok-3")
    config = load_config(kitchen.config_path)
    with ConsoleStore(config.data_dir) as store:
        Technicians(store).add(TECH, PIN, created_by="test-setup")
    controller = Controller(config, pin_factory=kitchen.factory, simulated=True)
    controller.start()
    assert controller.first_poll_done.wait(5)
    return Site(kitchen, controller, kitchen.config_path, config.data_dir)


def _stop_site(site: Site) -> None:
    site.controller.stop()
    site.kitchen.stop()


@pytest.fixture(name="site")
def site_fixture(tmp_path: Path) -> Iterator[Site]:
    s = _start_site(tmp_path)
    yield s
    _stop_site(s)


@pytest.fixture(scope="module", name="module_site")
def module_site_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = _start_site(tmp_path_factory.mktemp("site"), comm_fault_timeout_s=10.0)
    yield s
    _stop_site(s)


def clean(raw: str) -> str:
    """What a person reads: escape sequences, bells and carriage returns removed."""
    text = ANSI.sub("", raw).replace("\x07", "")
    text = text.replace("\b \b", "\b")
    out: list[str] = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "\b":
            if out and out[-1] != "\n":
                out.pop()
        elif ch != "\r":
            out.append(ch)
    return "".join(out)


class PtyConsole:
    """The console ``Session`` on a real pty (through pyserial), served from a thread. The test
    holds the master side: what it writes is typed, what it reads is the screen."""

    def __init__(self, config_path: Path, **session_args: Any) -> None:
        self.config_path = config_path
        self.session_args = {"failure_delay_s": 0.0, **session_args}
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)
        self.slave_path = os.ttyname(self.slave_fd)
        self.raw = ""
        self._pos = 0
        self.ended: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="console-under-test", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        term = SerialTerminal(self.slave_path, 115200)
        session = None
        try:
            session = Session(term, self.config_path, where="test-pty", **self.session_args)
            session.serve()
        except Hangup:
            pass
        except BaseException as e:  # reported by the test
            self.ended = e
        finally:
            if session is not None:
                session.close()
            term.close()

    # -- typing and reading ----------------------------------------------------------------

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        while data:
            written = os.write(self.master_fd, data[:256])
            data = data[written:]

    def type(self, line: str) -> None:
        """Type a line and press Enter (CR, as picocom sends)."""
        self.send(line + "\r")

    def _pump(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master_fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master_fd, 65536)
        except OSError:
            return False
        self.raw += chunk.decode("utf-8", "replace")
        return bool(chunk)

    @property
    def screen(self) -> str:
        return clean(self.raw)

    def expect(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> str:
        """Wait until ``pattern`` shows after what earlier expects consumed; return the
        screen text up to and including it."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen
            match = regex.search(text, self._pos)
            if match is not None:
                out = text[self._pos : match.end()]
                self._pos = match.end()
                return out
            if self.ended is not None:
                raise AssertionError(f"console ended with {self.ended!r}; screen:\n{text[-2000:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{regex.pattern!r} not shown within {timeout} s; screen since last "
                    f"match:\n{text[self._pos :][-3000:]}"
                )
            self._pump(min(remaining, 0.1))

    def drain(self, quiet_s: float = 0.3, limit_s: float = 15.0) -> None:
        """Read until the screen has been quiet for ``quiet_s``."""
        end = time.monotonic() + limit_s
        while time.monotonic() < end and self._pump(quiet_s):
            pass

    def skip(self) -> None:
        """Consume everything shown so far."""
        self._pos = len(self.screen)

    # -- the technician's routine ----------------------------------------------------------

    def login(self, tech: str = TECH, pin: str = PIN) -> str:
        self.expect("login: ")
        self.type(tech)
        self.expect("PIN: ")
        self.type(pin)
        return self.expect(PROMPT)

    def run(self, line: str, timeout: float = 15.0) -> str:
        """Type a command; the output up to the next prompt (without the prompt line)."""
        self.type(line)
        out = self.expect(PROMPT, timeout)
        return out.rsplit("\n", 1)[0]

    def answer_yes(self, line: str, timeout: float = 20.0) -> str:
        """Type a command that asks for confirmation, answer yes; output to the next prompt."""
        self.type(line)
        self.expect("Type yes to go on: ")
        self.type("yes")
        return self.expect(PROMPT, timeout).rsplit("\n", 1)[0]

    def close(self) -> None:
        os.close(self.master_fd)
        self._thread.join(5.0)
        os.close(self.slave_fd)


@pytest.fixture(name="pty_console")
def pty_console_fixture(site: Site) -> Iterator[PtyConsole]:
    console = PtyConsole(site.config_path)
    yield console
    console.close()
