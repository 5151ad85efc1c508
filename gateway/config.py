"""The site configuration (TOML, read with ``tomllib``) and its validation.

``load_config(path)`` returns a frozen ``Config`` or raises ``ConfigError`` listing every problem
(file, key, value, allowed range). A config that fails validation is never used: the running
controller keeps the one it has.

Safety-relevant rules enforced here:
* set points within GB 15322.1: low 1–25 %LEL, high at most 50 %LEL, low below high;
* comm-fault timeout at most 100 s (GB 16808) and longer than two poll periods;
* alarm confirmation of 2–5 readings (GB 16808-2025), and confirmation time within 10 s;
* every detector's zone is closed by at least one valve, and every valve zone has a detector;
* outputs (valve, sounder, lights) only on GPIO 9–27 (pulled down at power-on, so a relay is
  not energised while the Pi boots), never on the UART pins 14/15; no pin used twice.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from gateway.core.model import (
    FAN_RUN_ON_S,
    FAN_START_CONFIRM_S,
    POWER_DEBOUNCE_S,
    DetectorPlan,
    FanPlan,
    Gas,
    PowerPlan,
    SafetyPlan,
    ValvePlan,
    sensor_id,
)
from gateway.paths import default_control_socket
from gateway.profiles import Profile, default_profiles_dir, load_profiles
from gateway.rtu import read_exchange_time
from gateway.validate import Checker, ConfigError, read_toml

BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
VALVE_KINDS = ("held-open", "trip-to-close")
OUTPUT_PINS = tuple(p for p in range(9, 28) if p not in (14, 15))
INPUT_PINS = tuple(p for p in range(2, 28) if p not in (14, 15))
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
NAME_RULE = "1-32 letters, digits, '_', '.' or '-', starting with a letter or digit"
LABEL_MAX = 40  # characters of a display name (``label``)


@dataclass(frozen=True, slots=True)
class SiteConfig:
    id: str
    name: str
    address: str


@dataclass(frozen=True, slots=True)
class BusConfig:
    """One RS-485 line. ``gap_ms`` is silence added after the Modbus t3.5 before each request;
    ``rs485`` turns on the kernel's RS-485 mode (TIOCSRS485) for HATs without auto-direction."""

    name: str
    port: str
    baud: int
    parity: str
    stop_bits: int
    timeout_s: float
    gap_ms: float
    rs485: bool
    retries: int


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    name: str
    zone: str
    bus: str
    address: int
    profile: Profile
    gas: Gas
    low_lel: float
    high_lel: float
    label: str = ""  # the display name (any language) shown to people; "" shows ``name``
    installed: datetime.date | None = None  # service dates (gateway.maintenance)
    calibrated: datetime.date | None = None


@dataclass(frozen=True, slots=True)
class ValveConfig:
    """``held-open``: energised only while open (fail safe, the default). ``trip-to-close``: a
    pulse of ``pulse_ms`` closes it; it must be reopened by hand at the valve."""

    name: str
    kind: str
    output_pin: int
    pulse_ms: int
    feedback_pin: int | None
    feedback_closed_level: str  # "high" or "low": the input level that means "closed"
    close_confirm_s: float
    zones: tuple[str, ...]
    label: str = ""  # the display name (any language) shown to people; "" shows ``name``


@dataclass(frozen=True, slots=True)
class FanConfig:
    """An exhaust fan's relay (active-high output, off at start) and its optional run-feedback
    contact; ``feedback_running_level`` is the input level that means "running". The input is
    pulled the other way, so a broken wire reads "not running" (a fault once it should run)."""

    name: str
    output_pin: int
    zones: tuple[str, ...]
    run_on_s: float = FAN_RUN_ON_S
    feedback_pin: int | None = None
    feedback_running_level: str = "high"
    start_confirm_s: float = FAN_START_CONFIRM_S
    on_comm_fault: bool = False
    label: str = ""


