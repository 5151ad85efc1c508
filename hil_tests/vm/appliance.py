"""gasguard installed in a ``VirtualPi`` the way docs/install.md tells a technician, with the
host-side kitchen around it: detectors on the guest's RS-485 UART and hands on its buttons.

``Appliance.install()`` hands the guest this checkout and a site config on a read-only disk,
runs ``python3 -m gateway.appliance.install`` from the copied tree, puts the config in
/etc/gasguard, checks it, and reboots: the units then start as they would on a Pi.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import configfile
from gateway.profiles import default_profiles_dir, load_profiles
from gateway.sim.emulator import BusEmulator, EmulatedDetector
from hil_tests.firmware_host import REPO
from hil_tests.vm.machine import MachineError, VirtualPi
from hil_tests.vm.protocol import ProtocolError

PINS = configfile.EXAMPLE_PINS
PROFILE = "generic-cn-kitchen"
DETECTORS = (("wok-1", 1), ("fryer-1", 2))
RESET_HOLD_S = 2.0  # the minimum the config allows
COMM_FAULT_TIMEOUT_S = 5.0
NORMAL_LEL = 2.0
LEAK_LEL = 60.0
SAFETY = "gasguard-safety.service"
UPLINKS = "gasguard-uplinks.service"
# How long the rig keeps asking a just-booted controller for its status (see status()).
STATUS_WAIT_S = 60.0


def site_config(bus_device: str) -> str:
    """The kitchen in the guest: two detectors on ``bus_device`` (``VirtualPi.bus_device``),
    the held-open valve on the example pin (no position contact: the host does not move a
    valve body), the example buttons and lights."""
    return configfile.render(
        configfile.SiteFile(
            site_id="VM-RIG-01",
            site_name="vm rig",
            site_address="QEMU",
            buses=[configfile.BusSpec("bus0", bus_device, 9600, "N", timeout_s=0.2)],
            detectors=[
                configfile.DetectorSpec(name, "kitchen", "bus0", address, PROFILE)
                for name, address in DETECTORS
            ],
            valves=[configfile.ValveSpec("main-inlet", ("kitchen",), feedback_pin=None)],
            poll_period_s=0.5,
            comm_fault_timeout_s=COMM_FAULT_TIMEOUT_S,
            reset_hold_s=RESET_HOLD_S,
            data_dir="/var/lib/gasguard",
            control_socket="/var/lib/gasguard/control.sock",  # as the example config
            profiles_dir="/etc/gasguard/profiles",
            comment="Written by the vm HIL rig (hil_tests/vm/appliance.py).",
        )
    )


def copy_checkout(tree: Path) -> Path:
    """This checkout's files (as git sees them) copied into ``tree``, made afresh."""
    shutil.rmtree(tree, ignore_errors=True)
    for name in _checkout_files():
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return tree


def _checkout_files() -> list[str]:
    """This checkout's files as git sees them (tracked, and new ones not ignored)."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout
    return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]


BROKEN_VERSION = "0.1.0.post999"  # pyproject's version, for the broken release
# The broken release: the same code with a newer event-log schema (so the upgrade migrates the
# log and the rollback must restore it) and a safety process that dies after start-up, before
# READY, as a release with a bug in its start-up would. Each edit names the text it replaces,
# so a change to those files fails here, loudly, rather than building an unbroken "broken" one.
_BREAKAGE = {
    "pyproject.toml": ('version = "0.1.0"', f'version = "{BROKEN_VERSION}"'),
    "gateway/store/events.py": ("SCHEMA_VERSION = 2\n", "SCHEMA_VERSION = 3\n"),
    "gateway/safety/main.py": (
        "    try:\n        return controller.run()\n",
        "    raise RuntimeError('vm rig: the broken release dies before READY')\n"
        "    try:\n        return controller.run()\n",
    ),
}


def broken_release(workdir: Path) -> Path:
    """This checkout as a new release that check-config accepts but whose safety process
    never reaches READY (see ``_BREAKAGE``)."""
    tree = copy_checkout(workdir / "broken-release")
    for name, (old, new) in _BREAKAGE.items():
        path = tree / name
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise AssertionError(f"{name}: {old!r} not found once; update _BREAKAGE")
        path.write_text(text.replace(old, new), encoding="utf-8")
    return tree


def make_payload(workdir: Path, config_text: str, extra: dict[str, Path] | None = None) -> Path:
    """A small ext4 image with ``gasguard/`` (this checkout), ``site.toml`` and ``extra``
    trees (name -> directory), for the guest's read-only second disk."""
    tree = workdir / "payload"
    shutil.rmtree(tree, ignore_errors=True)
    copy_checkout(tree / "gasguard")
    (tree / "site.toml").write_text(config_text, encoding="utf-8")
    for name, directory in (extra or {}).items():
        shutil.copytree(directory, tree / name)
    image = workdir / "payload.img"
    image.unlink(missing_ok=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-L", "payload", "-d", str(tree), str(image), "128M"], check=True
    )
    return image


@dataclass
class Kitchen:
    """The host side of the guest's bus: the emulated detectors, by name."""

    emulator: BusEmulator
    detectors: dict[str, EmulatedDetector]

    def gas(self, name: str, lel: float) -> None:
        self.detectors[name].lel = lel

    def stop(self) -> None:
        self.emulator.stop()


