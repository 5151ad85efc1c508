"""The vm rig's scenarios (``--rig vm``): gasguard installed on a real Debian kernel with
systemd, a hardware watchdog, a GPIO chip and a UART, in QEMU (``hil_tests.vm``).

One guest serves the module, in order: install and boot, a leak, the safety process frozen,
the uplinks frozen, an upgrade to a broken release, a power cut, a hung PID 1. Each scenario
leaves the kitchen normal with the valve open, or says so. Times go into the HIL report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from hil_tests.conftest import Timings
from hil_tests.vm.appliance import (
    BROKEN_VERSION,
    LEAK_LEL,
    NORMAL_LEL,
    SAFETY,
    UPLINKS,
    Appliance,
    Kitchen,
    broken_release,
    make_payload,
    site_config,
    start_kitchen,
    wait_until,
)
from hil_tests.vm.image import ensure_image
from hil_tests.vm.machine import VirtualPi

# A first run builds the image (about 3 minutes with the package cache warm, more without),
# then installs gasguard under TCG emulation: far beyond the suite's per-test default.
pytestmark = pytest.mark.timeout(1800)

# GB 16808: an alarm within 10 s. Under TCG the guest is several times slower than a Pi, and
# the host reads the line through the guest agent; the leak itself is measured, this bounds it.
LEAK_BUDGET_S = 10.0
# WatchdogSec=5s in the unit, then the kill and ExecStopPost's safe outputs.
SERVICE_WATCHDOG_BUDGET_S = 20.0
# What `gasguard doctor` rightly warns about on this rig, and nothing else: the host does not
# move a valve body (no position contact), the guest has no network (no clock sync, no
# uplink configured).
DOCTOR_WARNS_HERE = {"valve main-inlet", "clock", "uplinks"}
# RuntimeWatchdogSec=10s (gasguard's drop-in) and the i6300ESB's own second stage.
HW_WATCHDOG_BUDGET_S = 60.0


@pytest.fixture(scope="module")
def vm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VirtualPi]:
    if request.config.getoption("--rig") != "vm":
        pytest.skip("vm scenarios: run with --rig vm (make hil RIG=vm)")
    if os.geteuid() != 0:
        pytest.skip("the vm rig builds its image with debootstrap: run as root")
    image = ensure_image(str(request.config.getoption("--vm-arch")))
    workdir = tmp_path_factory.mktemp("vm")
    machine = VirtualPi(image, workdir)
    machine.payload = make_payload(
        workdir,
        site_config(machine.bus_device),
        extra={"gasguard-broken": broken_release(workdir)},
    )
    try:
        yield machine
    finally:
        machine.kill()


@pytest.fixture(scope="module")
def kitchen(vm: VirtualPi) -> Iterator[Kitchen]:
    vm.boot()
    made = start_kitchen(vm)
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def appliance(vm: VirtualPi, kitchen: Kitchen, timings: Timings) -> Appliance:
    """gasguard installed as docs/install.md says, the guest rebooted, the units up."""
    app = Appliance(vm)
    started = time.monotonic()
    app.install()
    timings.record("vm install", f"install ({vm.accel})", time.monotonic() - started, 900)
    booted = app.reboot()
    ready = wait_until("gasguard-safety READY", lambda: app.active(SAFETY), 180, every_s=0.5)
    timings.record("vm boot", "reboot to READY", booted + ready, 300)
    return app


def _leak_closes_valve(app: Appliance, kitchen: Kitchen, timings: Timings, scenario: str) -> None:
    app.open_valve()
    t0 = time.monotonic()
    kitchen.gas("wok-1", LEAK_LEL)
    took = wait_until("the valve line dropping", lambda: not app.valve_energised(), LEAK_BUDGET_S)
    timings.record(scenario, "leak to valve line low", took, LEAK_BUDGET_S)
    kitchen.gas("wok-1", NORMAL_LEL)
    assert time.monotonic() - t0 < LEAK_BUDGET_S


def test_installed_units_start_and_the_doctor_passes(appliance: Appliance) -> None:
    assert appliance.active(SAFETY)
    # The uplinks start beside the safety process, never before it is READY nor waited for
    # by it: under load they may still be on their way (or in a restart) at this point.
    wait_until("gasguard-uplinks active", lambda: appliance.active(UPLINKS), 60, every_s=0.5)
    doctor = appliance.vm.run("gasguard doctor --json", 180)
    assert doctor.status == 0, doctor.stdout + doctor.stderr
    print(doctor.stdout)  # in the report of a -rA run
    verdicts = {c["name"]: c["status"] for c in json.loads(doctor.stdout)}
    # Everything PASS but what this rig cannot give: see DOCTOR_WARNS_HERE.
    assert {k for k, v in verdicts.items() if v != "PASS"} == DOCTOR_WARNS_HERE, doctor.stdout
    assert {"uart bus0", "gpio", "detector wok-1", "watchdog", "event log"} <= set(verdicts)
    # The valve stays closed after the boot: the gas never comes back by itself.
    assert not appliance.valve_energised()
    watchdog = appliance.sh("systemctl show -p RuntimeWatchdogUSec --value").strip()
    assert watchdog == "10s"


def test_a_leak_on_the_bus_drops_the_valve_line(
    appliance: Appliance, kitchen: Kitchen, timings: Timings
) -> None:
    _leak_closes_valve(appliance, kitchen, timings, "vm leak")
    latched = appliance.status()
    assert any(
        d["name"] == "wok-1" and d.get("latched") not in (None, "normal")
        for d in latched["detectors"]
    ), latched


def test_a_frozen_safety_process_is_killed_by_systemd_and_the_valve_drops(
    appliance: Appliance, kitchen: Kitchen, timings: Timings
) -> None:
    appliance.open_valve()
    pid = appliance.main_pid(SAFETY)
    restarts = int(appliance.unit(SAFETY, "NRestarts")["NRestarts"])
    appliance.sh(f"kill -STOP {pid}")
    took = wait_until(
        "the valve line dropping after the freeze",
        lambda: not appliance.valve_energised(),
        SERVICE_WATCHDOG_BUDGET_S,
        every_s=0.2,
    )
    timings.record("vm frozen safety", "freeze to valve line low", took, SERVICE_WATCHDOG_BUDGET_S)
    wait_until(
        "the safety process restarted",
        lambda: appliance.active(SAFETY) and appliance.main_pid(SAFETY) not in (0, pid),
        120,
        every_s=0.5,
    )
    state = appliance.unit(SAFETY, "NRestarts")
    assert int(state["NRestarts"]) == restarts + 1
    journal = appliance.sh(f"journalctl -u {SAFETY} -b --no-pager | tail -n 200")
    assert "Watchdog timeout" in journal, journal[-3000:]
    # Restarted with the valve closed: it never opens by itself.
    time.sleep(2)
    assert not appliance.valve_energised()


def test_frozen_uplinks_do_not_slow_the_valve(
    appliance: Appliance, kitchen: Kitchen, timings: Timings
) -> None:
    pid = appliance.main_pid(UPLINKS)
    appliance.sh(f"kill -STOP {pid}")
    try:
        _leak_closes_valve(appliance, kitchen, timings, "vm uplinks frozen")
    finally:
        appliance.sh(f"kill -CONT {pid}")
    assert appliance.active(SAFETY)


# `gasguard upgrade` builds the new venv under emulation, then waits for READY (150 s at most)
# and, rolling back, for the old version's READY again.
UPGRADE_BUDGET_S = 900.0
SCHEMA = (
    'python3 -c "import sqlite3; print(sqlite3.connect('
    "'file:/var/lib/gasguard/events.db?mode=ro', uri=True)"
    ".execute('PRAGMA user_version').fetchone()[0])\""
)


def test_an_upgrade_to_a_broken_release_rolls_back_by_itself(
    appliance: Appliance, kitchen: Kitchen, timings: Timings
) -> None:
    _leak_closes_valve(appliance, kitchen, timings, "vm upgrade")
    appliance.open_valve()
    current = appliance.sh("readlink /opt/gasguard/current").strip()
    schema = appliance.sh(SCHEMA).strip()
    before = appliance.events()
    started = time.monotonic()
    # As docs/install.md, section 4, with the release on the payload disk for `git pull`.
    payload = appliance.mount_payload()
    upgrade = appliance.vm.run(
        f"rm -rf /root/gasguard-broken && cp -a {payload}/gasguard-broken /root/ && "
        "cd /root/gasguard-broken && gasguard upgrade --source . --yes 2>&1",
        UPGRADE_BUDGET_S,
    )
    took = time.monotonic() - started
    out = upgrade.stdout + upgrade.stderr
    assert upgrade.status == 1, out
    assert f"upgrade to {BROKEN_VERSION} FAILED and was rolled back to " in out, out
    assert "restore" in out, out  # the migrated event log was put back
    timings.record("vm upgrade", "broken upgrade to rolled back and READY", took, UPGRADE_BUDGET_S)
    # The old version is in service again, with its units, its schema and every event.
    assert appliance.sh("readlink /opt/gasguard/current").strip() == current
    assert appliance.active(SAFETY)
    assert appliance.sh(SCHEMA).strip() == schema
    seqs = {e["seq"] for e in appliance.events()}
    assert not [e for e in before if e["seq"] not in seqs]
    kept = appliance.sh("ls /var/lib/gasguard /opt/gasguard/versions")
    assert f"events.db.failed-{BROKEN_VERSION}-" in kept, kept  # evidence kept
    assert BROKEN_VERSION in kept, kept  # the failed venv, for inspection
    # The upgrade stopped the service: the valve closed and stays closed until the local reset,
    # rollback or not. Then the old version protects the kitchen as before.
    assert not appliance.valve_energised()
    time.sleep(3)
    assert not appliance.valve_energised()
    _leak_closes_valve(appliance, kitchen, timings, "vm after rollback")


def test_a_power_cut_loses_no_stored_event(
    appliance: Appliance, kitchen: Kitchen, timings: Timings
) -> None:
    _leak_closes_valve(appliance, kitchen, timings, "vm power cut")
    before = appliance.events()
    assert any(e["kind"] == "alarm.raised" for e in before[-20:])
    appliance.vm.reset()  # no shutdown: what the guest had not written is lost
    started = time.monotonic()
    appliance.vm.wait_for_agent(300)
    wait_until(
        "gasguard-safety READY after the power cut", lambda: appliance.active(SAFETY), 180, 0.5
    )
    timings.record("vm power cut", "power-on to READY", time.monotonic() - started, 300)
    after = appliance.events()
    seqs = {e["seq"] for e in after}
    lost = [e for e in before if e["seq"] not in seqs]
    assert not lost, f"lost after the power cut: {lost}"
    # The latch survived: the valve stays closed until the local reset.
    assert not appliance.valve_energised()


def test_a_hung_pid1_is_reset_by_the_hardware_watchdog_and_the_latch_is_kept(
    appliance: Appliance, kitchen: Kitchen, timings: Timings
) -> None:
    vm = appliance.vm
    _leak_closes_valve(appliance, kitchen, timings, "vm hung pid 1")
    assert vm.monitor is not None
    seen = len(vm.monitor.poll_events())
    # systemd catches SIGSEGV, dumps core and freezes: PID 1 stops feeding the watchdog.
    vm.run("kill -SEGV 1", 10)
    started = time.monotonic()
    deadline = started + HW_WATCHDOG_BUDGET_S
    fired = None
    while fired is None and time.monotonic() < deadline:
        events = vm.monitor.poll_events(wait_s=1.0)[seen:]
        fired = next((e for e in events if e.name == "WATCHDOG"), None)
    assert fired is not None, "no WATCHDOG event from QEMU"
    timings.record(
        "vm hung pid 1",
        "PID 1 frozen to watchdog reset",
        fired.received_at - started,
        HW_WATCHDOG_BUDGET_S,
    )
    vm._drop_agent()
    vm.wait_for_agent(300)
    wait_until("gasguard-safety READY after the reset", lambda: appliance.active(SAFETY), 180, 0.5)
    status = appliance.status()
    assert any(
        d["name"] == "wok-1" and d.get("latched") not in (None, "normal")
        for d in status["detectors"]
    ), status
    assert not appliance.valve_energised()
