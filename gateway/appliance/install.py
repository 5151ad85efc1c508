"""``gasguard install`` and ``gasguard upgrade``: gasguard as an appliance on Raspberry Pi OS
Bookworm (Pi 3, 4, 5, Zero 2 W).

Layout (every path below ``--prefix``, ``/`` on the Pi, a throwaway root in the tests):

* ``/opt/gasguard/versions/<version>``: one venv per installed version, side by side;
  ``/opt/gasguard/current`` is a symlink to the one in service. The units only name
  ``/opt/gasguard/current/bin/gasguard``.
* ``/etc/gasguard/gasguard.toml`` (0600, the service user's): made from
  ``config/gasguard.example.toml`` on the first install, **never overwritten**;
  ``/etc/gasguard/profiles`` gets the shipped detector profiles that are missing (an edited one
  is kept, and the difference reported).
* ``/var/lib/gasguard``: the event log (SQLite) and its pre-upgrade backups.
* the systemd units and drop-ins (config/systemd), the udev rule (config/udev).

An upgrade never leaves the kitchen without a working controller if it can help it:

1. the new version is installed **beside** the running one and must accept the site config
   (``check-config``) before anything else changes;
2. the service is stopped (every valve closes: the gas stays off until a local manual reset),
   the event log is backed up (SQLite backup API) and migrated by the new version
   (``PRAGMA user_version``);
3. ``current`` is switched to the new version and the service started; it must reach READY
   (``Type=notify``: after its first complete poll) within the start timeout and stay up, not
   restarted, for a settle time (a heartbeat failure shows within 2 x WatchdogSec);
4. otherwise the switch is undone: ``current`` back, the units back, and, if the schema was
   migrated, the pre-upgrade event log restored with the events the failed version recorded
   copied in (their numbers kept: they may be upstream already); the migrated file is kept
   beside it as evidence. The old version is started and must reach READY again.

Only the standard library is used, so ``sudo python3 -m gateway.appliance.install`` works from a
source checkout before any venv exists. User and group creation, ``chown``, ``udevadm`` and
``systemctl`` are done only for a real install (prefix ``/``) as root; otherwise each is
skipped with a message saying what would have been done.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import grp
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.paths import EVENTS_DB, OUTBOX_DIR, UPLINK_USER

APP_DIR = Path("/opt/gasguard")
ETC_DIR = Path("/etc/gasguard")
STATE_DIR = Path("/var/lib/gasguard")
SERVICE_USER = "gasguard"
DEVICE_GROUPS = ("dialout", "gpio")
UNIT = "gasguard-safety.service"  # the safety process; the upgrade waits for its READY
UPLINK_UNIT = "gasguard-uplinks.service"
OLD_UNITS = ("gasguard.service",)  # before the safety process was split from the uplinks

KEEP_OLD_VERSIONS = 2  # previous versions kept for a manual rollback
KEEP_BACKUPS = 3
DEFAULT_START_TIMEOUT_S = 150.0  # the unit's TimeoutStartSec
DEFAULT_SETTLE_S = 12.0  # more than 2 x WatchdogSec (5 s): a bad heartbeat shows by then
SYSTEMD_FILES = {
    # file in config/ -> where it goes (below the prefix)
    "systemd/gasguard-safety.service": "etc/systemd/system/gasguard-safety.service",
    "systemd/gasguard-uplinks.service": "etc/systemd/system/gasguard-uplinks.service",
    "systemd/gasguard-console@.service": "etc/systemd/system/gasguard-console@.service",
    "systemd/system.conf.d/gasguard-watchdog.conf": (
        "etc/systemd/system.conf.d/gasguard-watchdog.conf"
    ),
    "systemd/journald.conf.d/gasguard.conf": "etc/systemd/journald.conf.d/gasguard.conf",
    "udev/99-gasguard-serial.rules": "etc/udev/rules.d/99-gasguard-serial.rules",
}
CONFIG_TXT = Path("/boot/firmware/config.txt")  # Bookworm; /boot/config.txt before


class InstallError(Exception):
    """The install or upgrade cannot go on; the message says what and how to fix it."""


Out = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Where things go
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """Every path of an installation below ``prefix`` (``/`` on the Pi)."""

    prefix: Path

    def at(self, path: Path | str) -> Path:
        """``path`` (absolute, as on the Pi) below the prefix."""
        return self.prefix / Path(path).relative_to("/")

    @property
    def real(self) -> bool:
        """True for an install into the running system (prefix ``/``)."""
        return self.prefix.resolve() == Path("/")

    @property
    def app_dir(self) -> Path:
        return self.at(APP_DIR)

    @property
    def versions_dir(self) -> Path:
        return self.app_dir / "versions"

    @property
    def current(self) -> Path:
        return self.app_dir / "current"

    @property
    def etc_dir(self) -> Path:
        return self.at(ETC_DIR)

    @property
    def config_file(self) -> Path:
        return self.etc_dir / "gasguard.toml"

    @property
    def profiles_dir(self) -> Path:
        return self.etc_dir / "profiles"

    @property
    def state_dir(self) -> Path:
        return self.at(STATE_DIR)

    @property
    def backups_dir(self) -> Path:
        return self.state_dir / "backups"

    @property
    def bin_link(self) -> Path:
        return self.at("/usr/local/bin/gasguard")

    def current_version(self) -> str | None:
        """The version ``current`` points at, or None before the first install."""
        if not self.current.is_symlink():
            return None
        return Path(os.readlink(self.current)).name

    def events_db(self) -> Path:
        """The event log of the installed config (its ``storage.data_dir``), below the prefix.
        Falls back to /var/lib/gasguard when the config cannot be read."""
        data_dir = STATE_DIR
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
            data = tomllib.loads(self.config_file.read_text(encoding="utf-8"))
            storage = data.get("storage", {})
            value = storage.get("data_dir") if isinstance(storage, dict) else None
            if isinstance(value, str) and value:
                data_dir = Path(value)
        if not data_dir.is_absolute():
            return self.config_file.parent / data_dir / EVENTS_DB
        return self.at(data_dir) / EVENTS_DB


def share_dir(source: Path | None = None) -> Path:
    """The ``config/`` directory (example config, profiles, units, udev rule) of the release
    being installed: the ``--source`` tree's when one is given (an upgrade run by the installed
    ``gasguard`` installs the new release's units, not its own), else this source tree's."""
    tree = source.resolve() if source is not None else Path(__file__).resolve().parents[2]
    here = tree / "config"
    needed = ("gasguard.example.toml", "profiles", "systemd/gasguard-safety.service")
    if all((here / n).exists() for n in needed):
        return here
    hint = (
        "give the release's source tree with --source DIR (git clone or release tarball)"
        if source is None
        else f"{source} is not a gasguard source tree (git clone or release tarball)"
    )
    raise InstallError(f"the shipped files are not at {here} (need {', '.join(needed)}): {hint}")


# ---------------------------------------------------------------------------------------------
# Raspberry Pi model, UART and GPIO advice
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PiModel:
    """The board as ``/proc/device-tree/model`` names it. ``family``: ``pi3``, ``pi4``,
    ``pi5``, ``zero2w``, ``pi-other`` (another Raspberry Pi) or ``none`` (not a Pi)."""

    text: str
    family: str

    @property
    def is_pi(self) -> bool:
        return self.family != "none"


def detect_model(root: Path = Path("/")) -> PiModel:
    """Read the board model below ``root``."""
    path = root / "proc/device-tree/model"
    try:
        text = path.read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
    except OSError:
        return PiModel("", "none")
    return PiModel(text, model_family(text))


def model_family(text: str) -> str:
    """The family of a ``/proc/device-tree/model`` text (see ``PiModel``)."""
    if not text.startswith("Raspberry Pi"):
        return "none"
    rest = text[len("Raspberry Pi") :].strip()
    if rest.startswith("Zero 2"):
        return "zero2w"
    if rest.startswith(("5", "500", "Compute Module 5")):
        return "pi5"
    if rest.startswith(("4", "400", "Compute Module 4")):
        return "pi4"
    if rest.startswith(("3", "Compute Module 3")):
        return "pi3"
    return "pi-other"


def _config_txt_has(config_txt: str | None, line: str) -> bool:
    if config_txt is None:
        return False
    return any(raw.split("#", 1)[0].strip() == line for raw in config_txt.splitlines())


def uart_advice(model: PiModel, config_txt: str | None = None) -> list[str]:
    """What to set so that the RS-485 line runs on the PL011 UART of ``model``.
    ``config_txt`` is the text of /boot/firmware/config.txt, to say what is already set."""
    mini = (
        "Never use the mini UART (/dev/ttyS0): it has no parity, so 8E1/8O1 Modbus "
        "(Honeywell, MSA) fails on it, and its baud rate follows the core clock."
    )
    if model.family in ("pi3", "pi4", "zero2w"):
        done = _config_txt_has(config_txt, "dtoverlay=disable-bt")
        return [
            f"{model.text}: the PL011 UART is /dev/ttyAMA0 on GPIO14/15 once Bluetooth gives it "
            "up: "
            + (
                "dtoverlay=disable-bt is already in /boot/firmware/config.txt."
                if done
                else "add 'dtoverlay=disable-bt' and 'enable_uart=1' to /boot/firmware/config.txt,"
                " then 'sudo systemctl disable hciuart'."
            ),
            "Turn the serial login console off on that line: sudo raspi-config -> Interface "
            "Options -> Serial Port -> login shell: No, serial hardware: Yes. Then reboot.",
            mini,
        ]
    if model.family == "pi5":
        done = _config_txt_has(config_txt, "dtoverlay=uart0-pi5")
        return [
            f"{model.text}: UART0 on GPIO14/15 is /dev/ttyAMA0 with "
            + (
                "dtoverlay=uart0-pi5, already in /boot/firmware/config.txt."
                if done
                else "'dtoverlay=uart0-pi5' in /boot/firmware/config.txt (add it, then reboot)."
            ),
            "/dev/ttyAMA10 is the 3-pin debug connector, not the GPIO header.",
            mini,
        ]
    if model.family == "pi-other":
        return [
            f"{model.text}: not a supported model (Pi 3, 4, 5, Zero 2 W); use a USB RS-485 "
            "adapter (/dev/gasguard/usb-*) or check the UART wiring yourself.",
            mini,
        ]
    return [
        "Not a Raspberry Pi (no /proc/device-tree/model): no UART overlay to set; use a USB "
        "RS-485 adapter (/dev/gasguard/usb-* after the udev rule)."
    ]


def gpio_advice(model: PiModel) -> list[str]:
    """Which GPIO backend ``model`` needs and how to get it."""
    if not model.is_pi:
        return [
            "Not a Raspberry Pi: no GPIO backend; the valve and annunciator need a Pi "
            "(GPIOZERO_PIN_FACTORY=mock only for the simulation)."
        ]
    lines = [
        "GPIO backend: lgpio on every model ('sudo apt install python3-lgpio'; the venv sees it "
        "through --system-site-packages). The unit sets GPIOZERO_PIN_FACTORY=lgpio, so a "
        "missing backend stops the start instead of silently falling back.",
    ]
    if model.family == "pi5":
        lines.append(
            "Pi 5: RPi.GPIO does not work ('Cannot determine SOC peripheral base address'): "
            "never install python3-rpi.gpio into the venv; a tool that needs the RPi.GPIO API "
            "gets rpi-lgpio, its drop-in on top of lgpio (pip package 'rpi-lgpio')."
        )
    lines.append(
        "Hardware watchdog: /dev/watchdog0 (bcm2835_wdt) must exist; systemd feeds it "
        "(RuntimeWatchdogSec=10s from /etc/systemd/system.conf.d/gasguard-watchdog.conf)."
    )
    return lines


# ---------------------------------------------------------------------------------------------
# The service, as the upgrade drives it
# ---------------------------------------------------------------------------------------------


class Service(Protocol):
    """Starts, stops and watches the gasguard service (systemd on the Pi, a fake in tests)."""

    def is_active(self) -> bool: ...
    def stop(self) -> None: ...
    def start(self) -> None: ...
    def wait_ready(self, timeout_s: float, settle_s: float) -> tuple[bool, str]:
        """Whether the service reached READY within ``timeout_s`` and then stayed up, not
        restarted, for ``settle_s``; and a one-line explanation."""
        ...


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = 600.0) -> str:
    """Run a command; its stdout. InstallError naming the command and its stderr on failure."""
    try:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(f"{' '.join(cmd)}: {e}") from e
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise InstallError(
            f"{' '.join(cmd)} exited with {done.returncode}: " + " | ".join(tail or ["no output"])
        )
    return done.stdout


class SystemdService:
    """The unit under systemd. READY is ``ActiveState=active`` (``Type=notify``); a restart
    during the wait (``NRestarts`` grew) is a failure."""

    def __init__(self, unit: str = UNIT, poll_s: float = 0.5) -> None:
        self.unit = unit
        self.poll_s = poll_s
        self._restarts_at_start = 0

    def _show(self) -> dict[str, str]:
        text = _run(
            [
                "systemctl",
                "show",
                self.unit,
                "-p",
                "ActiveState",
                "-p",
                "SubState",
                "-p",
                "NRestarts",
                "-p",
                "Result",
            ],
            check=False,
        )
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def is_active(self) -> bool:
        return self._show().get("ActiveState") == "active"

    def stop(self) -> None:
        # The uplinks first: they would only report the safety process missing.
        _run(["systemctl", "stop", UPLINK_UNIT], check=False)
        _run(["systemctl", "stop", self.unit])

    def start(self) -> None:
        self._restarts_at_start = int(self._show().get("NRestarts", "0") or 0)
        _run(["systemctl", "start", "--no-block", self.unit])
        # Never waited for: the safety process is what the upgrade checks.
        _run(["systemctl", "start", "--no-block", UPLINK_UNIT], check=False)

    def wait_ready(self, timeout_s: float, settle_s: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout_s
        ready_at: float | None = None
        while True:
            state = self._show()
            active = state.get("ActiveState", "unknown")
            restarts = int(state.get("NRestarts", "0") or 0) - self._restarts_at_start
            if restarts > 0:
                return False, (
                    f"{self.unit} was restarted {restarts} time(s) by systemd "
                    f"(result {state.get('Result', '?')}): see journalctl -u {self.unit}"
                )
            if active == "failed":
                return False, f"{self.unit} failed (result {state.get('Result', '?')})"
            if active == "active" and ready_at is None:
                ready_at = time.monotonic()
            if ready_at is not None:
                if active != "active":
                    return False, f"{self.unit} went {active} after READY"
                if time.monotonic() - ready_at >= settle_s:
                    return True, f"{self.unit} ready and stayed up {settle_s:g} s"
            elif time.monotonic() > deadline:
                return False, f"{self.unit} did not reach READY within {timeout_s:g} s ({active})"
            time.sleep(self.poll_s)


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


@dataclass
class Options:
    """What ``gasguard install`` / ``upgrade`` was asked for. ``venv``: use this existing venv
    (it must hold gasguard) instead of building one from ``source``. ``start``: start the
    service after a first install (an upgrade always starts and checks it). ``yes``: do not
    ask before stopping the service (the gas goes off until a local reset)."""

    prefix: Path = Path("/")
    source: Path | None = None
    venv: Path | None = None
    python: str = sys.executable
    start: bool = False
    yes: bool = False
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    settle_s: float = DEFAULT_SETTLE_S
    upgrade_only: bool = False


class Installer:
    """Runs one install or upgrade into ``layout``; ``out`` prints a line for the person."""

    def __init__(
        self,
        opts: Options,
        service: Service | None = None,
        out: Out = print,
        confirm: Callable[[str], bool] | None = None,
    ) -> None:
        self.opts = opts
        self.layout = Layout(opts.prefix)
        self.out = out
        self.root = os.geteuid() == 0
        self.system = self.layout.real and self.root
        self.service = service
        self._confirm = confirm or _ask

    # -- small helpers ---------------------------------------------------------------------------

    def say(self, what: str, text: str) -> None:
        self.out(f"  {what:<8}{text}")

    def _own(self, path: Path, mode: int, user: str = "root", group: str = "root") -> None:
        os.chmod(path, mode)
        if self.system:
            shutil.chown(path, user, group)

    def _mkdir(self, path: Path, mode: int, user: str = "root", group: str = "root") -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._own(path, mode, user, group)

    # -- the whole run ---------------------------------------------------------------------------

    def run(self) -> int:
        L = self.layout
        if self.layout.real and not self.root:
            raise InstallError(
                "installing into / needs root: run it with sudo (or give --prefix DIR to "
                "install into a throwaway root)"
            )
        share = share_dir(self.opts.source)
        previous = L.current_version()
        if self.opts.upgrade_only and previous is None:
            raise InstallError(
                f"no installed gasguard at {L.current}: run 'gasguard install' first"
            )
        mode = "upgrade" if previous else "install"
        self.out(f"gasguard {mode} into {L.prefix} ({'system' if self.system else 'prefix'})")
        model = detect_model(L.prefix if not L.real else Path("/"))
        self.out(f"  board   {model.text or 'not a Raspberry Pi'}")

        new_dir, _version = self.make_venv(share)
        try:
            self.check_config_with(new_dir, share)
        except InstallError:
            self._discard(new_dir, previous)
            raise
        self.user_and_groups()
        self.directories()
        self.config_and_profiles(share)
        saved_units = self.snapshot_system_files()
        if previous is None:
            self.system_files(share)
            self.switch(new_dir)
            self.bin_link()
            rc = self.first_start() if self.opts.start else 0
        else:
            rc = self.upgrade(share, previous, new_dir, saved_units)
        self.advice(model)
        return rc

    # -- venv ------------------------------------------------------------------------------------

    def make_venv(self, share: Path) -> tuple[Path, str]:
        """The new version's venv below versions/, and its version; built from the source
        tree that ``share`` (its ``config/``) belongs to, unless ``--venv`` gave one."""
        L = self.layout
        L.versions_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(L.app_dir, 0o755)
        if self.opts.venv is not None:
            venv = self.opts.venv.resolve()
            if not (venv / "bin" / "python").exists() or not (venv / "bin" / "gasguard").exists():
                raise InstallError(
                    f"--venv {self.opts.venv}: not a venv with gasguard installed "
                    "(needs bin/python and bin/gasguard)"
                )
            version = _venv_version(venv)
            target = _free_name(L.versions_dir, version)
            target.symlink_to(venv, target_is_directory=True)
            self.say("venv", f"{target.name}: using {venv} (gasguard {version})")
            return target, version
        source = share.parent
        version = _source_version(source)
        target = _free_name(L.versions_dir, version)
        self.say("venv", f"{target.name}: building from {source} (a minute or two on a Pi)")
        try:
            # --system-site-packages: Raspberry Pi OS ships the GPIO backend (python3-lgpio)
            # as a Debian package, not a wheel.
            _run([self.opts.python, "-m", "venv", "--system-site-packages", str(target)])
            py = str(target / "bin" / "python")
            _run(
                [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)]
            )
            # ProtectSystem=strict makes the venv read-only at run time: compile now.
            _run([py, "-m", "compileall", "-q", str(target / "lib")])
        except InstallError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return target, version

    def _discard(self, new_dir: Path, previous: str | None) -> None:
        if previous is not None and new_dir.name == previous:
            return
        if new_dir.is_symlink():
            new_dir.unlink()
        else:
            shutil.rmtree(new_dir, ignore_errors=True)
        self.say("removed", f"{new_dir.name}: nothing else was changed")

    def check_config_with(self, venv: Path, share: Path) -> None:
        """The new version must accept the site config before anything changes."""
        cfg = self.layout.config_file
        if not cfg.exists():
            return
        try:
            _run([str(venv / "bin" / "gasguard"), "check-config", str(cfg)])
        except InstallError as e:
            raise InstallError(
                f"gasguard {venv.name} refuses the site config {cfg}: {e}. Fix the config "
                "(gasguard check-config shows every problem) and run the upgrade again"
            ) from e
        self.say("config", f"{cfg}: accepted by {venv.name}")

    # -- user, directories, config -------------------------------------------------------------

    def user_and_groups(self) -> None:
        if not self.system:
            self.say(
                "skip",
                f"user and groups (not root on /): would create system user {SERVICE_USER!r} "
                f"and add it to {', '.join(DEVICE_GROUPS)}",
            )
            return
        try:
            pwd.getpwnam(SERVICE_USER)
            self.say("kept", f"user {SERVICE_USER}")
        except KeyError:
            _run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--home-dir",
                    str(STATE_DIR),
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    SERVICE_USER,
                ]
            )
            self.say("done", f"user {SERVICE_USER} (system account, no login)")
        for group in DEVICE_GROUPS:
            try:
                grp.getgrnam(group)
            except KeyError:
                self.say("WARN", f"group {group!r} does not exist on this system (not a Pi?)")
                continue
            _run(["usermod", "--append", "--groups", group, SERVICE_USER])
        # The uplinks' own account: reads the config and the event log (group gasguard, both
        # read-only for the group), writes only its outbox; the control socket refuses it.
        try:
            pwd.getpwnam(UPLINK_USER)
            self.say("kept", f"user {UPLINK_USER}")
        except KeyError:
            _run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--groups",
                    SERVICE_USER,
                    "--home-dir",
                    str(STATE_DIR / OUTBOX_DIR),
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    UPLINK_USER,
                ]
            )
            self.say("done", f"user {UPLINK_USER} (system account, no login, no GPIO)")
        technician = os.environ.get("SUDO_USER")
        if technician and technician != "root":
            _run(["usermod", "--append", "--groups", SERVICE_USER, technician])
            self.say("done", f"{technician} may use 'gasguard status' (group {SERVICE_USER})")

    def directories(self) -> None:
        L = self.layout
        # Owned by gasguard: the technician console (user gasguard) applies a config change by
        # writing a new file beside the old one and renaming it (atomic, previous kept). Group
        # read-only: the uplinks' user reads the config and the event log, and writes nothing
        # but its own outbox directory.
        self._mkdir(L.etc_dir, 0o750, SERVICE_USER, SERVICE_USER)
        self._mkdir(L.profiles_dir, 0o750, "root", SERVICE_USER)
        self._mkdir(L.state_dir, 0o750, SERVICE_USER, SERVICE_USER)
        uplink_owner = UPLINK_USER if self.system else SERVICE_USER
        self._mkdir(L.state_dir / OUTBOX_DIR, 0o750, uplink_owner, uplink_owner)
        self._mkdir(L.backups_dir, 0o700, "root", "root")
        self.say("done", f"{L.etc_dir}, {L.state_dir}")

    def config_and_profiles(self, share: Path) -> None:
        L = self.layout
        cfg = L.config_file
        if cfg.exists():
            self.say("kept", f"{cfg} (never overwritten)")
        else:
            shutil.copyfile(share / "gasguard.example.toml", cfg)
            self._own(cfg, 0o640, SERVICE_USER, SERVICE_USER)
            self.say("done", f"{cfg} from the example: edit it for this kitchen")
        for src in sorted((share / "profiles").glob("*.toml")):
            dst = L.profiles_dir / src.name
            if not dst.exists():
                shutil.copyfile(src, dst)
                self._own(dst, 0o640, "root", SERVICE_USER)
                self.say("done", f"profile {dst.name}")
            elif not filecmp.cmp(src, dst, shallow=False):
                self.say(
                    "kept",
                    f"profile {dst} differs from the shipped one (edited here?): compare with "
                    f"{src}",
                )

    # -- systemd and udev files ----------------------------------------------------------------

    def snapshot_system_files(self) -> dict[Path, bytes | None]:
        """The unit, drop-in and udev files as they are now, to put back on a rollback."""
        return {
            self.layout.at("/" + dst): _read_or_none(self.layout.at("/" + dst))
            for dst in SYSTEMD_FILES.values()
        }

    def system_files(self, share: Path) -> None:
        for src, dst in SYSTEMD_FILES.items():
            target = self.layout.at("/" + dst)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(share / src, target)
            os.chmod(target, 0o644)
        self.say("done", "systemd units and drop-ins, udev rule")
        if self.system:
            _run(["udevadm", "control", "--reload-rules"], check=False)
            _run(["udevadm", "trigger", "--subsystem-match=tty"], check=False)
            for old in OLD_UNITS:
                old_file = self.layout.at("/etc/systemd/system/" + old)
                if old_file.exists():
                    _run(["systemctl", "disable", "--now", old], check=False)
                    old_file.unlink()
                    self.say("done", f"{old} replaced by {UNIT} and {UPLINK_UNIT}")
            _run(["systemctl", "daemon-reload"])
            _run(["systemctl", "enable", UNIT, UPLINK_UNIT])
            self.say("done", f"{UNIT} and {UPLINK_UNIT} enabled (start at boot)")
        else:
            self.say(
                "skip", "udevadm reload, systemctl daemon-reload and enable (not a system install)"
            )

    def restore_system_files(self, saved: dict[Path, bytes | None]) -> None:
        for path, content in saved.items():
            if content is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            else:
                path.write_bytes(content)
        if self.system:
            _run(["systemctl", "daemon-reload"], check=False)

    def switch(self, target: Path) -> None:
        """Point ``current`` at ``target`` atomically (a rename over the old link)."""
        current = self.layout.current
        tmp = current.with_name("current.new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(Path("versions") / target.name, target_is_directory=True)
        os.replace(tmp, current)
        self.say("switch", f"{current} -> versions/{target.name}")

    def bin_link(self) -> None:
        link = self.layout.bin_link
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(APP_DIR / "current" / "bin" / "gasguard")
        self.say("done", f"{link} -> {APP_DIR}/current/bin/gasguard")

    # -- start and upgrade -----------------------------------------------------------------------

    def _to_disk(self) -> None:
        """Everything written so far (the venv, units, ``current``, the event log) on the disk
        before a service starts: a power cut must find one whole version, not a new link to
        files still in the page cache (ext4 writes new files' data up to 30 s later)."""
        if self.layout.real:
            os.sync()

    def _service(self) -> Service:
        if self.service is None:
            if not self.system:
                raise InstallError(
                    "starting the service needs systemd on a system install (prefix / as root)"
                )
            self.service = SystemdService()
        return self.service

    def first_start(self) -> int:
        service = self._service()
        self._to_disk()
        service.start()
        ok, why = service.wait_ready(self.opts.start_timeout_s, self.opts.settle_s)
        self.say("start" if ok else "FAIL", why)
        return 0 if ok else 1

    def upgrade(
        self, share: Path, previous: str, new_dir: Path, saved_units: dict[Path, bytes | None]
    ) -> int:
        L = self.layout
        service = self._service()
        was_active = service.is_active()
        if was_active and not self.opts.yes:
            question = (
                "The upgrade stops gasguard: every valve closes and the gas stays off until a "
                "local manual reset. Go on? [y/N] "
            )
            if not self._confirm(question):
                self._discard(new_dir, previous)
                self.out("upgrade cancelled: nothing changed")
                return 1
        service.stop()
        self.say("stop", f"{UNIT} (valves closed)")
        db = L.events_db()
        backup = self.backup_store(db, previous, new_dir.name)
        schema_before = _user_version(db)
        try:
            out = _run(
                [str(new_dir / "bin" / "python"), "-m", "gateway.appliance.migrate", str(db)]
            )
            self.say("migrate", out.strip() or f"{db}: nothing to do")
        except InstallError as e:
            # The migration is one transaction: the event log is as it was. Nothing was
            # switched yet, so the old version simply starts again.
            self.say("FAIL", f"schema migration by {new_dir.name}: {e}")
            return self._restart_previous(service, previous, failed=new_dir.name)
        self._own_store(db)
        self.system_files(share)
        self.switch(new_dir)
        self.bin_link()
        self._to_disk()
        service.start()
        ok, why = service.wait_ready(self.opts.start_timeout_s, self.opts.settle_s)
        if ok:
            self.say("ready", f"{new_dir.name}: {why}")
            if not was_active:
                service.stop()
                self.say("stop", f"{UNIT} left stopped, as it was before the upgrade")
            self.prune(new_dir.name)
            self.out(f"upgraded {previous} -> {new_dir.name}")
            return 0
        self.say("FAIL", f"{new_dir.name}: {why}; rolling back to {previous}")
        service.stop()
        self.switch(L.versions_dir / previous)
        self.restore_system_files(saved_units)
        if backup is not None and _user_version(db) != schema_before:
            self.restore_store(db, backup, new_dir.name)
        return self._restart_previous(service, previous, failed=new_dir.name)

    def _restart_previous(self, service: Service, previous: str, failed: str) -> int:
        self._to_disk()
        service.start()
        ok, why = service.wait_ready(self.opts.start_timeout_s, self.opts.settle_s)
        if ok:
            self.say("rollback", f"{previous} running again: {why}")
            self.out(
                f"upgrade to {failed} FAILED and was rolled back to {previous}; the new version "
                f"stays in {self.layout.versions_dir / failed} for inspection"
            )
            return 1
        self.say("FAIL", f"{previous} did not come back either: {why}")
        self.out(
            "gasguard is NOT running: the gas stays off. Check 'journalctl -u gasguard-safety' "
            "and 'gasguard doctor', then start it with "
            "'systemctl start gasguard-safety gasguard-uplinks'."
        )
        return 2

    # -- the event log ---------------------------------------------------------------------------

    def backup_store(self, db: Path, previous: str, new: str) -> Path | None:
        """A consistent copy of the event log (WAL included) before the new version touches it."""
        if not db.exists():
            self.say("backup", f"{db}: no event log yet")
            return None
        L = self.layout
        L.backups_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = L.backups_dir / f"events-{stamp}-{previous}-before-{new}.db"
        src = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
        except sqlite3.Error as e:
            raise InstallError(
                f"cannot back up the event log {db} before the upgrade: {e}; run "
                "'gasguard doctor' (integrity) and try again"
            ) from e
        finally:
            src.close()
        os.chmod(target, 0o600)
        self.say("backup", f"{db} -> {target}")
        backups = sorted(L.backups_dir.glob("events-*.db"))
        for old in backups[:-KEEP_BACKUPS]:
            old.unlink()
        return target

    def restore_store(self, db: Path, backup: Path, failed: str) -> None:
        """Put the pre-upgrade event log back; keep the migrated one beside it (evidence: it
        holds what the failed version recorded)."""
        # Imported here: the rest of the installer runs on the standard library alone.
        from gateway.store.events import EventStore, EventStoreError

        stamp = time.strftime("%Y%m%dT%H%M%S")
        kept = Path(f"{db}.failed-{failed}-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(str(db) + suffix)
            if part.exists():
                # A stale -wal next to the restored file would be replayed into it.
                os.replace(part, Path(f"{kept}{suffix}"))
        _durable_copy(backup, db)
        # What the failed version recorded (an alarm, say) comes back with its numbers: it may
        # be upstream already, or still waiting to go; either way it is not lost, and no
        # number is handed out twice.
        try:
            with EventStore(db) as store:
                taken = store.take_back(kept)
            carried = f"{taken} event(s) the failed version recorded carried over"
        except EventStoreError as e:
            carried = f"the failed version's events NOT carried over: {e}"
        self._own_store(db)
        self.say(
            "restore",
            f"{db} from {backup.name}, {carried} (the migrated file kept as {kept.name})",
        )

    def _own_store(self, db: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            part = Path(str(db) + suffix)
            if part.exists():
                self._own(part, 0o640, SERVICE_USER, SERVICE_USER)

    def prune(self, keep: str) -> None:
        """Remove versions beyond the current one and the KEEP_OLD_VERSIONS newest others."""
        L = self.layout
        others = sorted(
            (p for p in L.versions_dir.iterdir() if p.name != keep),
            key=lambda p: p.lstat().st_mtime,
        )
        for old in others[:-KEEP_OLD_VERSIONS] if KEEP_OLD_VERSIONS else others:
            if old.is_symlink():
                old.unlink()  # a --venv given by the person: not ours to delete
            else:
                shutil.rmtree(old, ignore_errors=True)
            self.say("pruned", f"old version {old.name}")

    # -- the person's to-do list ---------------------------------------------------------------

    def advice(self, model: PiModel) -> None:
        config_txt = _read_text_or_none(
            self.layout.at(CONFIG_TXT) if not self.layout.real else CONFIG_TXT
        )
        self.out("")
        self.out("UART (RS-485 line):")
        for line in uart_advice(model, config_txt):
            self.out(f"  - {line}")
        self.out("GPIO:")
        for line in gpio_advice(model):
            self.out(f"  - {line}")
        self.out("Next:")
        self.out(
            f"  - edit {ETC_DIR}/gasguard.toml, then: gasguard check-config {ETC_DIR}/gasguard.toml"
        )
        self.out("  - sudo systemctl restart gasguard-safety gasguard-uplinks && gasguard doctor")


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ("y", "yes")


def _durable_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` over ``dst`` so that a power cut leaves the old file or the whole new one:
    a temporary file, fsync, rename, fsync of the directory."""
    tmp = dst.with_name(dst.name + ".restoring")
    shutil.copyfile(src, tmp)
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    fd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(directory: Path, version: str) -> Path:
    """``directory/version``, or ``version-2``, ``-3`` ... when that exists (a reinstall)."""
    candidate = directory / version
    n = 2
    while candidate.exists() or candidate.is_symlink():
        candidate = directory / f"{version}-{n}"
        n += 1
    return candidate


def _source_version(source: Path) -> str:
    try:
        data = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
        version = data["project"]["version"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as e:
        raise InstallError(f"{source}: not a gasguard source tree (pyproject.toml: {e})") from e
    if not isinstance(version, str) or not version or "/" in version:
        raise InstallError(f"{source}/pyproject.toml: project.version {version!r} is not usable")
    return version


def _venv_version(venv: Path) -> str:
    out = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('gasguard'))",
        ],
        check=False,
    ).strip()
    if not out or "/" in out or "\n" in out:
        raise InstallError(f"--venv {venv}: cannot tell which gasguard version it holds")
    return out


def _user_version(db: Path) -> int | None:
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _read_text_or_none(path: Path) -> str | None:
    data = _read_or_none(path)
    return None if data is None else data.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gasguard install`` and ``gasguard upgrade``."""
    p.add_argument(
        "--prefix",
        type=Path,
        default=Path("/"),
        help="install below this directory instead of / (a throwaway root)",
    )
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="gasguard source tree to build the venv from (default: this one)",
    )
    p.add_argument(
        "--venv",
        type=Path,
        default=None,
        help="use this existing venv (with gasguard installed) instead of building",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the Python that builds the venv (default: this one)",
    )
    p.add_argument(
        "--start", action="store_true", help="first install: start the service and wait for READY"
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="do not ask before stopping the service (the gas goes off)",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT_S,
        help="seconds the new version has to reach READY (default 150)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=DEFAULT_SETTLE_S,
        help="seconds it must then stay up, not restarted (default 12)",
    )


def options_from(args: argparse.Namespace, upgrade_only: bool) -> Options:
    for name, value in (("--start-timeout", args.start_timeout), ("--settle", args.settle)):
        if not 0 <= value <= 3600:
            raise InstallError(f"{name} {value!r}: must be 0 to 3600 seconds")
    return Options(
        prefix=args.prefix,
        source=args.source,
        venv=args.venv,
        python=args.python,
        start=args.start,
        yes=args.yes,
        start_timeout_s=args.start_timeout,
        settle_s=args.settle,
        upgrade_only=upgrade_only,
    )


def run_install(
    args: argparse.Namespace, upgrade_only: bool = False, service: Service | None = None
) -> int:
    """``gasguard install`` / ``upgrade``: exit 0 done, 1 failed (or rolled back), 2 the
    controller is not running after a failed rollback."""
    try:
        return Installer(options_from(args, upgrade_only), service).run()
    except InstallError as e:
        print(f"gasguard install: {e}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m gateway.appliance.install``: the first install, before a venv exists."""
    p = argparse.ArgumentParser(
        prog="python3 -m gateway.appliance.install",
        description="Install or upgrade gasguard on this Pi.",
    )
    add_arguments(p)
    p.add_argument("--upgrade", action="store_true", help="require an existing install")
    args = p.parse_args(argv)
    return run_install(args, upgrade_only=args.upgrade)


if __name__ == "__main__":
    sys.exit(main())
