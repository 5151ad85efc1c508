"""``gasguard doctor``: one command that checks the installation and explains what is wrong.

Each check prints one line, ``PASS``, ``WARN`` or ``FAIL``, with what it found, and for WARN and
FAIL a second line saying what to do. The exit status is 1 if any check FAILs, else 0.

Checks: the config is valid; the controller is running (and answers its control socket); each
bus's UART is present, and is not the mini UART when parity is used; the GPIO backend; every
configured detector answers with its profile; each valve's position contact agrees with the
commanded state; disk space; the event log's SQLite integrity; the clock is synchronised; the
hardware watchdog is fed; each uplink is reachable (``UPLINK_CHECKS``: none yet).

Safety-relevant behaviour: the doctor never fights the controller for a serial port or a pin.
While the controller runs (its control socket answers, or systemd says the service is active)
detectors and valves are judged from its ``status``; only with the controller stopped does the
doctor poll the detectors itself (one read each, port opened exclusively) and read the valves'
position contacts. It never drives an output, and opens the event log read-only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from gateway.appliance.install import UNIT, PiModel, detect_model
from gateway.config import BusConfig, Config, DetectorConfig, ValveConfig, load_config
from gateway.paths import EVENTS_DB
from gateway.validate import ConfigError

DISK_FAIL_BYTES = 100 * 1024 * 1024
DISK_WARN_BYTES = 500 * 1024 * 1024
WAL_WARN_BYTES = 64 * 1024 * 1024
MAX_HW_WATCHDOG_S = 15.0  # bcm2835_wdt
CONTROL_TIMEOUT_S = 3.0
CONTACT_SETTLE_S = 0.05


class Status(Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's report: ``name`` what was checked (``detector wok-1``),
    ``message`` what was found, ``hint`` what to do about a WARN or FAIL."""

    status: Status
    name: str
    message: str
    hint: str = ""


def ok(name: str, message: str) -> Check:
    return Check(Status.PASS, name, message)


def warn(name: str, message: str, hint: str = "") -> Check:
    return Check(Status.WARN, name, message, hint)


def fail(name: str, message: str, hint: str = "") -> Check:
    return Check(Status.FAIL, name, message, hint)


# An uplink check: given the config, one Check per configured uplink (reachable or not). The
# uplink modules register theirs here; with none registered the doctor says so.
UplinkCheck = Callable[[Config], Iterable[Check]]
UPLINK_CHECKS: list[UplinkCheck] = []


def register_uplink_check(check: UplinkCheck) -> None:
    """Add an uplink's reachability check to every ``gasguard doctor`` run."""
    UPLINK_CHECKS.append(check)


