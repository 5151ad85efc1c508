"""Bus scan: which Modbus addresses answer on an RS-485 line, at which line setting, and which
detector profile their registers decode plausibly with.

Runs in the controller process (``gateway.console.api``), on a port whose poller has been
stopped first: one owner per serial port. Every probe is one FC03/FC04 read of one profile's
``block`` with a short reply timeout; the whole scan stops at ``budget_s``.

How an answer is read:

* a reply that decodes to a finite concentration within the profile's range and no fault: that
  profile is the guess (profiles whose default line setting matches are tried first);
* an exception reply (illegal address/function): something is there, but not that profile;
* a garbled reply (CRC, wrong length): something is there at another baud rate or parity;
* no reply: nothing at that address at this line setting (or a device that ignores reads of
  registers it lacks; scan again with only its profile).

On a line where a device answered, later line settings skip that address (a device talks at one
setting; a pty test line answers at every setting).
"""

from __future__ import annotations

import contextlib
import termios
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import minimalmodbus
import serial

from gateway.config import BAUD_RATES, BusConfig
from gateway.profiles import Profile, default_profiles_dir, load_profiles
from gateway.rtu import read_exchange_time
from gateway.validate import read_toml

PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
STOP_BITS = {1: serial.STOPBITS_ONE, 2: serial.STOPBITS_TWO}
MAX_BUDGET_S = 300.0


@dataclass(frozen=True, slots=True, order=True)
class LineSetting:
    baud: int
    parity: str
    stop_bits: int

    def __str__(self) -> str:
        return f"{self.baud} 8{self.parity}{self.stop_bits}"


@dataclass(slots=True)
class Found:
    """One address that answered. ``profile`` is the guess (None: answers, but no profile
    decodes plausibly); ``notes`` says what each probe showed."""

    address: int
    line: LineSetting
    profile: str | None = None
    lel: float | None = None
    fault: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "line": str(self.line),
            "baud": self.line.baud,
            "parity": self.line.parity,
            "stop_bits": self.line.stop_bits,
            "profile": self.profile,
            "lel": None if self.lel is None else round(self.lel, 1),
            "fault": self.fault,
            "notes": self.notes,
        }


@dataclass(slots=True)
class ScanResult:
    port: str
    found: list[Found] = field(default_factory=list)
    lines_tried: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    probes: int = 0
    elapsed_s: float = 0.0
    stopped: str | None = None  # why the scan ended early (time budget)


def profiles_for(config_path: Path) -> dict[str, Profile]:
    """The profiles a config file uses (its ``profiles_dir``, as ``load_config`` finds it)."""
    base = Path(config_path).parent
    try:
        data = read_toml(Path(config_path))
    except Exception:
        data = {}
    pdir = data.get("profiles_dir")
    if isinstance(pdir, str):
        directory = base / pdir
    elif (base / "profiles").is_dir():
        directory = base / "profiles"
    else:
        directory = default_profiles_dir()
    return load_profiles(directory)


def line_settings(bus: BusConfig, profiles: Sequence[Profile], which: str) -> list[LineSetting]:
    """The line settings to try, the bus's own first. ``which``: ``configured`` (only the
    bus's), ``defaults`` (+ each profile's default), ``all`` (+ every baud rate at 8N1, 8E1)."""
    own = LineSetting(bus.baud, bus.parity, bus.stop_bits)
    out = [own]
    if which in ("defaults", "all"):
        out += [
            LineSetting(p.default_baud, p.default_parity, p.default_stop_bits) for p in profiles
        ]
    if which == "all":
        out += [LineSetting(b, parity, 1) for b in BAUD_RATES for parity in ("N", "E")]
    unique: list[LineSetting] = []
    for line in out:
        if line not in unique:
            unique.append(line)
    return unique


def _open(port: str, line: LineSetting, timeout_s: float) -> serial.Serial:
    ser = serial.Serial()
    ser.port = port
    ser.baudrate = line.baud
    ser.bytesize = serial.EIGHTBITS
    ser.parity = PARITY[line.parity]
    ser.stopbits = STOP_BITS[line.stop_bits]
    ser.timeout = timeout_s
    ser.write_timeout = 1.0
    ser.exclusive = True  # one owner per serial port: fails if a poller still has it
    ser.open()
    return ser


