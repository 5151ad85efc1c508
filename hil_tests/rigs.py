"""HIL rigs, in the manner of labgrid: a scenario asks its rig for a fixture and a gateway and
never knows which rig it is on.

* ``SimRig`` (``--rig sim``, the default; run by ``make test``): the fixture firmware runs on
  the host under CPython (``HostFirmware``), its UART on a pty pair that the gateway opens like
  ``/dev/ttyAMA0``, its GPIO lines joined to the gateway's gpiozero ``MockFactory`` pins.
* ``HwRig`` (``--rig hw --fixture-port /dev/ttyACM0 --bus-port /dev/ttyAMA0``): a real Pi runs
  this suite and the gateway, with gpiozero's real pin factory; a Pico with the fixture
  firmware is wired to it as in firmware/README.md.

Both wire the same lines (``WIRING``): the gateway's config uses the Pi side of each, the
fixture the Pico side. ``Gateway`` is the gasguard ``Controller`` under test, started from a
config the rig writes for the scenario.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpiozero import Factory
from gpiozero.pins.mock import MockFactory

from gateway import configfile
from gateway.config import Config, load_config
from gateway.safety.controller import Controller
from gateway.store.events import EventStore
from hil_tests.firmware_host import HostFirmware, load
from hil_tests.fixture_client import FixtureClient


@dataclass(frozen=True, slots=True)
class Wire:
    """One line between the Pi (BCM GPIO) and the Pico (GP number). ``to_pico``: the Pi drives
    it and the fixture watches it; otherwise the fixture drives it into a Pi input."""

    name: str
    pi: int
    pico: int
    to_pico: bool


PINS = configfile.EXAMPLE_PINS


def _wiring() -> tuple[Wire, ...]:
    board = load("fixture.board")
    valve, sounder, red, yellow, green, fan = board.WATCH_PINS
    return (
        # The Pi side is the example config's wiring.
        Wire("valve", PINS["valve"], valve, True),
        Wire("sounder", PINS["sounder"], sounder, True),
        Wire("red", PINS["red"], red, True),
        Wire("yellow", PINS["yellow"], yellow, True),
        Wire("green", PINS["green"], green, True),
        Wire("feedback", PINS["feedback"], board.FEEDBACK_PIN, False),
        Wire("reset", PINS["reset"], board.RESET_PIN, False),
        Wire("silence", PINS["silence"], board.SILENCE_PIN, False),
        Wire("fan", PINS["fan"], fan, True),
        Wire("fan_feedback", PINS["fan_feedback"], board.FAN_RUN_PIN, False),
        Wire("mains_failed", PINS["mains_failed"], board.MAINS_PIN, False),
        Wire("battery_low", PINS["battery_low"], board.BATTERY_PIN, False),
    )


WIRING = _wiring()
PI = {w.name: w.pi for w in WIRING}
RESET_HOLD_S = 2.0  # the gateway's reset_hold_s in every scenario config (the minimum allowed)


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    name: str
    address: int
    profile: str


@dataclass(frozen=True, slots=True)
class Site:
    """What one scenario runs: the detectors on the bus, its line settings and timings."""

    detectors: tuple[DetectorSpec, ...]
    baud: int = 9600
    parity: str = "N"
    poll_period_s: float = 0.1
    # Long enough that a loaded host (a poll stalled for over a second, seen in CI) never
    # raises a comm fault in a scenario that is not about silence; the silent-detector
    # scenario's budget follows it.
    comm_fault_timeout_s: float = 3.0
    confirm_count: int = 2
    close_confirm_s: float = 1.0
    bus_timeout_s: float = 0.1
    extra_config: str = ""
    fan_start_confirm_s: float = 2.0
    fan_run_on_s: float = 3.0


def config_text(site: Site, bus_port: str) -> str:
    """The gasguard config for ``site`` on this wiring, with every path relative to its file."""
    return configfile.render(
        configfile.SiteFile(
            site_id="HIL-RIG-01",
            site_name="HIL rig",
            site_address="test bench",
            buses=[
                configfile.BusSpec(
                    "bus0", bus_port, site.baud, site.parity, timeout_s=site.bus_timeout_s
                )
            ],
            detectors=[
                configfile.DetectorSpec(d.name, "kitchen", "bus0", d.address, d.profile)
                for d in site.detectors
            ],
            valves=[
                configfile.ValveSpec(
                    "main-inlet",
                    ("kitchen",),
                    PI["valve"],
                    PI["feedback"],
                    close_confirm_s=site.close_confirm_s,
                )
            ],
            fans=[
                configfile.FanSpec(
                    "hood",
                    ("kitchen",),
                    PI["fan"],
                    PI["fan_feedback"],
                    run_on_s=site.fan_run_on_s,
                    start_confirm_s=site.fan_start_confirm_s,
                )
            ],
            power=configfile.PowerSpec(PI["mains_failed"], PI["battery_low"]),
            poll_period_s=site.poll_period_s,
            comm_fault_timeout_s=site.comm_fault_timeout_s,
            confirm_count=site.confirm_count,
            reset_hold_s=RESET_HOLD_S,
            pins=PI,
            comment="Written by the HIL suite (hil_tests/rigs.py) for one scenario.",
            extra=site.extra_config,
        )
    )


class Gateway:
    """The gasguard controller under test. ``restart()`` stops the controller and starts a new
    one on the same config, data directory and pins (the gateway killed and started again)."""

    def __init__(self, config: Config, pin_factory: Factory | None, simulated: bool) -> None:
        self.config = config
        self._pin_factory = pin_factory
        self._simulated = simulated
        self.controller = self._new()
        # The uplinks run as on a site: their own process, reading the event log.
        self.uplinks: subprocess.Popen[bytes] | None = None
        if config.uplink_table:
            log = open(config.data_dir / "uplinks.log", "ab")  # noqa: SIM115 (lives with the child)
            self.uplinks = subprocess.Popen(
                [sys.executable, "-m", "gateway.uplinks.main", "--config", str(config.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()

    def _new(self) -> Controller:
        controller = Controller(
            self.config, pin_factory=self._pin_factory, simulated=self._simulated
        )
        controller.start()
        return controller

    def restart(self) -> None:
        self.controller.stop()
        self.controller = self._new()

    def stop(self) -> None:
        if self.uplinks is not None:
            self.uplinks.terminate()
            try:
                self.uplinks.wait(10)
            except subprocess.TimeoutExpired:
                self.uplinks.kill()
                self.uplinks.wait()
        self.controller.stop()

    def status(self) -> dict[str, Any]:
        return self.controller.status()

    def detector(self, name: str) -> dict[str, Any]:
        return next(d for d in self.status()["detectors"] if d["name"] == name)

    def events(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every stored event as (kind, source, details), oldest first."""
        recorder = self.controller.recorder
        assert recorder is not None
        assert recorder.flush(5), "the recorder did not store its queue within 5 s"
        with EventStore.open_readonly(self.controller.events_path) as reader:
            rows = reader.recent(10_000)
        return [(r.kind, r.source, r.details) for r in sorted(rows, key=lambda r: r.seq)]

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events()]