def _run_command(cmd: Sequence[str]) -> tuple[int, str]:
    """Run a short system command; (exit status, stdout). 127 when it does not exist."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        return 127, ""
    except (OSError, subprocess.TimeoutExpired) as e:
        return 126, str(e)
    return done.returncode, done.stdout


@dataclass
class Environment:
    """Where the doctor looks. ``root``: the filesystem root for /proc/device-tree and
    /sys/class/tty (tests give a fake one). ``pin_factory``: the gpiozero factory for reading
    valve contacts (None: gpiozero's choice). ``run``: runs ``timedatectl`` / ``systemctl``.
    ``service_state``: systemd's ActiveState of the safety unit, None when unknown."""

    root: Path = Path("/")
    pin_factory: Any = None
    run: Callable[[Sequence[str]], tuple[int, str]] = _run_command
    service_state: Callable[[], str | None] | None = None
    control_timeout_s: float = CONTROL_TIMEOUT_S
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def systemd_state(self) -> str | None:
        if self.service_state is not None:
            return self.service_state()
        code, out = self.run(["systemctl", "show", UNIT, "-p", "ActiveState"])
        if code != 0:
            return None
        _, _, value = out.strip().partition("=")
        return value or None


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------


def check_config(path: Path) -> tuple[Check, Config | None]:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        shown = [str(p) for p in e.problems[:3]]
        more = f" (and {len(e.problems) - 3} more)" if len(e.problems) > 3 else ""
        return (
            fail(
                "config",
                f"{path}: {len(e.problems)} problem(s): " + "; ".join(shown) + more,
                f"gasguard check-config {path} lists every problem with the allowed range",
            ),
            None,
        )
    buses = {d.bus for d in cfg.detectors}
    return (
        ok(
            "config",
            f"{path}: site {cfg.site.id}, {len(cfg.detectors)} detector(s) on {len(buses)} "
            f"bus(es), {len(cfg.valves)} valve(s)",
        ),
        cfg,
    )


def ask_controller(cfg: Config, env: Environment) -> tuple[Check, dict[str, Any] | None, bool]:
    """(check, the running controller's status or None, whether the controller owns the
    hardware now). Owning without a status: active under systemd but not answering."""
    from gateway.api.control import ControlClient, ControlError

    try:
        status = ControlClient(cfg.control_socket, env.control_timeout_s).call("status")
    except ControlError as e:
        error = str(e)
    else:
        sim = " (SIMULATED)" if status.get("simulated") else ""
        return ok("controller", f"running{sim}, up {status.get('uptime_s', '?')} s"), status, True
    state = env.systemd_state()
    if state in ("active", "activating", "reloading", "deactivating"):
        return (
            fail(
                "controller",
                f"{UNIT} is {state} but its control socket does not answer: {error}",
                f"journalctl -u {UNIT} -n 50; a hung controller is restarted by the watchdog",
            ),
            None,
            True,
        )
    return (
        warn(
            "controller",
            "not running: nothing is monitored and every valve stays closed"
            + (f" ({UNIT} {state})" if state else ""),
            "sudo systemctl start gasguard (the doctor checks the hardware directly meanwhile)",
        ),
        None,
        False,
    )


def _tty_driver(root: Path, device: Path) -> str | None:
    link = root / "sys/class/tty" / device.name / "device/driver"
    try:
        return Path(os.readlink(link)).name
    except OSError:
        return None


def check_uart(bus: BusConfig, model: PiModel, root: Path) -> Check:
    name = f"uart {bus.name}"
    port = Path(bus.port)
    if not port.exists():
        hint = (
            "plug the USB RS-485 adapter in, or fix [[bus]] port (ls -l /dev/gasguard/ "
            "/dev/serial/by-path/)"
        )
        if model.is_pi and port.name.startswith("ttyAMA"):
            hint = "enable the PL011 UART (see 'gasguard install' advice: dtoverlay), reboot"
        return fail(name, f"{bus.port} does not exist", hint)
    device = port.resolve()
    line = f"8{bus.parity}{bus.stop_bits}"
    driver = _tty_driver(root, device)
    mini = (driver is not None and "aux" in driver) or (
        model.is_pi and driver is None and device.name.startswith("ttyS")
    )
    where = f"{bus.port}" + (f" -> {device}" if device != port else "")
    if mini:
        if bus.parity != "N":
            return fail(
                name,
                f"{where} is the mini UART: it has no parity, {line} Modbus cannot work on it",
                "use the PL011 (/dev/ttyAMA0: dtoverlay=disable-bt on Pi 3/4, uart0-pi5 on "
                "Pi 5) or a USB RS-485 adapter",
            )
        return warn(
            name,
            f"{where} is the mini UART: its baud rate follows the core clock",
            "prefer the PL011 (/dev/ttyAMA0) or a USB RS-485 adapter",
        )
    kind = f", driver {driver}" if driver else ""
    return ok(name, f"{where} present{kind}, {bus.baud} {line}")


def check_gpio(cfg: Config, model: PiModel, env: Environment) -> Check:
    if env.pin_factory is not None:
        kind = type(env.pin_factory).__name__
        if "Mock" in kind:
            return warn("gpio", f"{kind}: simulated pins, no real valve is driven")
        return ok("gpio", f"pin factory {kind}")
    chosen = env.environ.get("GPIOZERO_PIN_FACTORY", "")
    if chosen == "mock":
        return warn(
            "gpio",
            "GPIOZERO_PIN_FACTORY=mock: simulated pins, no real valve is driven",
            "unset it (the unit sets GPIOZERO_PIN_FACTORY=lgpio)",
        )
    try:
        import lgpio  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        if model.is_pi:
            return fail(
                "gpio",
                "the lgpio backend is not installed: the valve cannot be driven",
                "sudo apt install python3-lgpio (the venv uses system site packages)",
            )
        return warn("gpio", "no GPIO backend (not a Raspberry Pi)")
    chips = sorted(p.name for p in (env.root / "dev").glob("gpiochip*"))
    if not chips:
        return fail("gpio", "lgpio installed but no /dev/gpiochip*", "is this a Raspberry Pi?")
    note = ""
    if model.family == "pi5" and chosen not in ("", "lgpio"):
        note = f"; GPIOZERO_PIN_FACTORY={chosen} will not work on a Pi 5"
        return fail("gpio", "lgpio present" + note, "use GPIOZERO_PIN_FACTORY=lgpio")
    return ok("gpio", f"lgpio backend, {', '.join(chips)}")


def _detector_from_status(d: dict[str, Any]) -> Check:
    name = f"detector {d.get('name')}"
    where = f"{d.get('bus')} address {d.get('address')}, {d.get('profile')}"
    state = d.get("state")
    lel = d.get("lel")
    if state == "normal":
        return ok(name, f"answers: {lel} %LEL, normal ({where})")
    if state == "starting":
        return warn(name, f"no reading yet ({where})", "wait a few seconds and run again")
    if state == "comm-fault":
        return fail(
            name,
            f"no valid reply for {d.get('age_s', '?')} s ({where})",
            "check power, RS-485 wiring (A/B), termination, address and baud on the detector",
        )
    if state == "fault":
        return fail(name, f"reports a fault: {d.get('fault')} ({where})", "service the detector")
    return fail(
        name,
        f"{state}: {lel} %LEL, latched {d.get('latched')} ({where})",
        "gas alarm: ventilate, find the leak; the gas stays off until a local reset",
    )


def poll_detectors_once(bus: BusConfig, detectors: Sequence[DetectorConfig]) -> list[Check]:
    """Read each detector of ``bus`` once, directly (the controller must not be running)."""
    import minimalmodbus
    import serial

    from gateway.drivers.modbus_bus import PARITY, STOP_BITS

    port = serial.Serial()
    port.port = bus.port
    port.baudrate = bus.baud
    port.bytesize = serial.EIGHTBITS
    port.parity = PARITY[bus.parity]
    port.stopbits = STOP_BITS[bus.stop_bits]
    port.timeout = bus.timeout_s
    port.write_timeout = 1.0
    port.exclusive = True  # one owner per serial port: fail rather than share it
    try:
        port.open()
    except (serial.SerialException, OSError) as e:
        return [
            fail(
                f"detector {d.name}",
                f"not polled: {bus.port} cannot be opened: {e}",
                "fix the port first (see the uart line); is another program using it?",
            )
            for d in detectors
        ]
    checks = []
    try:
        for d in detectors:
            checks.append(_poll_one(port, minimalmodbus, bus, d))
    finally:
        port.close()
    return checks


def _poll_one(port: Any, minimalmodbus: Any, bus: BusConfig, d: DetectorConfig) -> Check:
    name = f"detector {d.name}"
    where = f"{bus.name} address {d.address}, {d.profile.name}"
    start, count = d.profile.block
    error = "no attempt"
    for _ in range(1 + bus.retries):
        try:
            inst = minimalmodbus.Instrument(port, d.address)
            registers = inst.read_registers(start, count, functioncode=d.profile.function_code)
        except Exception as e:  # timeout, CRC, wrong id, exception reply: all mean "no answer"
            error = f"{type(e).__name__}: {e}"
            continue
        decoded = d.profile.decode(registers)
        if decoded.fault is not None:
            return fail(
                name,
                f"answers but reports: {decoded.fault} ({where})",
                "wrong profile for this model, or the detector needs service",
            )
        lel = decoded.lel if decoded.lel is not None else math.nan
        if decoded.own_alarm.value > 0 or lel >= d.low_lel:
            return fail(
                name,
                f"answers: {lel:.1f} %LEL, ALARM ({where})",
                "gas at the detector: ventilate and find the leak before opening the gas",
            )
        return ok(name, f"answers: {lel:.1f} %LEL, normal ({where})")
    return fail(
        name,
        f"no valid reply ({where}): {error}",
        "check power, RS-485 wiring (A/B), termination, and address/baud/parity on the detector",
    )


def _valve_from_status(v: dict[str, Any]) -> Check:
    name = f"valve {v.get('name')}"
    commanded = v.get("commanded")
    feedback = v.get("feedback")
    if v.get("failed"):
        return fail(
            name,
            f"valve fault: commanded {commanded}, contact says {feedback}",
            "inspect the valve and its position contact wiring; close the gas by hand",
        )
    if feedback == "none":
        return warn(
            name,
            f"commanded {commanded}; no position contact, closing cannot be confirmed",
            "wire the valve's position contact to a feedback_pin",
        )
    if feedback == commanded:
        return ok(name, f"commanded {commanded}, contact agrees")
    return warn(
        name,
        f"commanded {commanded}, contact says {feedback} (moving?)",
        "run again in a few seconds; if it stays, check the valve",
    )


def read_valve_contact(valve: ValveConfig, env: Environment) -> Check:
    """The position contact with no controller running (the coil is not driven)."""
    name = f"valve {valve.name}"
    if valve.feedback_pin is None:
        return warn(
            name,
            "no position contact: closing cannot be confirmed",
            "wire the valve's position contact to a feedback_pin",
        )
    try:
        from gpiozero import DigitalInputDevice

        # gpiozero warns once per backend it cannot load; the gpio line already says which.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pin = DigitalInputDevice(
                valve.feedback_pin,
                pull_up=valve.feedback_closed_level == "low",
                pin_factory=env.pin_factory,
            )
    except Exception as e:  # no backend, pin busy
        return fail(name, f"cannot read GPIO{valve.feedback_pin}: {e}", "see the gpio line")
    try:
        # Let the pull resistor and the contact settle before believing the level.
        time.sleep(CONTACT_SETTLE_S)
        closed = bool(pin.is_active)
    finally:
        pin.close()
    if closed:
        return ok(
            name,
            f"closed (contact on GPIO{valve.feedback_pin}), as it must be while "
            "no controller holds it open",
        )
    if valve.kind == "trip-to-close":
        return warn(
            name,
            "open: a trip-to-close valve stays open while no controller watches it",
            "start gasguard now, or close the gas by hand",
        )
    return fail(
        name,
        "contact says OPEN although no controller holds the coil: coil still driven "
        "(crashed process?), valve stuck, or contact wired wrong",
        "close the gas by hand; check the relay output and the contact wiring",
    )


