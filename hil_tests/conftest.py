"""The HIL suite's rig options, fixtures and timing report.

``--rig sim`` (default) runs every scenario against the fixture firmware on the host; ``--rig hw
--fixture-port /dev/ttyACM0 --bus-port /dev/ttyAMA0`` runs the same scenarios on a real Pi +
Pico (skipped, with the reason, when those ports are absent). Measured timings are printed at
the end of the run and written to ``--hil-report`` (build/hil/report.txt by default).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hil_tests.firmware_host import REPO
from hil_tests.rigs import Gateway, HwRig, Rig, SimRig, Site

DEFAULT_REPORT = REPO / "build" / "hil" / "report.txt"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop rig")
    group.addoption(
        "--rig",
        choices=("sim", "vm", "hw"),
        default="sim",
        help="sim: fixture firmware on this host (default); vm: gasguard installed in a Debian "
        "guest in QEMU (test_vm.py, as root); hw: a real Pi + Pico",
    )
    group.addoption(
        "--vm-arch",
        choices=("x86_64", "aarch64"),
        default="x86_64",
        help="vm rig: the guest's architecture (aarch64 is the Pi's; slower under TCG)",
    )
    group.addoption(
        "--fixture-port", default="/dev/ttyACM0", help="hw rig: the Pico's USB CDC port"
    )
    group.addoption("--bus-port", default="/dev/ttyAMA0", help="hw rig: the Pi's RS-485 UART")
    group.addoption(
        "--hil-report",
        type=Path,
        default=DEFAULT_REPORT,
        help="where to write the measured timings (default: build/hil/report.txt)",
    )


@dataclass(frozen=True, slots=True)
class Timing:
    scenario: str
    what: str
    measured_s: float
    budget_s: float


@dataclass
class Timings:
    """Measured intervals of this run, for the report."""

    rig: str
    rows: list[Timing] = field(default_factory=list)

    def record(self, scenario: str, what: str, measured_s: float, budget_s: float) -> None:
        self.rows.append(Timing(scenario, what, measured_s, budget_s))
        print(f"[{self.rig}] {scenario}: {what} {measured_s * 1000:.1f} ms (budget {budget_s} s)")

    def render(self) -> str:
        head = (
            f"gasguard HIL timings, rig={self.rig}, host={platform.node()}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            + (
                "All intervals on the host's clock (time.monotonic), the guest read through "
                "its agent.\n\n"
                if self.rig == "vm"
                else "All intervals on the fixture's clock (ticks_us).\n\n"
            )
        )
        width = max((len(r.scenario) for r in self.rows), default=8)
        body = "".join(
            f"{r.scenario:<{width}}  {r.what:<34} {r.measured_s * 1000:9.1f} ms"
            f"   budget {r.budget_s:g} s\n"
            for r in self.rows
        )
        return head + (body or "(no timings measured)\n")


_TIMINGS_KEY = pytest.StashKey[Timings]()


@pytest.fixture(scope="session")
def timings(request: pytest.FixtureRequest) -> Timings:
    config = request.config
    if _TIMINGS_KEY not in config.stash:
        config.stash[_TIMINGS_KEY] = Timings(str(config.getoption("--rig")))
    return config.stash[_TIMINGS_KEY]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    found = config.stash.get(_TIMINGS_KEY, None)
    if found is None or not found.rows:
        return
    terminalreporter.section("HIL timings")
    terminalreporter.write(found.render())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = session.config.stash.get(_TIMINGS_KEY, None)
    if found is None or not found.rows:
        return
    path: Path = session.config.getoption("--hil-report")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(found.render(), encoding="utf-8")


@pytest.fixture(scope="package")
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """The rig every scenario runs on, started once for this package and stopped after its
    last test (the sim rig's firmware shares the one fake ``machine`` module of the process,
    which tests/firmware/test_firmware.py also uses)."""
    kind = request.config.getoption("--rig")
    if kind == "vm":
        pytest.skip("needs the fixture board (sim or hw rig); the vm rig runs test_vm.py")
    workdir = tmp_path_factory.mktemp("rig")
    made: Rig
    if kind == "hw":
        fixture_port = str(request.config.getoption("--fixture-port"))
        bus_port = str(request.config.getoption("--bus-port"))
        why = HwRig.missing(fixture_port, bus_port)
        if why is not None:
            pytest.skip(why)
        made = HwRig(workdir, fixture_port, bus_port)
    else:
        made = SimRig(workdir)
    try:
        made.start()
        yield made
    finally:
        made.close()  # also after a half-done start: no firmware thread or port left behind


@pytest.fixture
def start_gateway(rig: Rig, tmp_path: Path) -> Iterator[Callable[[Site], Gateway]]:
    """Factory: ``start_gateway(site)`` prepares the fixture for ``site`` and starts the gateway
    on it; the gateway is stopped at teardown."""
    made: list[Gateway] = []

    def start(site: Site) -> Gateway:
        gateway = rig.start_gateway(site, tmp_path / f"gateway{len(made)}")
        made.append(gateway)
        return gateway

    yield start
    for gateway in made:
        gateway.stop()