@dataclass(frozen=True, slots=True)
class PowerConfig:
    """The power supply's contacts (a UPS HAT's or a relay's): ``*_level`` is the input level
    that means "failed" / "low". Each input is pulled towards that level, so a broken wire
    reads as the fault (for the battery: the valves close)."""

    mains_failed_pin: int | None = None
    mains_failed_level: str = "low"
    battery_low_pin: int | None = None
    battery_low_level: str = "low"
    debounce_s: float = POWER_DEBOUNCE_S


@dataclass(frozen=True, slots=True)
class AnnunciatorConfig:
    sounder_pin: int
    red_pin: int
    yellow_pin: int
    green_pin: int
    silence_pin: int
    reset_pin: int
    reset_hold_s: float


@dataclass(frozen=True, slots=True)
class Timings:
    """``confirm_at_once``: a detector whose reading reaches its low set point (or reports an
    alarm) is polled again at once for the confirming readings, instead of a cycle later."""

    poll_period_s: float
    comm_fault_timeout_s: float
    confirm_count: int
    confirm_at_once: bool = True

    @property
    def bus_confirm_count(self) -> int:
        """The readings a poller takes in a row of an alarming detector (1: one per cycle)."""
        return self.confirm_count if self.confirm_at_once else 1


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    site: SiteConfig
    buses: tuple[BusConfig, ...]
    detectors: tuple[DetectorConfig, ...]
    valves: tuple[ValveConfig, ...]
    annunciator: AnnunciatorConfig
    timings: Timings
    data_dir: Path
    event_capacity: int
    control_socket: Path
    # ``[uplink]`` as written: the uplinks process parses and validates it
    # (``gateway.uplinks.config``); the safety process never reads it, so a mistake there can
    # never stop gas detection.
    uplink_table: dict[str, Any] = field(default_factory=dict)
    fans: tuple[FanConfig, ...] = ()
    power: PowerConfig = PowerConfig()
    # Zones whose valves close on a high alarm, low alarms at two detectors, or a fault, not
    # on one detector's low alarm (``[[zone]] two_detector_confirmation = true``).
    two_detector_zones: frozenset[str] = frozenset()

    def plan(self) -> SafetyPlan:
        """What the safety core enforces."""
        return SafetyPlan(
            detectors=tuple(
                DetectorPlan(
                    d.name,
                    d.zone,
                    d.low_lel,
                    d.high_lel,
                    d.profile.range_lel,
                    sensor=sensor_id(d.bus, d.address),
                    profile=d.profile.fingerprint,
                )
                for d in self.detectors
            ),
            valves=tuple(
                ValvePlan(v.name, v.zones, v.feedback_pin is not None, v.close_confirm_s)
                for v in self.valves
            ),
            comm_fault_timeout_s=self.timings.comm_fault_timeout_s,
            confirm_count=self.timings.confirm_count,
            fans=tuple(
                FanPlan(
                    f.name,
                    f.zones,
                    f.run_on_s,
                    f.on_comm_fault,
                    f.feedback_pin is not None,
                    f.start_confirm_s,
                )
                for f in self.fans
            ),
            power=PowerPlan(
                self.power.mains_failed_pin is not None,
                self.power.battery_low_pin is not None,
                self.power.debounce_s,
            ),
            two_detector_zones=self.two_detector_zones,
        )


def restart_fields(old: Config, new: Config) -> list[str]:
    """What differs between two configs that takes effect only at a restart: the pins (valves,
    fans, power contacts, annunciator), the data directory, the control socket, and the
    uplinks (a restart of gasguard-uplinks only). The safety process refuses a reload that
    changes any but the last (``Controller.reload``); the console says what to restart."""
    pairs = {
        "valves": (old.valves, new.valves),
        "fans": (old.fans, new.fans),
        "power": (old.power, new.power),
        "annunciator": (old.annunciator, new.annunciator),
        "storage.data_dir": (old.data_dir, new.data_dir),
        "control.socket": (old.control_socket, new.control_socket),
        "uplink": (old.uplink_table, new.uplink_table),
    }
    return [name for name, (a, b) in pairs.items() if a != b]