def check_disk(data_dir: Path) -> Check:
    where = data_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    free_mb = usage.free / 1024 / 1024
    text = f"{free_mb:.0f} MiB free of {usage.total / 1024 / 1024:.0f} MiB at {where}"
    if usage.free < DISK_FAIL_BYTES:
        return fail(
            "disk", text, "free space: the event log cannot grow (journalctl --vacuum-size)"
        )
    if usage.free < DISK_WARN_BYTES or usage.free < usage.total * 0.1:
        return warn("disk", text, "free some space (journalctl --vacuum-size=32M, apt clean)")
    return ok("disk", text)


def check_event_store(db: Path) -> Check:
    from gateway.store.events import SCHEMA_VERSION

    if not db.exists():
        return warn("event log", f"{db}: none yet", "the controller creates it on its first start")
    try:
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        return fail("event log", f"{db}: cannot open: {e}", "check its owner and mode")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(5)").fetchall()]
        count = (
            int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            if rows == ["ok"]
            else None
        )
    except sqlite3.Error as e:
        return fail(
            "event log",
            f"{db}: corrupt or not a SQLite database: {e}",
            "stop gasguard, move the file aside (it is evidence), start gasguard (a new one)",
        )
    finally:
        conn.close()
    if rows != ["ok"]:
        return fail(
            "event log",
            f"{db}: integrity check failed: {'; '.join(rows)[:300]}",
            "stop gasguard, move the file aside (it is evidence), start gasguard (a new one)",
        )
    if version > SCHEMA_VERSION:
        return fail(
            "event log",
            f"{db}: schema {version} is newer than this gasguard ({SCHEMA_VERSION})",
            "a failed upgrade? restore the backup from /var/lib/gasguard/backups",
        )
    wal = Path(str(db) + "-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    text = f"{db}: integrity ok, schema {version}, {count} events, WAL {wal_size // 1024} KiB"
    if wal_size > WAL_WARN_BYTES:
        return warn("event log", text, "the WAL is not being checkpointed: restart gasguard-safety")
    return ok("event log", text)


def check_clock(env: Environment) -> Check:
    code, out = env.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    value = out.strip()
    if code != 0 or value not in ("yes", "no"):
        return warn(
            "clock",
            "cannot tell whether the clock is synchronised (timedatectl unavailable)",
            "event times come from this clock: check 'date' against a phone",
        )
    if value == "no":
        return warn(
            "clock",
            "not synchronised (NTP): event times may be wrong (the Pi has no battery clock)",
            "connect the network or fit an RTC; timedatectl timesync-status",
        )
    return ok("clock", "synchronised (NTP)")


def check_hw_watchdog(model: PiModel, env: Environment) -> Check:
    code, out = env.run(["systemctl", "show", "-p", "RuntimeWatchdogUSec", "--value"])
    value = out.strip()
    if code != 0 or not value:
        return warn(
            "watchdog",
            "cannot ask systemd for RuntimeWatchdogSec (systemd not running?)",
            "on the Pi: systemctl show -p RuntimeWatchdogUSec",
        )
    seconds = _systemd_seconds(value)
    if seconds is None or seconds == 0:
        return warn(
            "watchdog",
            f"hardware watchdog not fed (RuntimeWatchdogUSec={value})",
            "install /etc/systemd/system.conf.d/gasguard-watchdog.conf and reboot",
        )
    if model.is_pi and seconds > MAX_HW_WATCHDOG_S:
        return fail(
            "watchdog",
            f"RuntimeWatchdogSec={value}: bcm2835_wdt counts at most ~15 s",
            "set RuntimeWatchdogSec=10s",
        )
    return ok("watchdog", f"hardware watchdog fed by systemd every {value}")


def _systemd_seconds(value: str) -> float | None:
    """A systemd time span as ``systemctl show`` prints it (``10s``, ``1min 30s``, ``0``)."""
    if value in ("0", "infinity"):
        return 0.0
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    for part in value.split():
        number = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = part[len(number) :] or "s"
        if unit not in units or not number:
            return None
        try:
            total += float(number) * units[unit]
        except ValueError:
            return None
    return total


def check_uplinks(cfg: Config) -> list[Check]:
    checks: list[Check] = []
    for uplink_check in UPLINK_CHECKS:
        try:
            checks.extend(uplink_check(cfg))
        except Exception as e:  # one broken check must not hide the others
            checks.append(fail("uplink", f"check {uplink_check!r} failed: {e}"))
    if not checks:
        checks.append(
            warn(
                "uplinks",
                "none configured: alarms are shown and recorded on site only",
                "the city platform expects real-time alarm push (monitoring centre, MQTT)",
            )
        )
    return checks


# ---------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------


def run_checks(config_path: Path, env: Environment | None = None) -> list[Check]:
    """Every check, in the order a technician fixes things."""
    env = env or Environment()
    model = detect_model(env.root)
    config_check, cfg = check_config(config_path)
    checks = [config_check]
    if cfg is None:
        checks.append(check_disk(Path("/var/lib/gasguard")))
        checks.append(check_clock(env))
        return checks
    controller_check, status, owned = ask_controller(cfg, env)
    checks.append(controller_check)
    for bus in cfg.buses:
        checks.append(check_uart(bus, model, env.root))
    checks.append(check_gpio(cfg, model, env))
    if status is not None:
        checks.extend(_detector_from_status(d) for d in status.get("detectors", []))
        checks.extend(_valve_from_status(v) for v in status.get("valves", []))
    elif owned:
        for d in cfg.detectors:
            checks.append(warn(f"detector {d.name}", "not checked: the controller owns the port"))
        for v in cfg.valves:
            checks.append(warn(f"valve {v.name}", "not checked: the controller owns the pins"))
    else:
        for bus in cfg.buses:
            detectors = [d for d in cfg.detectors if d.bus == bus.name]
            if detectors:
                checks.extend(poll_detectors_once(bus, detectors))
        checks.extend(read_valve_contact(v, env) for v in cfg.valves)
    checks.append(check_disk(cfg.data_dir))
    checks.append(check_event_store(cfg.data_dir / EVENTS_DB))
    checks.append(check_clock(env))
    checks.append(check_hw_watchdog(model, env))
    checks.extend(check_uplinks(cfg))
    return checks


def render(checks: Sequence[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status.value}  {c.name:<{width}}  {c.message}")
        if c.hint and c.status is not Status.PASS:
            lines.append(f"      {'':<{width}}  -> {c.hint}")
    counts = {s: sum(1 for c in checks if c.status is s) for s in Status}
    lines.append(
        f"{counts[Status.FAIL]} FAIL, {counts[Status.WARN]} WARN, {counts[Status.PASS]} PASS"
    )
    return "\n".join(lines)


def exit_status(checks: Sequence[Check]) -> int:
    """1 if any check failed, else 0 (warnings do not fail)."""
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


def as_json(checks: Sequence[Check]) -> str:
    return json.dumps(
        [{**asdict(c), "status": c.status.value} for c in checks], ensure_ascii=False, indent=2
    )


def main(config_path: Path, *, json_output: bool = False, env: Environment | None = None) -> int:
    """``gasguard doctor``: print the report; the exit status."""
    checks = run_checks(config_path, env)
    with contextlib.suppress(BrokenPipeError):
        print(as_json(checks) if json_output else render(checks))
        sys.stdout.flush()
    return exit_status(checks)
