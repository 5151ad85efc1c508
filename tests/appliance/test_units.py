"""The systemd units, drop-ins and udev rule in config/: verified by systemd itself
(``systemd-analyze verify``, Debian's systemd package) and checked for the settings gas safety
depends on; and the ``safe-outputs`` command the unit runs after the controller ends."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gateway.appliance.cli import add_parsers, safe_outputs
from gateway.appliance.heartbeat import MIN_INTERVAL_S
from gateway.config import load_config
from gateway.profiles import default_profiles_dir
from gateway.safety.main import build_parser as build_safety_parser
from tests.commands import require_command

CONFIG = Path(__file__).resolve().parents[2] / "config"
SYSTEMD = CONFIG / "systemd"
SERVICE = SYSTEMD / "gasguard-safety.service"
UPLINKS = SYSTEMD / "gasguard-uplinks.service"
CONSOLE = SYSTEMD / "gasguard-console@.service"
WATCHDOG_DROPIN = SYSTEMD / "system.conf.d" / "gasguard-watchdog.conf"
JOURNALD_DROPIN = SYSTEMD / "journald.conf.d" / "gasguard.conf"
UDEV_RULE = CONFIG / "udev" / "99-gasguard-serial.rules"
APP = "/opt/gasguard/current"



def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not KEY=VALUE"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(span: str) -> float:
    """A systemd time span such as 5s, 2min, 150s."""
    units = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(number) * units[unit or "s"]
    return total


def render(unit: Path, into: Path) -> Path:
    """The unit with its ExecStart paths pointing at a fake gasguard in ``into`` (systemd-analyze
    checks that every command exists and is executable)."""
    app = into / "app"
    (app / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("gasguard", "gasguard-safety", "gasguard-uplinks"):
        exe = app / "bin" / name
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    target = into / unit.name
    target.write_text(unit.read_text(encoding="utf-8").replace(APP, str(app)), encoding="utf-8")
    return target


def verify(*units: Path) -> list[str]:
    """systemd-analyze verify's complaints about ``units`` (empty when clean)."""
    systemd_analyze = require_command("systemd-analyze", "systemd")
    done = subprocess.run(
        [systemd_analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = [u.name for u in units] + [str(u.parent) for u in units]
    complaints = [
        line for line in (done.stdout + done.stderr).splitlines() if any(n in line for n in names)
    ]
    if done.returncode != 0 and not complaints:
        complaints = [f"exit {done.returncode}: {done.stderr.strip()}"]
    return complaints


# ---------------------------------------------------------------------------------------------
# systemd-analyze verify
# ---------------------------------------------------------------------------------------------


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    service = render(SERVICE, tmp_path)
    uplinks = render(UPLINKS, tmp_path)
    console = render(CONSOLE, tmp_path)
    instance = tmp_path / "gasguard-console@ttyUSB1.service"
    instance.symlink_to(console.name)
    assert verify(service) == []
    assert verify(uplinks) == []
    assert verify(console) == []
    assert verify(instance) == []


def test_verify_does_catch_a_broken_unit(tmp_path: Path) -> None:
    """Guards the test above: a typo and a missing command must be reported."""
    service = render(SERVICE, tmp_path)
    text = service.read_text().replace("WatchdogSec=5s", "WatchdogSecs=5s")
    service.write_text(text.replace(str(tmp_path / "app"), "/nonexistent/gasguard"))
    complaints = "\n".join(verify(service))
    assert "WatchdogSecs" in complaints
    assert "/nonexistent/gasguard" in complaints


# ---------------------------------------------------------------------------------------------
# What gas safety depends on
# ---------------------------------------------------------------------------------------------


def test_controller_unit_settings() -> None:
    unit = parse_unit(SERVICE)
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    assert svc["Restart"] == "always"
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"], "systemd must never give up"
    watchdog = seconds(svc["WatchdogSec"])
    assert 0 < watchdog <= 15
    # A healthy controller beats after every complete cycle: two poll periods of the example
    # config must fit in half the watchdog interval (the heartbeat's patience).
    example = load_config(CONFIG / "gasguard.example.toml")
    assert 2 * example.timings.poll_period_s <= watchdog / 2
    assert watchdog / 2 > MIN_INTERVAL_S
    # READY waits for every detector to answer or be declared faulty (up to 100 s).
    assert seconds(svc["TimeoutStartSec"]) >= 100 + 30
    assert seconds(svc["RestartSec"]) <= 5
    assert svc["ExecStart"] == f"{APP}/bin/gasguard-safety --config /etc/gasguard/gasguard.toml"
    assert svc["ExecStopPost"] == (
        f"{APP}/bin/gasguard safe-outputs --config /etc/gasguard/gasguard.toml"
    )
    assert svc["User"] == svc["Group"] == "gasguard"
    assert set(svc["SupplementaryGroups"].split()) == {"dialout", "gpio"}
    assert svc["ProtectSystem"] == "strict"
    assert svc["ReadWritePaths"] == "/var/lib/gasguard"
    assert svc["StateDirectory"] == "gasguard"
    assert svc["RuntimeDirectory"] == "gasguard"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert svc[key] == "yes", key
    assert svc["DevicePolicy"] == "closed"
    allowed = unit["Service"]["DeviceAllow"]
    for device in ("char-ttyAMA rw", "char-ttyUSB rw", "char-gpiochip rw"):
        assert device in allowed
    env = " ".join(unit["Service"]["Environment"])
    assert "GPIOZERO_PIN_FACTORY=lgpio" in env
    assert "LG_WD=/run/gasguard" in env  # lgpio's pipes: not in a read-only cwd
    assert svc["LimitCORE"] == "0"  # no core files on the SD card
    # The valve must never wait for the network, nor for the uplinks; no network code runs.
    deps = " ".join(v for k in ("After", "Wants", "Requires") for v in unit["Unit"].get(k, []))
    assert "network" not in deps and "uplinks" not in deps
    assert svc["RestrictAddressFamilies"] == "AF_UNIX"
    # Real-time, modest, for the threads on the path to the valve only: above every ordinary
    # process, below the kernel's threads; the process may take that priority and no more.
    assert "CPUSchedulingPolicy" not in svc
    rt = next(v.split("=", 1)[1] for v in unit["Service"]["Environment"] if "GASGUARD_RT_" in v)
    assert 1 <= int(rt) <= 20 and svc["LimitRTPRIO"] == rt
    assert svc["LimitMEMLOCK"] == "infinity" and "GASGUARD_MLOCK=1" in env
    assert "GASGUARD_CPUS=safety" in env  # a core of its own


def test_uplinks_unit_settings() -> None:
    """Its own user (no GPIO, refused by the control socket), its own restart policy, the data
    directory read-only but for its outbox, and nothing the safety process waits for."""
    unit = parse_unit(UPLINKS)
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    assert svc["ExecStart"] == f"{APP}/bin/gasguard-uplinks --config /etc/gasguard/gasguard.toml"
    assert svc["Restart"] == "always"
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert svc["User"] == "gasguard-uplink" and svc["Group"] == "gasguard-uplink"
    assert "gpio" not in svc["SupplementaryGroups"].split()
    allowed = " ".join(unit["Service"]["DeviceAllow"])
    assert "gpiochip" not in allowed and "ttyAMA" not in allowed
    assert svc["ReadOnlyPaths"] == "/var/lib/gasguard"
    assert svc["ReadWritePaths"] == "/var/lib/gasguard/uplinks"
    assert "MemoryMax" in svc
    assert "GASGUARD_CPUS=others" in " ".join(unit["Service"]["Environment"])
    safety = parse_unit(SERVICE)["Unit"]
    assert not any(
        "uplinks" in v for k in ("Requires", "Wants", "BindsTo") for v in safety.get(k, [])
    )


def test_the_safety_unit_memory_cap_is_above_the_stated_budget() -> None:
    """docs/safety.md's budget, from the bounds themselves: the process, the recorder's
    backlog (its estimates times the objects' overhead) and its inbox of largest records."""
    from gateway.api.records import MAX_DETAILS_BYTES
    from gateway.store.backlog import INBOX_MAX_ITEMS, MAX_DROPPABLE_BYTES, MAX_KEPT_BYTES

    mib = 1024 * 1024
    process, overhead = 64 * mib, 3
    budget = (
        process
        + overhead * (MAX_KEPT_BYTES + MAX_DROPPABLE_BYTES)
        + INBOX_MAX_ITEMS * MAX_DETAILS_BYTES
    )
    svc = {k: v[-1] for k, v in parse_unit(SERVICE)["Service"].items()}
    cap = int(svc["MemoryMax"].removesuffix("M")) * mib
    assert cap >= budget * 1.25, (cap / mib, budget / mib)
    doc = (CONFIG.parent / "docs" / "safety.md").read_text()
    assert f"about {round(budget / mib)} MiB" in doc and f"MemoryMax={svc['MemoryMax']}" in doc


def test_commands_in_the_unit_exist_in_the_cli() -> None:
    unit = parse_unit(SERVICE)["Service"]
    exe, *run_args = unit["ExecStart"][0].split()
    assert exe.endswith("/gasguard-safety")
    args = build_safety_parser().parse_args(run_args)
    assert str(args.config) == "/etc/gasguard/gasguard.toml"
    parser = argparse.ArgumentParser(prog="gasguard")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(unit["ExecStopPost"][0].split()[1:])
    assert args.command == "safe-outputs"
    assert callable(args.func)


def test_console_unit_settings() -> None:
    unit = parse_unit(CONSOLE)
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    assert svc["TTYPath"] == "/dev/%I"
    assert svc["StandardInput"] == "tty"
    assert svc["Restart"] == "always"
    assert "serial-getty@%i.service" in unit["Unit"]["Conflicts"][0]
    assert svc["ExecStart"].startswith(f"{APP}/bin/gasguard console")


def test_hardware_watchdog_dropin_stays_within_bcm2835_wdt() -> None:
    dropin = parse_unit(WATCHDOG_DROPIN)
    assert set(dropin) == {"Manager"}
    assert set(dropin["Manager"]) <= {"RuntimeWatchdogSec", "RebootWatchdogSec", "WatchdogDevice"}
    runtime = seconds(dropin["Manager"]["RuntimeWatchdogSec"][-1])
    assert 0 < runtime <= 15, "bcm2835_wdt counts at most about 15 s"
    # The service's own watchdog is shorter: a hung controller is restarted before a reset.
    service = seconds(parse_unit(SERVICE)["Service"]["WatchdogSec"][-1])
    assert service < runtime


def test_journald_dropin_bounds_the_logs() -> None:
    journal = parse_unit(JOURNALD_DROPIN)["Journal"]
    assert journal["Storage"] == ["persistent"]
    assert journal["SystemMaxUse"] == ["64M"]
    assert seconds(journal["SyncIntervalSec"][-1]) >= 60


UDEV_KEY = re.compile(r'^\s*([A-Z_]+)(\{[^}]*\})?\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*$')
UDEV_MATCH = {"KERNEL", "SUBSYSTEM", "SUBSYSTEMS", "ENV", "ATTRS", "ATTR", "ACTION", "DRIVERS"}
UDEV_ASSIGN = {"SYMLINK", "GROUP", "MODE", "OWNER", "GOTO", "LABEL", "ENV", "TAG"}


def test_udev_rule_syntax() -> None:
    labels, gotos, symlinks = set(), set(), []
    for raw in UDEV_RULE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split(", "):
            m = UDEV_KEY.match(part)
            assert m, f'not KEY OP "value": {part!r} in {line!r}'
            key, _attr, op, value = m.groups()
            if op in ("==", "!="):
                assert key in UDEV_MATCH, f"{key} cannot be matched"
            else:
                assert key in UDEV_ASSIGN, f"{key} cannot be assigned"
            if key == "LABEL":
                labels.add(value)
            elif key == "GOTO":
                gotos.add(value)
            elif key == "SYMLINK":
                symlinks.append(value)
            elif key == "MODE":
                assert value == "0660"
    assert gotos <= labels
    assert symlinks and all(s.startswith("gasguard/") for s in symlinks)
    assert "ttyS0" not in " ".join(
        line for line in UDEV_RULE.read_text().splitlines() if not line.startswith("#")
    )


# ---------------------------------------------------------------------------------------------
# ExecStopPost: safe-outputs
# ---------------------------------------------------------------------------------------------


def site_config(tmp_path: Path, kind: str = "held-open") -> Path:
    text = (CONFIG / "gasguard.example.toml").read_text(encoding="utf-8")
    text = f'profiles_dir = "{default_profiles_dir()}"\n' + text
    if kind == "trip-to-close":
        text = text.replace('kind = "held-open"', 'kind = "trip-to-close"\npulse_ms = 50')
    path = tmp_path / "gasguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_safe_outputs_drops_a_coil_left_energised(tmp_path: Path) -> None:
    factory = MockFactory()
    try:
        coil: Any = factory.pin(17)
        coil.function = "output"
        coil.state = True  # a killed controller left the held-open valve's coil driven
        assert safe_outputs(site_config(tmp_path), pin_factory=factory) == 0
        assert coil.state is False or coil.state == 0
        assert [bool(s.state) for s in coil.states][-1] is False
    finally:
        factory.close()


def test_safe_outputs_trips_a_trip_to_close_valve(tmp_path: Path) -> None:
    factory = MockFactory()
    try:
        coil: Any = factory.pin(17)
        coil.clear_states()
        assert safe_outputs(site_config(tmp_path, "trip-to-close"), pin_factory=factory) == 0
        levels = [bool(s.state) for s in coil.states]
        assert True in levels, "a trip-to-close valve needs its trip pulse"
        assert levels[-1] is False, "and the coil ends de-energised"
    finally:
        factory.close()


def test_safe_outputs_refuses_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "gasguard.toml"
    bad.write_text("[site]\n", encoding="utf-8")
    assert safe_outputs(bad, pin_factory=MockFactory()) == 1
    assert "config not usable" in capsys.readouterr().err