UPLINK_FIELD = "uplink"  # the one restart field the safety process does not read

TOP_KEYS = (
    "site",
    "bus",
    "detector",
    "valve",
    "fan",
    "zone",
    "power",
    "annunciator",
    "timings",
    "storage",
    "control",
    "uplink",
    "profiles_dir",
)


def load_config(path: Path | str) -> Config:
    """Read and validate ``path``. Raises ConfigError with every problem found."""
    path = Path(path)
    data = read_toml(path)
    return parse_config(data, path)


def parse_config(data: dict[str, Any], path: Path) -> Config:
    c = Checker(str(path))
    base = path.parent
    c.known_keys(data, "", TOP_KEYS)

    profiles_dir = data.get("profiles_dir")
    if profiles_dir is None:
        beside = base / "profiles"
        pdir = beside if beside.is_dir() else default_profiles_dir()
    elif isinstance(profiles_dir, str):
        pdir = base / profiles_dir
    else:
        c.bad("profiles_dir", profiles_dir, "a directory path")
        pdir = default_profiles_dir()
    profiles: dict[str, Profile] = {}
    try:
        profiles = load_profiles(pdir)
    except ConfigError as e:
        c.problems.extend(e.problems)

    site_t = c.table(data, "site")
    c.known_keys(site_t, "site", ("id", "name", "address"))
    site = SiteConfig(
        id=_name(c, site_t, "site.id"),
        name=c.string(site_t, "site.name"),
        address=c.string(site_t, "site.address", required=False),
    )

    timings_t = data.get("timings", {})
    if not isinstance(timings_t, dict):
        c.bad("timings", timings_t, "a table")
        timings_t = {}
    c.known_keys(
        timings_t,
        "timings",
        ("poll_period_s", "comm_fault_timeout_s", "confirm_count", "confirm_at_once"),
    )
    timings = Timings(
        poll_period_s=c.number(timings_t, "timings.poll_period_s", 0.1, 10.0, default=0.5),
        comm_fault_timeout_s=c.number(
            timings_t, "timings.comm_fault_timeout_s", 1.0, 100.0, default=10.0
        ),
        confirm_count=c.integer(timings_t, "timings.confirm_count", 2, 5, default=2),
        confirm_at_once=c.boolean(timings_t, "timings.confirm_at_once", True),
    )
    if timings.comm_fault_timeout_s < 2 * timings.poll_period_s:
        c.bad(
            "timings.comm_fault_timeout_s",
            timings.comm_fault_timeout_s,
            f"at least two poll periods ({2 * timings.poll_period_s:g} s)",
        )
    if timings.poll_period_s * timings.confirm_count > 10.0:
        c.bad(
            "timings.poll_period_s",
            timings.poll_period_s,
            f"at most {10.0 / timings.confirm_count:g} s, so that {timings.confirm_count} "
            "confirming readings fit in GB 16808's 10 s",
        )

    buses = tuple(_bus(c, b, i) for i, b in enumerate(_array(c, data, "bus")))
    _unique(c, "bus", [b.name for b in buses])
    bus_names = {b.name for b in buses}

    detectors: list[DetectorConfig] = []
    # Every [[detector]] as written, even one whose profile is unknown: problem keys must name
    # the table's real position, and its name, zone and address still count in the checks.
    written: list[_Written] = []
    for i, raw in enumerate(_array(c, data, "detector")):
        det, seen = _detector(c, raw, i, profiles, bus_names)
        written.append(seen)
        if det is not None:
            detectors.append(det)
    _unique(c, "detector", [d.name for d in written])
    seen_addr: dict[tuple[str, int], str] = {}
    for i, dc in enumerate(written):
        if dc.address is None:
            continue
        bus_addr = (dc.bus, dc.address)
        if bus_addr in seen_addr:
            c.bad(
                f"detector[{i}].address",
                dc.address,
                f"an address not already used on bus {dc.bus!r} (by {seen_addr[bus_addr]!r})",
            )
        seen_addr[bus_addr] = dc.name

    bus_by_name = {b.name: b for b in buses}
    for det in detectors:
        b = bus_by_name.get(det.bus)
        if b is None:
            continue
        needed = read_exchange_time(det.profile.block[1], b.baud, b.parity, b.stop_bits)
        if b.timeout_s <= needed:
            c.bad(
                f"bus[{buses.index(b)}].timeout_s",
                b.timeout_s,
                f"more than {needed:.3f} s: detector {det.name!r} ({det.profile.name}) needs "
                f"{needed * 1000:.1f} ms on the wire at {b.baud} baud",
            )

    valves = tuple(_valve(c, v, i) for i, v in enumerate(_array(c, data, "valve")))
    _unique(c, "valve", [v.name for v in valves])
    det_zones = {d.zone for d in written}
    valve_zones = {z for v in valves for z in v.zones}
    for i, dc in enumerate(written):
        if dc.zone not in valve_zones:
            c.bad(f"detector[{i}].zone", dc.zone, "a zone listed in some valve's zones")
    for i, v in enumerate(valves):
        for z in v.zones:
            if z not in det_zones:
                c.bad(f"valve[{i}].zones", z, "zones that have at least one detector")

    fan_list = data.get("fan", [])
    if not isinstance(fan_list, list) or not all(isinstance(f, dict) for f in fan_list):
        c.bad("fan", fan_list, "an array of [[fan]] tables")
        fan_list = []
    fans = tuple(_fan(c, f, i) for i, f in enumerate(fan_list))
    _unique(c, "fan", [f.name for f in fans])
    for i, f in enumerate(fans):
        for z in f.zones:
            if z not in det_zones:
                c.bad(f"fan[{i}].zones", z, "zones that have at least one detector")
    power = _power(c, data.get("power", {}))
    two_detector_zones = _zones(c, data.get("zone", []), written)

    ann_t = c.table(data, "annunciator")
    c.known_keys(
        ann_t,
        "annunciator",
        (
            "sounder_pin",
            "red_pin",
            "yellow_pin",
            "green_pin",
            "silence_pin",
            "reset_pin",
            "reset_hold_s",
        ),
    )
    ann = AnnunciatorConfig(
        sounder_pin=_pin(c, ann_t, "annunciator.sounder_pin", OUTPUT_PINS),
        red_pin=_pin(c, ann_t, "annunciator.red_pin", OUTPUT_PINS),
        yellow_pin=_pin(c, ann_t, "annunciator.yellow_pin", OUTPUT_PINS),
        green_pin=_pin(c, ann_t, "annunciator.green_pin", OUTPUT_PINS),
        silence_pin=_pin(c, ann_t, "annunciator.silence_pin", INPUT_PINS),
        reset_pin=_pin(c, ann_t, "annunciator.reset_pin", INPUT_PINS),
        reset_hold_s=c.number(ann_t, "annunciator.reset_hold_s", 2.0, 10.0, default=2.0),
    )
    pins: list[tuple[str, int | None]] = [
        ("annunciator.sounder_pin", ann.sounder_pin),
        ("annunciator.red_pin", ann.red_pin),
        ("annunciator.yellow_pin", ann.yellow_pin),
        ("annunciator.green_pin", ann.green_pin),
        ("annunciator.silence_pin", ann.silence_pin),
        ("annunciator.reset_pin", ann.reset_pin),
    ]
    for i, v in enumerate(valves):
        pins += [
            (f"valve[{i}].output_pin", v.output_pin),
            (f"valve[{i}].feedback_pin", v.feedback_pin),
        ]
    for i, f in enumerate(fans):
        pins += [(f"fan[{i}].output_pin", f.output_pin), (f"fan[{i}].feedback_pin", f.feedback_pin)]
    pins += [
        ("power.mains_failed_pin", power.mains_failed_pin),
        ("power.battery_low_pin", power.battery_low_pin),
    ]
    used: dict[int, str] = {}
    for pin_key, pin in pins:
        if pin is None or pin < 0:  # absent, or already reported as not a valid pin
            continue
        if pin in used:
            c.bad(pin_key, pin, f"a GPIO not already used (by {used[pin]})")
        used[pin] = pin_key

    storage_t = data.get("storage", {})
    if not isinstance(storage_t, dict):
        c.bad("storage", storage_t, "a table")
        storage_t = {}
    c.known_keys(storage_t, "storage", ("data_dir", "event_capacity"))
    data_dir = base / c.string(
        storage_t, "storage.data_dir", required=False, default="/var/lib/gasguard"
    )
    event_capacity = c.integer(storage_t, "storage.event_capacity", 999, 10_000_000, default=10_000)
    control_t = data.get("control", {})
    if not isinstance(control_t, dict):
        c.bad("control", control_t, "a table")
        control_t = {}
    c.known_keys(control_t, "control", ("socket",))
    sock = c.string(control_t, "control.socket", required=False, default="")
    control_socket = base / sock if sock else default_control_socket(data_dir)

    uplink_table = data.get("uplink", {})
    if not isinstance(uplink_table, dict):
        c.bad("uplink", uplink_table, "a table with mqtt, gb26875 and sms tables")
        uplink_table = {}

    if not detectors and not c.problems:
        c.bad("detector", [], "at least one [[detector]]")
    if not valves and not c.problems:
        c.bad("valve", [], "at least one [[valve]]")
    if c.problems:
        raise ConfigError(c.problems)
    return Config(
        path=path,
        site=site,
        buses=buses,
        detectors=tuple(detectors),
        valves=valves,
        annunciator=ann,
        timings=timings,
        data_dir=data_dir,
        event_capacity=event_capacity,
        control_socket=control_socket,
        uplink_table=uplink_table,
        fans=fans,
        power=power,
        two_detector_zones=two_detector_zones,
    )


