"""The safety process imports no uplink, console, simulator or network module: their bugs, hangs
and load stay in their own processes (``python -X importtime``, as the issue's check asks)."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = (
    "gateway.uplinks",
    "gateway.console",
    "gateway.sim",
    "paho",
    "ssl",
    "http",
    "tomlkit",
    "asyncio",
)


def imported_by(statement: str) -> list[str]:
    """The modules a fresh interpreter imports for ``statement``, from ``-X importtime``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.append(name)
    return names


def forbidden(names: list[str]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in FORBIDDEN or n.startswith(FORBIDDEN))


def test_the_safety_process_imports_no_uplink_console_or_network_module() -> None:
    names = imported_by("import gateway.safety.main")
    assert "gateway.safety.controller" in names and "gateway.drivers.valve" in names
    assert forbidden(names) == []


def test_the_gasguard_run_command_loads_only_the_safety_process() -> None:
    # `gasguard run` is parsed by the safety process's own module before anything else loads.
    names = imported_by(
        "import sys; sys.argv = ['gasguard', 'run', '--help']\n"
        "import gateway.cli\n"
        "try:\n    gateway.cli.main()\nexcept SystemExit:\n    pass"
    )
    assert "gateway.safety.main" in names
    assert forbidden(names) == []


def test_the_check_can_fail() -> None:
    """Guards the tests above: the uplinks process does import the network modules."""
    names = imported_by("import gateway.uplinks.service")
    assert "paho" in forbidden(names) and "gateway.uplinks.service" in forbidden(names)
