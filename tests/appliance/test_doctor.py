"""``gasguard doctor`` against the simulated kitchen (real ptys with emulated Modbus detectors,
gpiozero mock pins, the real event store): a good set-up and broken ones."""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from gateway.appliance import doctor
from gateway.appliance.cli import add_parsers
from gateway.appliance.doctor import (
    Check,
    Environment,
    Status,
    check_clock,
    check_event_store,
    check_hw_watchdog,
    check_uart,
    run_checks,
)
from gateway.appliance.install import PiModel
from gateway.config import BusConfig
from gateway.core.model import Event
from gateway.safety.controller import Controller
from gateway.sim.kitchen import SimBus, SimDetector, SimulatedKitchen
from gateway.store.events import SCHEMA_VERSION, EventStore

DETECTORS = (
    SimDetector("wok-1", "hot-kitchen", "bus0", 1, "generic-cn-kitchen", "natural-gas"),
    SimDetector("wok-2", "hot-kitchen", "bus0", 2, "generic-cn-kitchen", "natural-gas"),
    SimDetector("fryer", "hot-kitchen", "bus1", 1, "honeywell-sensepoint-xcd", "natural-gas"),
)
BUSES = (SimBus("bus0", 9600, "N"), SimBus("bus1", 19200, "E"))
PI4 = PiModel("Raspberry Pi 4 Model B Rev 1.4", "pi4")
NOT_PI = PiModel("", "none")


def fake_run(answers: dict[str, tuple[int, str]]) -> Callable[[Sequence[str]], tuple[int, str]]:
    """A stand-in for timedatectl/systemctl keyed by the program name (127: not installed)."""

    def run(cmd: Sequence[str]) -> tuple[int, str]:
        return answers.get(cmd[0], (127, ""))

    return run


@pytest.fixture
def kitchen(tmp_path: Path) -> Iterator[SimulatedKitchen]:
    k = SimulatedKitchen(
        tmp_path / "kitchen",
        buses=BUSES,
        detectors=DETECTORS,
        travel_s=0.05,
        poll_period_s=0.2,
        comm_fault_timeout_s=1.5,
    )
    k.start()
    k.set_all_gas(1.0)
    yield k
    k.stop()


def env_for(kitchen: SimulatedKitchen, tmp_path: Path, service: str | None = None) -> Environment:
    return Environment(
        root=tmp_path / "root",  # no /proc/device-tree: not a Pi
        pin_factory=kitchen.factory,
        run=fake_run({"timedatectl": (0, "yes\n"), "systemctl": (0, "10s\n")}),
        service_state=lambda: service,
    )