def start_kitchen(vm: VirtualPi) -> Kitchen:
    profiles = load_profiles(default_profiles_dir())
    detectors = {
        name: EmulatedDetector(address, profiles[PROFILE], lel=NORMAL_LEL)
        for name, address in DETECTORS
    }
    conn = vm.bus()
    emulator = BusEmulator(conn.fileno(), 9600, "N", 1, detectors.values())
    emulator._conn = conn  # type: ignore[attr-defined]  # kept open as long as the emulator
    emulator.start()
    return Kitchen(emulator, detectors)


def wait_until(
    what: str, cond: Callable[[], bool], timeout_s: float, every_s: float = 0.1
) -> float:
    """Poll ``cond`` until true; the seconds it took. Raises AssertionError on timeout."""
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(every_s)
    return time.monotonic() - started


class Appliance:
    """gasguard in ``vm``: installing it, its units, its status and event log, its buttons."""

    def __init__(self, vm: VirtualPi) -> None:
        self.vm = vm

    def sh(self, script: str, timeout_s: float = 300.0) -> str:
        return self.vm.run(script, timeout_s).check().stdout

    def mount_payload(self) -> str:
        """The read-only disk with this checkout, mounted (again after a reboot); its path."""
        self.sh(
            "set -e; mkdir -p /mnt/payload; mountpoint -q /mnt/payload || "
            "mount -o ro /dev/vdb /mnt/payload"
        )
        return "/mnt/payload"

    def install(self) -> str:
        """As docs/install.md, section 2; the installer's output."""
        payload = self.mount_payload()
        out = self.sh(
            f"set -e; rm -rf /root/gasguard; cp -a {payload}/gasguard /root/gasguard; "
            "cd /root/gasguard; "
            "python3 -m gateway.appliance.install 2>&1",
            timeout_s=900,
        )
        self.sh(
            "set -e; install -m 0640 -g gasguard /mnt/payload/site.toml "
            "/etc/gasguard/gasguard.toml; gasguard check-config /etc/gasguard/gasguard.toml"
        )
        return out

    def reboot(self, timeout_s: float = 300.0) -> float:
        """``systemctl reboot`` and wait for the agent again; the seconds that took."""
        started = time.monotonic()
        # systemctl, not shutdown(8): this minimal Debian has no logind to schedule it.
        self.vm.agent().start(("/bin/systemctl", "reboot"))
        self.vm._drop_agent()
        wait_until(
            "the guest rebooting",
            lambda: self._booted_since(started),
            timeout_s,
            every_s=1.0,
        )
        return time.monotonic() - started

    def _booted_since(self, started: float) -> bool:
        try:
            up = float(self.vm.run("cut -d' ' -f1 /proc/uptime", 10).check().stdout)
        except (OSError, RuntimeError):
            self.vm._drop_agent()
            return False
        return up < time.monotonic() - started

    def unit(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def active(self, unit: str) -> bool:
        return self.unit(unit, "ActiveState")["ActiveState"] == "active"

    def main_pid(self, unit: str) -> int:
        return int(self.unit(unit, "MainPID")["MainPID"])

    def status(self, wait_s: float = STATUS_WAIT_S) -> dict[str, Any]:
        """``gasguard status --json``, asked again while the controller does not answer within
        the CLI's own 5 s, for up to ``wait_s``: under TCG a guest that has just booted
        (journal recovery, the uplinks' start-up) can starve the control thread for a while.
        On a timeout the error carries the safety unit's journal."""
        deadline = time.monotonic() + wait_s
        while True:
            done = self.vm.run("gasguard status --json", 30)
            if done.status == 0:
                result: dict[str, Any] = json.loads(done.stdout)
                return result
            if "no reply" not in done.stderr or time.monotonic() > deadline:
                journal = self.vm.run(f"journalctl -b -u {SAFETY} -n 40 --no-pager", 30)
                raise ProtocolError(
                    f"guest: gasguard status exited with {done.status}: {done.stderr.strip()}\n"
                    f"journal of {SAFETY}:\n{journal.stdout[-4000:]}"
                )
            time.sleep(1.0)

    def events(self) -> list[dict[str, Any]]:
        out = self.sh("gasguard events --json --limit 1000")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def valve_energised(self) -> bool:
        """The guest's valve output, read through gpio-sim: 1 holds the valve open."""
        return self.vm.gpio_value(PINS["valve"]) == 1

    def press_reset(self, hold_s: float = RESET_HOLD_S + 0.8) -> None:
        """Hold the local reset button (to ground: the input has its pull-up) ``hold_s``."""
        self.vm.gpio_pull(PINS["reset"], up=False)
        time.sleep(hold_s)
        self.vm.gpio_pull(PINS["reset"], up=True)

    def open_valve(self, timeout_s: float = 30.0) -> None:
        """The technician's reset with every detector normal, until the valve is held open."""
        deadline = time.monotonic() + timeout_s
        while not self.valve_energised():
            if time.monotonic() > deadline:
                raise MachineError(f"the valve did not open after resets for {timeout_s} s")
            self.press_reset()
            with_grace = time.monotonic() + 3.0
            while time.monotonic() < with_grace and not self.valve_energised():
                time.sleep(0.1)