class Rig(ABC):
    """A fixture wired to a gateway host. Subclasses provide the ports and the pin factory."""

    name: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._fixture: FixtureClient | None = None

    @property
    def fixture(self) -> FixtureClient:
        if self._fixture is None:
            raise RuntimeError(f"{self.name} rig: not started")
        return self._fixture

    @property
    @abstractmethod
    def bus_port(self) -> str:
        """The serial port the gateway polls the fixture's detectors on."""

    @property
    @abstractmethod
    def pin_factory(self) -> Factory | None:
        """The gpiozero pin factory the gateway uses (None: gpiozero's own choice)."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def prepare(self, site: Site) -> None:
        """Bring the fixture to a known state for ``site``: its detectors at 0 %LEL, healthy,
        the valve contact following the drive after 50 ms, the fan's after 100 ms, the power
        healthy, no noise, no delay."""
        fx = self.fixture
        fx.command("clear")
        fx.command(f"bus {site.baud} {site.parity} 1")
        fx.command("valve closed-level high")
        fx.command("valve follow 50")
        fx.command("fan follow 100")
        fx.command("fan jam 0")
        fx.command("power mains ok")
        fx.command("power battery ok")
        for d in site.detectors:
            fx.command(f"add {d.address} {d.profile}")
            fx.command(f"gas {d.address} 0")

    def start_gateway(self, site: Site, directory: Path) -> Gateway:
        """Write the config for ``site`` in ``directory`` and start the gateway on it."""
        self.prepare(site)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "gasguard.toml"
        path.write_text(config_text(site, self.bus_port), encoding="utf-8")
        return Gateway(load_config(path), self.pin_factory, simulated=self.name == "sim")

    def open_valve(self, gateway: Gateway, timeout: float = 10.0) -> None:
        """The local manual reset, as a person would press it: wait for the first complete
        poll and every detector normal, then hold the reset button; the valve drive must come
        on. Raises AssertionError otherwise."""
        fx = self.fixture
        assert gateway.controller.first_poll_done.wait(timeout), "no complete first poll"
        assert wait_for(lambda: not gateway.status()["reset_blockers"], timeout), (
            f"reset still blocked: {gateway.status()['reset_blockers']}"
        )
        if fx.lines()["valve"]:
            return
        start = fx.now()
        fx.command(f"press reset {int((RESET_HOLD_S + 0.3) * 1000)}")
        edge = fx.wait_edge("valve", 1, start, RESET_HOLD_S + 5.0)
        assert edge is not None, f"the reset did not open the valve: {gateway.kinds()[-10:]}"
        # The valve body has opened (its contact says so) before the kitchen goes on: a leak
        # closes it within ~50 ms now, faster than the body's travel.
        assert wait_for(lambda: fx.lines()["feedback"] == 0, 3.0), "the valve never opened"


class SimRig(Rig):
    """The fixture firmware on the host, wired to gpiozero mock pins and a pty."""

    name = "sim"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.factory = MockFactory()
        self.firmware: HostFirmware | None = None

    @property
    def bus_port(self) -> str:
        assert self.firmware is not None
        return self.firmware.bus_path

    @property
    def pin_factory(self) -> Factory | None:
        return self.factory

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.firmware = HostFirmware(
            self.factory,
            self.workdir,
            watched={w.pico: w.pi for w in WIRING if w.to_pico},
            driven={w.pico: w.pi for w in WIRING if not w.to_pico},
        )
        self.firmware.start()
        self._fixture = FixtureClient(self.firmware.console_path)
        self._fixture.command("hello")

    def close(self) -> None:
        if self._fixture is not None:
            self._fixture.close()
        if self.firmware is not None:
            self.firmware.stop()
        self.factory.close()


class HwRig(Rig):
    """A real Pi (this host) and a real Pico on USB: the ports must exist."""

    name = "hw"

    def __init__(self, workdir: Path, fixture_port: str, bus_port: str) -> None:
        super().__init__(workdir)
        self._fixture_port = fixture_port
        self._bus_port = bus_port

    @staticmethod
    def missing(fixture_port: str, bus_port: str) -> str | None:
        """Why this host cannot be the hardware rig, or None if it can."""
        for what, port in (("--fixture-port", fixture_port), ("--bus-port", bus_port)):
            if not os.path.exists(port):
                return f"hw rig: {what} {port} does not exist (no Pico / RS-485 port here)"
        if os.environ.get("GPIOZERO_PIN_FACTORY") == "mock":
            return "hw rig: GPIOZERO_PIN_FACTORY=mock would give the gateway mock pins; unset it"
        return None

    @property
    def bus_port(self) -> str:
        return self._bus_port

    @property
    def pin_factory(self) -> Factory | None:
        return None

    def start(self) -> None:
        self._fixture = FixtureClient(self._fixture_port)
        self._fixture.command("hello")

    def close(self) -> None:
        if self._fixture is not None:
            self._fixture.close()


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` seconds passed; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def names(specs: Sequence[DetectorSpec]) -> list[str]:
    return [d.name for d in specs]