def _array(c: Checker, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        c.bad(key, value, f"an array of [[{key}]] tables")
        return []
    if not value:
        c.bad(key, value, f"at least one [[{key}]] table")
    return value


def _name(c: Checker, data: dict[str, Any], key: str) -> str:
    value = c.string(data, key)
    if value and not NAME_RE.match(value):
        c.bad(key, value, NAME_RULE)
    return value


def _unique(c: Checker, what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n and n in seen:  # an empty name was already reported as missing
            c.bad(f"{what}[{i}].name", n, f"a name not used by another {what}")
        seen.add(n)


def _pin(c: Checker, data: dict[str, Any], key: str, allowed: tuple[int, ...]) -> int:
    value = data.get(key.rsplit(".", 1)[-1])
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        c.bad(key, value, "a BCM GPIO number, one of " + ", ".join(map(str, allowed)))
        return -1
    return value


def _bus(c: Checker, b: dict[str, Any], i: int) -> BusConfig:
    k = f"bus[{i}]"
    c.known_keys(
        b,
        k,
        ("name", "port", "baud", "parity", "stop_bits", "timeout_s", "gap_ms", "rs485", "retries"),
    )
    baud = b.get("baud", 9600)
    if baud not in BAUD_RATES or isinstance(baud, bool):
        c.bad(f"{k}.baud", baud, "one of " + ", ".join(map(str, BAUD_RATES)))
        baud = 9600
    return BusConfig(
        name=_name(c, b, f"{k}.name"),
        port=c.string(b, f"{k}.port"),
        baud=baud,
        parity=c.choice(b, f"{k}.parity", ("N", "E", "O"), default="N"),
        stop_bits=c.integer(b, f"{k}.stop_bits", 1, 2, default=1),
        timeout_s=c.number(b, f"{k}.timeout_s", 0.02, 2.0, default=0.2),
        gap_ms=c.number(b, f"{k}.gap_ms", 0.0, 1000.0, default=0.0),
        rs485=c.boolean(b, f"{k}.rs485", False),
        retries=c.integer(b, f"{k}.retries", 0, 5, default=1),
    )


class _Written(NamedTuple):
    """The keys of one [[detector]] that other checks compare across detectors."""

    name: str
    zone: str
    bus: str
    address: int | None  # None when the address itself was rejected


def _detector(
    c: Checker,
    d: dict[str, Any],
    i: int,
    profiles: dict[str, Profile],
    bus_names: set[str],
) -> tuple[DetectorConfig | None, _Written]:
    """The detector, or None if its profile is unknown; and, always, what was written (for
    the cross-checks of names, zones and addresses)."""
    k = f"detector[{i}]"
    c.known_keys(
        d,
        k,
        ("name", "label", "zone", "bus", "address", "profile", "gas", "low_lel", "high_lel",
         "installed", "calibrated"),
    )  # fmt: skip
    name = _name(c, d, f"{k}.name")
    zone = _name(c, d, f"{k}.zone")
    bus = c.string(d, f"{k}.bus")
    if bus and bus not in bus_names:
        c.bad(f"{k}.bus", bus, "the name of a [[bus]]: " + ", ".join(sorted(bus_names)))
    before = len(c.problems)
    address = c.integer(d, f"{k}.address", 1, 247)
    address_ok = len(c.problems) == before
    profile_name = c.string(d, f"{k}.profile")
    profile = profiles.get(profile_name)
    if profile is None and profiles:
        c.bad(f"{k}.profile", profile_name, "one of " + ", ".join(sorted(profiles)))
    gas = c.choice(d, f"{k}.gas", [g.value for g in Gas])
    before = len(c.problems)
    low = c.number(d, f"{k}.low_lel", 1.0, 25.0)
    high = c.number(d, f"{k}.high_lel", 1.0, 50.0)
    # Compare only two valid set points: a rejected one was replaced by a placeholder.
    if len(c.problems) == before and low >= high:
        c.bad(f"{k}.high_lel", high, f"above low_lel ({low:g} %LEL)")
    seen = _Written(name, zone, bus, address if address_ok else None)
    if profile is None:
        return None, seen
    label = c.free_text(d, f"{k}.label", LABEL_MAX)
    # Tomorrow: a date typed in China late in the evening is already "today" there.
    latest = datetime.date.today() + datetime.timedelta(days=1)
    installed = c.date(d, f"{k}.installed", latest)
    calibrated = c.date(d, f"{k}.calibrated", latest)
    if installed is not None and calibrated is not None and calibrated < installed:
        c.bad(f"{k}.calibrated", calibrated, f"a date on or after installed ({installed})")
    det = DetectorConfig(
        name, zone, bus, address, profile, Gas(gas), low, high, label, installed, calibrated
    )
    return det, seen


def _valve(c: Checker, v: dict[str, Any], i: int) -> ValveConfig:
    k = f"valve[{i}]"
    c.known_keys(
        v,
        k,
        (
            "name",
            "label",
            "kind",
            "output_pin",
            "pulse_ms",
            "feedback_pin",
            "feedback_closed_level",
            "close_confirm_s",
            "zones",
        ),
    )
    kind = c.choice(v, f"{k}.kind", VALVE_KINDS, default="held-open")
    pulse = v.get("pulse_ms")
    if kind == "trip-to-close":
        pulse = c.integer(v, f"{k}.pulse_ms", 10, 5000)
    elif pulse is not None:
        c.bad(f"{k}.pulse_ms", pulse, "only for kind = 'trip-to-close'")
    feedback = v.get("feedback_pin")
    return ValveConfig(
        name=_name(c, v, f"{k}.name"),
        kind=kind,
        output_pin=_pin(c, v, f"{k}.output_pin", OUTPUT_PINS),
        pulse_ms=int(pulse or 0),
        feedback_pin=None if feedback is None else _pin(c, v, f"{k}.feedback_pin", INPUT_PINS),
        feedback_closed_level=c.choice(
            v, f"{k}.feedback_closed_level", ("high", "low"), default="high"
        ),
        close_confirm_s=c.number(v, f"{k}.close_confirm_s", 0.1, 10.0, default=2.0),
        zones=c.strings(v, f"{k}.zones"),
        label=c.free_text(v, f"{k}.label", LABEL_MAX),
    )


def _fan(c: Checker, f: dict[str, Any], i: int) -> FanConfig:
    k = f"fan[{i}]"
    c.known_keys(
        f,
        k,
        (
            "name",
            "label",
            "output_pin",
            "zones",
            "run_on_s",
            "feedback_pin",
            "feedback_running_level",
            "start_confirm_s",
            "on_comm_fault",
        ),
    )
    feedback = f.get("feedback_pin")
    return FanConfig(
        name=_name(c, f, f"{k}.name"),
        output_pin=_pin(c, f, f"{k}.output_pin", OUTPUT_PINS),
        zones=c.strings(f, f"{k}.zones"),
        run_on_s=c.number(f, f"{k}.run_on_s", 0.0, 3600.0, default=FAN_RUN_ON_S),
        feedback_pin=None if feedback is None else _pin(c, f, f"{k}.feedback_pin", INPUT_PINS),
        feedback_running_level=c.choice(
            f, f"{k}.feedback_running_level", ("high", "low"), default="high"
        ),
        start_confirm_s=c.number(
            f, f"{k}.start_confirm_s", 1.0, 120.0, default=FAN_START_CONFIRM_S
        ),
        on_comm_fault=c.boolean(f, f"{k}.on_comm_fault", False),
        label=c.free_text(f, f"{k}.label", LABEL_MAX),
    )


def _power(c: Checker, t: object) -> PowerConfig:
    if not isinstance(t, dict):
        c.bad("power", t, "a table")
        return PowerConfig()
    c.known_keys(
        t,
        "power",
        ("mains_failed_pin", "mains_failed_level", "battery_low_pin", "battery_low_level",
         "debounce_s"),
    )  # fmt: skip

    def optional_pin(key: str) -> int | None:
        return None if t.get(key) is None else _pin(c, t, f"power.{key}", INPUT_PINS)

    return PowerConfig(
        mains_failed_pin=optional_pin("mains_failed_pin"),
        mains_failed_level=c.choice(t, "power.mains_failed_level", ("high", "low"), default="low"),
        battery_low_pin=optional_pin("battery_low_pin"),
        battery_low_level=c.choice(t, "power.battery_low_level", ("high", "low"), default="low"),
        debounce_s=c.number(t, "power.debounce_s", 0.1, 60.0, default=POWER_DEBOUNCE_S),
    )


def _zones(c: Checker, value: object, written: list[_Written]) -> frozenset[str]:
    """``[[zone]]`` tables: per zone, ``two_detector_confirmation`` (off by default). It needs
    at least two detectors in the zone: with one, its low alarm could never close the gas."""
    if not isinstance(value, list) or not all(isinstance(z, dict) for z in value):
        c.bad("zone", value, "an array of [[zone]] tables")
        return frozenset()
    counts: dict[str, int] = {}
    for d in written:
        counts[d.zone] = counts.get(d.zone, 0) + 1
    two: set[str] = set()
    for i, z in enumerate(value):
        k = f"zone[{i}]"
        c.known_keys(z, k, ("name", "two_detector_confirmation"))
        name = _name(c, z, f"{k}.name")
        if name and name not in counts:
            c.bad(f"{k}.name", name, "a zone that has detectors: " + ", ".join(sorted(counts)))
            continue
        if c.boolean(z, f"{k}.two_detector_confirmation", False):
            if counts.get(name, 0) < 2:
                c.bad(
                    f"{k}.two_detector_confirmation",
                    True,
                    f"false for zone {name!r}: it has {counts.get(name, 0)} detector(s), and "
                    "two-detector confirmation needs at least 2 (with one, a low alarm there "
                    "could never close the gas)",
                )
            two.add(name)
    _unique(c, "zone", [str(z.get("name", "")) for z in value])
    return frozenset(two)