def _open_retrying(port: str, line: LineSetting, timeout_s: float, until: float) -> serial.Serial:
    """The port, retried for a short while: a poller that was just stopped may still be
    closing it."""
    while True:
        try:
            return _open(port, line, timeout_s)
        except (serial.SerialException, OSError, ValueError, termios.error):
            if time.monotonic() >= until:
                raise
            time.sleep(0.2)


def _plausible(profile: Profile, registers: list[int]) -> tuple[bool, float | None, str | None]:
    decoded = profile.decode(registers)
    lel = decoded.lel
    ok = lel is not None and 0.0 <= lel <= profile.range_lel and decoded.fault is None
    return ok, lel, decoded.fault


def scan_port(
    port: str,
    lines: Sequence[LineSetting],
    addresses: Sequence[int],
    profiles: Sequence[Profile],
    *,
    timeout_s: float = 0.1,
    budget_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[str], None] | None = None,
) -> ScanResult:
    """Probe ``addresses`` at each line setting with each profile's read. The caller owns the
    port (its poller is stopped). Ends after ``budget_s`` seconds at the latest."""
    budget_s = min(max(budget_s, 0.1), MAX_BUDGET_S)
    started = clock()
    deadline = started + budget_s
    result = ScanResult(port)
    found_at: set[int] = set()
    for line in lines:
        if clock() >= deadline:
            result.stopped = f"time budget of {budget_s:g} s used up before {line}"
            break
        order = sorted(
            profiles,
            key=lambda p: (
                (p.default_baud, p.default_parity, p.default_stop_bits)
                != (line.baud, line.parity, line.stop_bits),
                p.name,
            ),
        )
        result.lines_tried.append(str(line))
        # One reply timeout for the line, never shorter than the longest exchange takes on
        # the wire at this speed. Set once at open: changing a port setting reconfigures the
        # line, which a pty with parity refuses.
        line_timeout = max(
            [timeout_s]
            + [
                1.5 * read_exchange_time(p.block[1], line.baud, line.parity, line.stop_bits) + 0.02
                for p in profiles
            ]
        )
        try:
            ser = _open_retrying(port, line, line_timeout, min(deadline, time.monotonic() + 3.0))
        except (serial.SerialException, OSError, ValueError, termios.error) as e:
            # A pty (the simulated kitchen) cannot hold parity: such a line is reported, and
            # the scan goes on with the next one.
            result.errors.append(f"{line}: cannot open {port}: {e}")
            continue
        try:
            for address in addresses:
                if address in found_at:
                    continue
                if clock() >= deadline:
                    result.stopped = (
                        f"time budget of {budget_s:g} s used up at {line}, address {address}"
                    )
                    break
                try:
                    hit = _probe_address(ser, line, address, order, result)
                except (serial.SerialException, OSError, termios.error) as e:
                    result.errors.append(f"{line}: port failed at address {address}: {e}")
                    break
                if hit is not None:
                    found_at.add(address)
                    result.found.append(hit)
                    if progress is not None:
                        progress(f"{line} address {address}: {hit.profile or 'answers'}")
        finally:
            with contextlib.suppress(Exception):
                ser.close()
        if result.stopped:
            break
    result.elapsed_s = round(clock() - started, 3)
    result.found.sort(key=lambda f: f.address)
    return result


def _probe_address(
    ser: serial.Serial,
    line: LineSetting,
    address: int,
    profiles: Sequence[Profile],
    result: ScanResult,
) -> Found | None:
    instrument = minimalmodbus.Instrument(ser, address)
    answered = False
    hit = Found(address, line)
    for profile in profiles:
        start, count = profile.block
        result.probes += 1
        try:
            registers = instrument.read_registers(start, count, functioncode=profile.function_code)
        except minimalmodbus.NoResponseError:
            continue
        except minimalmodbus.SlaveReportedException as e:
            answered = True
            hit.notes.append(f"{profile.name}: exception reply ({type(e).__name__})")
            continue
        except minimalmodbus.ModbusException as e:
            answered = True
            hit.notes.append(f"{profile.name}: garbled reply ({type(e).__name__})")
            continue
        answered = True
        ok, lel, fault = _plausible(profile, list(registers))
        if ok:
            hit.profile = profile.name
            hit.lel = lel
            hit.notes.append(f"{profile.name}: decodes plausibly")
            return hit
        why = fault or f"{lel} %LEL out of range"
        hit.notes.append(f"{profile.name}: reads, but implausible ({why})")
        if hit.fault is None:
            hit.fault = fault
    return hit if answered else None