def by_name(checks: Sequence[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def make_event_log(kitchen: SimulatedKitchen) -> Path:
    """The event log as a controller run leaves it."""
    db = kitchen.config().data_dir / "events.db"
    with EventStore(db) as store:
        for i in range(50):
            store.append(time.time(), Event("fault.raised", "wok-1", float(i), {"n": i}))
    return db


# ---------------------------------------------------------------------------------------------
# Good set-ups
# ---------------------------------------------------------------------------------------------


def test_good_kitchen_with_the_controller_stopped(
    kitchen: SimulatedKitchen, tmp_path: Path
) -> None:
    make_event_log(kitchen)
    checks = run_checks(kitchen.config_path, env_for(kitchen, tmp_path))
    got = by_name(checks)
    assert got["config"].status is Status.PASS
    assert got["controller"].status is Status.WARN  # not running: the doctor polls itself
    for name in ("uart bus0", "uart bus1", "disk", "clock", "watchdog"):
        assert got[name].status is Status.PASS, got[name]
    for d in ("wok-1", "wok-2", "fryer"):
        check = got[f"detector {d}"]
        assert check.status is Status.PASS, check
        assert "answers: 1.0 %LEL, normal" in check.message
    # The doctor really asked each detector itself, on the bus.
    assert all(det.requests_seen >= 1 for det in kitchen.detectors.values())
    assert got["valve main-inlet"].status is Status.PASS
    assert "closed" in got["valve main-inlet"].message
    assert got["event log"].status is Status.PASS
    assert f"integrity ok, schema {SCHEMA_VERSION}, 50 events" in got["event log"].message
    assert got["gpio"].status is Status.WARN  # mock pins are never a real valve
    assert got["uplinks"].status is Status.WARN
    assert doctor.exit_status(checks) == 0


def test_good_kitchen_with_the_controller_running_is_asked_not_polled(
    kitchen: SimulatedKitchen, tmp_path: Path
) -> None:
    controller = Controller(kitchen.config(), pin_factory=kitchen.factory, simulated=True)
    controller.start()
    try:
        assert controller.first_poll_done.wait(5)
        time.sleep(0.3)  # the valve's contact confirms "closed"
        assert controller.recorder is not None and controller.recorder.flush(5)
        polls = {name: d.requests_seen for name, d in kitchen.detectors.items()}
        checks = run_checks(kitchen.config_path, env_for(kitchen, tmp_path))
        got = by_name(checks)
        assert got["controller"].status is Status.PASS
        assert "SIMULATED" in got["controller"].message
        for d in ("wok-1", "wok-2", "fryer"):
            assert got[f"detector {d}"].status is Status.PASS, got[f"detector {d}"]
        assert got["valve main-inlet"].status is Status.PASS
        assert "commanded closed, contact agrees" in got["valve main-inlet"].message
        assert got["event log"].status is Status.PASS  # read-only beside the live writer
        assert doctor.exit_status(checks) == 0
        # Only the controller's own polling went on: the doctor did not take the port.
        serial_busy = [c for c in checks if "cannot be opened" in c.message]
        assert serial_busy == []
        assert all(kitchen.detectors[n].requests_seen >= polls[n] for n in polls)
    finally:
        controller.stop()


# ---------------------------------------------------------------------------------------------
# Broken set-ups
# ---------------------------------------------------------------------------------------------


def test_silent_detector_missing_port_and_corrupt_event_log_fail(
    kitchen: SimulatedKitchen, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kitchen.detectors["wok-2"].silent = True
    kitchen.emulators["bus1"].unplug()  # the USB adapter of bus1 is gone
    db = kitchen.config().data_dir / "events.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not an SQLite database, it was overwritten" * 200)
    env = env_for(kitchen, tmp_path)
    checks = run_checks(kitchen.config_path, env)
    got = by_name(checks)
    assert got["detector wok-1"].status is Status.PASS
    assert got["detector wok-2"].status is Status.FAIL
    assert "no valid reply (bus0 address 2" in got["detector wok-2"].message
    assert got["uart bus1"].status is Status.FAIL
    assert "does not exist" in got["uart bus1"].message
    assert got["detector fryer"].status is Status.FAIL
    assert "cannot be opened" in got["detector fryer"].message
    assert got["event log"].status is Status.FAIL
    assert "corrupt or not a SQLite database" in got["event log"].message
    assert doctor.exit_status(checks) == 1

    # The command line: the same verdicts, one line each, hints under the failures.
    assert doctor.main(kitchen.config_path, env=env) == 1
    text = capsys.readouterr().out
    assert "FAIL  detector wok-2" in text
    assert "-> check power, RS-485 wiring" in text
    assert text.rstrip().splitlines()[-1].startswith("4 FAIL,")


def test_damaged_page_fails_the_integrity_check(kitchen: SimulatedKitchen) -> None:
    db = make_event_log(kitchen)
    with EventStore(db) as store:  # enough rows for several b-tree pages
        store.append_many(
            [(time.time(), Event("fault.raised", "x" * 200, float(i))) for i in range(300)]
        )
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.close()
    data = bytearray(db.read_bytes())
    pages = len(data) // page_size
    assert pages > 4
    # Break the header of a page in the middle of the events b-tree: still a SQLite file (page
    # 1 intact), but one of its pages is no longer a valid b-tree page.
    start = (pages // 2) * page_size
    data[start : start + 16] = bytes([0xFF] * 16)
    db.write_bytes(bytes(data))
    check = check_event_store(db)
    assert check.status is Status.FAIL
    assert "integrity check failed" in check.message or "corrupt" in check.message


def test_silent_detector_fails_through_the_running_controller(
    kitchen: SimulatedKitchen, tmp_path: Path
) -> None:
    controller = Controller(kitchen.config(), pin_factory=kitchen.factory, simulated=True)
    controller.start()
    try:
        assert controller.first_poll_done.wait(5)
        kitchen.detectors["fryer"].silent = True
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            fryer = next(d for d in controller.status()["detectors"] if d["name"] == "fryer")
            if fryer["state"] == "comm-fault":
                break
            time.sleep(0.05)
        checks = run_checks(kitchen.config_path, env_for(kitchen, tmp_path))
        got = by_name(checks)
        assert got["detector fryer"].status is Status.FAIL
        assert "no valid reply" in got["detector fryer"].message
        assert doctor.exit_status(checks) == 1
    finally:
        controller.stop()


def test_active_service_that_does_not_answer_is_never_raced_for_the_port(
    kitchen: SimulatedKitchen, tmp_path: Path
) -> None:
    polls = {name: d.requests_seen for name, d in kitchen.detectors.items()}
    checks = run_checks(kitchen.config_path, env_for(kitchen, tmp_path, service="active"))
    got = by_name(checks)
    assert got["controller"].status is Status.FAIL
    assert "does not answer" in got["controller"].message
    assert got["detector wok-1"].status is Status.WARN
    assert "the controller owns the port" in got["detector wok-1"].message
    assert {n: d.requests_seen for n, d in kitchen.detectors.items()} == polls


def test_invalid_config_fails_and_says_where(tmp_path: Path) -> None:
    bad = tmp_path / "gasguard.toml"
    bad.write_text('[site]\nid = "x y"\n', encoding="utf-8")
    env = Environment(root=tmp_path, run=fake_run({}), service_state=lambda: None)
    checks = run_checks(bad, env)
    assert checks[0].status is Status.FAIL
    assert str(bad) in checks[0].message and "site.id" in checks[0].message
    assert "gasguard check-config" in checks[0].hint
    assert doctor.exit_status(checks) == 1


def test_valve_open_without_a_controller_fails(kitchen: SimulatedKitchen, tmp_path: Path) -> None:
    assert kitchen.valve is not None
    kitchen.valve.stuck_open = True  # the contact never says closed
    time.sleep(0.1)
    checks = run_checks(kitchen.config_path, env_for(kitchen, tmp_path))
    check = by_name(checks)["valve main-inlet"]
    assert check.status is Status.FAIL
    assert "OPEN although no controller holds the coil" in check.message


# ---------------------------------------------------------------------------------------------
# Single checks
# ---------------------------------------------------------------------------------------------


def uart_bus(port: Path, parity: str) -> BusConfig:
    return BusConfig("bus0", str(port), 9600, parity, 1, 0.2, 0.0, False, 1)


def fake_tty(root: Path, name: str, driver: str) -> Path:
    """A serial device named ``name`` whose sysfs driver link points at ``driver``."""
    dev = root / "dev" / name
    dev.parent.mkdir(parents=True, exist_ok=True)
    dev.write_text("")
    sys_dev = root / "sys/class/tty" / name / "device"
    sys_dev.mkdir(parents=True)
    (sys_dev / "driver").symlink_to(f"../../../bus/platform/drivers/{driver}")
    return dev


def test_mini_uart_fails_with_parity_and_warns_without(tmp_path: Path) -> None:
    port = fake_tty(tmp_path, "ttyS0", "bcm2835-aux-uart")
    even = check_uart(uart_bus(port, "E"), PI4, tmp_path)
    assert even.status is Status.FAIL
    assert "mini UART" in even.message and "8E1" in even.message
    assert "dtoverlay=disable-bt" in even.hint
    assert check_uart(uart_bus(port, "N"), PI4, tmp_path).status is Status.WARN
    pl011 = fake_tty(tmp_path, "ttyAMA0", "uart-pl011")
    good = check_uart(uart_bus(pl011, "E"), PI4, tmp_path)
    assert good.status is Status.PASS and "uart-pl011" in good.message
    missing = check_uart(uart_bus(tmp_path / "dev/ttyAMA1", "N"), PI4, tmp_path)
    assert missing.status is Status.FAIL and "dtoverlay" in missing.hint


def test_clock_check() -> None:
    yes = check_clock(Environment(run=fake_run({"timedatectl": (0, "yes\n")})))
    assert yes.status is Status.PASS
    no = check_clock(Environment(run=fake_run({"timedatectl": (0, "no\n")})))
    assert no.status is Status.WARN and "not synchronised" in no.message
    absent = check_clock(Environment(run=fake_run({})))
    assert absent.status is Status.WARN and "cannot tell" in absent.message


@pytest.mark.parametrize(
    ("shown", "model", "status"),
    [
        ("10s", PI4, Status.PASS),
        ("1min", PI4, Status.FAIL),
        ("1min", NOT_PI, Status.PASS),
        ("0", PI4, Status.WARN),
        ("", PI4, Status.WARN),
    ],
)
def test_hardware_watchdog_check(shown: str, model: PiModel, status: Status) -> None:
    env = Environment(run=fake_run({"systemctl": (0, shown + "\n")}))
    assert check_hw_watchdog(model, env).status is status


def test_uplink_extension_point(
    kitchen: SimulatedKitchen, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor, "UPLINK_CHECKS", [])

    def reachable(cfg: object) -> list[Check]:
        return [doctor.ok("uplink mqtt", "broker answers")]

    def broken(cfg: object) -> list[Check]:
        raise OSError("network unreachable")

    doctor.register_uplink_check(reachable)
    doctor.register_uplink_check(broken)
    got = by_name(run_checks(kitchen.config_path, env_for(kitchen, tmp_path)))
    assert got["uplink mqtt"].status is Status.PASS
    assert got["uplink"].status is Status.FAIL and "network unreachable" in got["uplink"].message
    assert "uplinks" not in got


def test_doctor_subcommand_json(
    kitchen: SimulatedKitchen, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="gasguard")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", "--config", str(kitchen.config_path), "--json"])
    assert args.config == kitchen.config_path and args.json
    # The JSON form, through doctor.main (as the subcommand calls it), with the kitchen's pins.
    env = Environment(
        root=kitchen.workdir,
        pin_factory=kitchen.factory,
        run=fake_run({}),
        service_state=lambda: None,
    )
    rc = doctor.main(kitchen.config_path, json_output=True, env=env)
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert {"status", "name", "message", "hint"} <= set(rows[0])
    assert any(r["name"] == "detector fryer" and r["status"] == "PASS" for r in rows)
