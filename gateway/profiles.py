"""Detector profiles: how one detector model lays out its Modbus registers.

A profile is data (``config/profiles/*.toml``): function code, register addresses, data type,
word order, scale and status decoding. The poller reads one contiguous block per detector
(``Profile.block``) and ``Profile.decode`` turns it into a concentration, the detector's own alarm
level and its fault text. ``Profile.encode`` is the inverse, used by the emulators so that the
simulated kitchen and the HIL fixture speak exactly what the profile describes.

Safety defaults: an unknown status code is a fault; a units register that does not say %LEL is
a fault; a NaN or infinite float is a fault (never zero).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.model import Level
from gateway.validate import Checker, ConfigError, Problem, read_toml

VALUE_TYPES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
STATUS_KINDS = ("code", "bits", "threshold", "any_bit_fault")
PARITIES = ("N", "E", "O")
TOP_KEYS = (
    "name",
    "description",
    "function_code",
    "default_address",
    "default_baud",
    "default_parity",
    "default_stop_bits",
    "range_lel",
    "concentration",
    "status",
    "units",
    "service_life_years",
    "calibration_interval_days",
)
# Commercial kitchen detectors: a 3-year service life and a yearly calibration unless the
# maker's profile says otherwise (the defaults; a profile may set its own).
SERVICE_LIFE_YEARS = 3.0
CALIBRATION_INTERVAL_DAYS = 365
CONCENTRATION_KEYS = ("register", "type", "word_order", "scale")
UNITS_KEYS = ("register", "expect")
# The keys each status kind reads: any other key would be silently ignored (a fault bit given
# to a "code" rule, say), so it is rejected like a typo.
STATUS_KEYS = {
    "code": ("register", "kind", "normal", "low_alarm", "high_alarm", "fault"),
    "bits": ("register", "kind", "low_alarm_bit", "high_alarm_bit", "fault_bit"),
    "threshold": ("register", "kind", "fault_at_or_above"),
    "any_bit_fault": ("register", "kind"),
}


@dataclass(frozen=True, slots=True)
class StatusRule:
    """How one status register is read. ``kind``:

    * ``code``: the value is one code; listed codes map to normal / low / high / fault and any
      other code is a fault.
    * ``bits``: single bits flag low alarm, high alarm and fault.
    * ``threshold``: a value at or above ``fault_at_or_above`` is a fault.
    * ``any_bit_fault``: any bit set is a fault.
    """

    register: int
    kind: str
    normal: tuple[int, ...] = ()
    low_alarm: tuple[int, ...] = ()
    high_alarm: tuple[int, ...] = ()
    fault: tuple[int, ...] = ()
    low_alarm_bit: int | None = None
    high_alarm_bit: int | None = None
    fault_bit: int | None = None
    fault_at_or_above: int | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    lel: float | None
    own_alarm: Level
    fault: str | None


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    function_code: int
    default_address: int
    default_baud: int
    default_parity: str
    default_stop_bits: int
    range_lel: float
    value_register: int
    value_type: str
    word_order: str
    scale: float
    status: tuple[StatusRule, ...]
    units_register: int | None = None
    units_expect: int | None = None
    service_life_years: float = SERVICE_LIFE_YEARS
    calibration_interval_days: int = CALIBRATION_INTERVAL_DAYS

    @property
    def fingerprint(self) -> str:
        """The profile's name and a digest of everything that decides what its numbers mean
        (registers, types, scale, range, status rules): two profiles read the same only if
        their fingerprints are equal."""
        meaning = (
            self.function_code,
            self.range_lel,
            self.value_register,
            self.value_type,
            self.word_order,
            self.scale,
            self.status,
            self.units_register,
            self.units_expect,
        )
        digest = zlib.crc32(repr(meaning).encode())
        return f"{self.name}#{digest:08x}"

    @property
    def block(self) -> tuple[int, int]:
        """(first register, count) of the one read that covers everything this profile uses."""
        spans = [(self.value_register, VALUE_TYPES[self.value_type])]
        spans += [(s.register, 1) for s in self.status]
        if self.units_register is not None:
            spans.append((self.units_register, 1))
        start = min(r for r, _ in spans)
        end = max(r + n for r, n in spans)
        return start, end - start

    # -- decoding ----------------------------------------------------------------------------

    def decode(self, registers: Sequence[int]) -> Decoded:
        """Decode one block read (as returned by the poller, ``block`` registers long)."""
        start, count = self.block
        if len(registers) != count:
            return Decoded(None, Level.NORMAL, f"expected {count} registers, got {len(registers)}")

        def reg(address: int) -> int:
            return int(registers[address - start]) & 0xFFFF

        lel = self._decode_value([reg(self.value_register + i) for i in range(self._width)])
        alarm = Level.NORMAL
        faults: list[str] = []
        if lel is None:
            faults.append("concentration is not a number")
        for rule in self.status:
            value = reg(rule.register)
            level, fault = _decode_status(rule, value)
            alarm = max(alarm, level)
            if fault is not None:
                faults.append(fault)
        if self.units_register is not None and reg(self.units_register) != self.units_expect:
            faults.append(
                f"units code {reg(self.units_register)} at register {self.units_register} "
                f"is not %LEL ({self.units_expect})"
            )
        return Decoded(lel, alarm, "; ".join(faults) if faults else None)

    @property
    def _width(self) -> int:
        return VALUE_TYPES[self.value_type]

    def _decode_value(self, words: list[int]) -> float | None:
        if self.word_order == "little":
            words = list(reversed(words))
        raw = b"".join(w.to_bytes(2, "big") for w in words)
        code = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
        value = float(struct.unpack(code[self.value_type], raw)[0])
        if not math.isfinite(value):
            return None
        return value * self.scale

    # -- encoding (emulators) ----------------------------------------------------------------

    def encode(
        self, lel: float, alarm: Level = Level.NORMAL, fault: bool = False
    ) -> dict[int, int]:
        """Registers a healthy (or faulty) detector of this model would hold for ``lel``."""
        raw_value = lel / self.scale
        code = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
        if self.value_type == "float32":
            raw = struct.pack(code["float32"], raw_value)
        else:
            bits = 8 * 2 * self._width
            signed = self.value_type.startswith("int")
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            raw = struct.pack(code[self.value_type], max(lo, min(hi, round(raw_value))))
        words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
        if self.word_order == "little":
            words.reverse()
        out = {self.value_register + i: w for i, w in enumerate(words)}
        for rule in self.status:
            out[rule.register] = _encode_status(rule, alarm, fault)
        if self.units_register is not None and self.units_expect is not None:
            out[self.units_register] = self.units_expect
        return out


def _decode_status(rule: StatusRule, value: int) -> tuple[Level, str | None]:
    if rule.kind == "code":
        if value in rule.normal:
            return Level.NORMAL, None
        if value in rule.low_alarm:
            return Level.LOW, None
        if value in rule.high_alarm:
            return Level.HIGH, None
        if value in rule.fault:
            return Level.NORMAL, f"detector fault code {value}"
        return Level.NORMAL, f"unknown status code {value} at register {rule.register}"
    if rule.kind == "bits":
        level = Level.NORMAL
        if rule.low_alarm_bit is not None and value >> rule.low_alarm_bit & 1:
            level = Level.LOW
        if rule.high_alarm_bit is not None and value >> rule.high_alarm_bit & 1:
            level = Level.HIGH
        if rule.fault_bit is not None and value >> rule.fault_bit & 1:
            return level, f"detector fault bit {rule.fault_bit} set at register {rule.register}"
        return level, None
    if rule.kind == "threshold":
        assert rule.fault_at_or_above is not None
        if value >= rule.fault_at_or_above:
            return Level.NORMAL, f"detector fault code {value} at register {rule.register}"
        return Level.NORMAL, None
    # any_bit_fault
    if value:
        return Level.NORMAL, f"detector fault bits 0x{value:04x} at register {rule.register}"
    return Level.NORMAL, None


def _encode_status(rule: StatusRule, alarm: Level, fault: bool) -> int:
    if rule.kind == "code":
        if fault:
            return rule.fault[0] if rule.fault else 0xFFFF
        pick = {Level.NORMAL: rule.normal, Level.LOW: rule.low_alarm, Level.HIGH: rule.high_alarm}
        codes = pick[alarm]
        return codes[0] if codes else 0
    if rule.kind == "bits":
        value = 0
        if alarm >= Level.LOW and rule.low_alarm_bit is not None:
            value |= 1 << rule.low_alarm_bit
        if alarm >= Level.HIGH and rule.high_alarm_bit is not None:
            value |= 1 << rule.high_alarm_bit
        if fault and rule.fault_bit is not None:
            value |= 1 << rule.fault_bit
        return value
    if rule.kind == "threshold":
        return (rule.fault_at_or_above or 1) if fault else 0
    return 1 if fault else 0


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def default_profiles_dir() -> Path:
    """The profiles shipped with the source tree (``config/profiles``)."""
    return Path(__file__).resolve().parent.parent / "config" / "profiles"


def load_profiles(directory: Path) -> dict[str, Profile]:
    """Every ``*.toml`` profile in ``directory``, by name. Raises ConfigError listing every
    problem in every file; a directory with no profiles is an error."""
    problems: list[Problem] = []
    profiles: dict[str, Profile] = {}
    files = sorted(directory.glob("*.toml")) if directory.is_dir() else []
    if not files:
        raise ConfigError([Problem(str(directory), "profiles", None, "no *.toml profiles here")])
    for path in files:
        try:
            profile = load_profile(path)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        if profile.name in profiles:
            problems.append(Problem(str(path), "name", profile.name, "a unique profile name"))
        profiles[profile.name] = profile
    if problems:
        raise ConfigError(problems)
    return profiles


def load_profile(path: Path) -> Profile:
    data = read_toml(path)
    return parse_profile(data, str(path))


def parse_profile(data: dict[str, Any], file: str) -> Profile:
    p = Checker(file)
    p.known_keys(data, "", TOP_KEYS)
    name = p.string(data, "name")
    conc = p.table(data, "concentration")
    p.known_keys(conc, "concentration", CONCENTRATION_KEYS)
    vtype = p.choice(conc, "concentration.type", VALUE_TYPES)
    statuses = data.get("status", [])
    rules: list[StatusRule] = []
    if not isinstance(statuses, list):
        p.bad("status", statuses, "an array of [[status]] tables")
        statuses = []
    for i, s in enumerate(statuses):
        key = f"status[{i}]"
        if not isinstance(s, dict):
            p.bad(key, s, "a table")
            continue
        kind = p.choice(s, f"{key}.kind", STATUS_KINDS)
        if s.get("kind") in STATUS_KEYS:
            p.known_keys(s, key, STATUS_KEYS[kind])
        rules.append(
            StatusRule(
                register=p.integer(s, f"{key}.register", 0, 65535),
                kind=kind,
                normal=p.codes(s, f"{key}.normal"),
                low_alarm=p.codes(s, f"{key}.low_alarm"),
                high_alarm=p.codes(s, f"{key}.high_alarm"),
                fault=p.codes(s, f"{key}.fault"),
                low_alarm_bit=p.integer(s, f"{key}.low_alarm_bit", 0, 15, required=False),
                high_alarm_bit=p.integer(s, f"{key}.high_alarm_bit", 0, 15, required=False),
                fault_bit=p.integer(s, f"{key}.fault_bit", 0, 15, required=False),
                fault_at_or_above=p.integer(
                    s, f"{key}.fault_at_or_above", 1, 65535, required=kind == "threshold"
                ),
            )
        )
    units = data.get("units")
    units_register = units_expect = None
    if units is not None:
        if isinstance(units, dict):
            p.known_keys(units, "units", UNITS_KEYS)
            units_register = p.integer(units, "units.register", 0, 65535)
            units_expect = p.integer(units, "units.expect", 0, 65535)
        else:
            p.bad("units", units, "a table with register and expect")
    profile = Profile(
        name=name,
        description=str(data.get("description", "")),
        function_code=p.integer(data, "function_code", 3, 4),
        default_address=p.integer(data, "default_address", 1, 247),
        default_baud=p.integer(data, "default_baud", 1200, 115200),
        default_parity=p.choice(data, "default_parity", PARITIES),
        default_stop_bits=p.integer(data, "default_stop_bits", 1, 2),
        range_lel=p.number(data, "range_lel", 1.0, 100.0),
        value_register=p.integer(conc, "concentration.register", 0, 65535),
        value_type=vtype,
        word_order=p.choice(conc, "concentration.word_order", ("big", "little"), default="big"),
        scale=p.number(conc, "concentration.scale", 1e-6, 1e6),
        status=tuple(rules),
        units_register=units_register,
        units_expect=units_expect,
        service_life_years=p.number(
            data, "service_life_years", 0.5, 20.0, default=SERVICE_LIFE_YEARS
        ),
        calibration_interval_days=p.integer(
            data, "calibration_interval_days", 30, 1825, default=CALIBRATION_INTERVAL_DAYS
        ),
    )
    if not p.problems:
        # Two fields in one register would decode each other's bits as their own.
        spans = [("concentration.register", profile.value_register, profile._width)]
        spans += [(f"status[{i}].register", r.register, 1) for i, r in enumerate(rules)]
        if profile.units_register is not None:
            spans.append(("units.register", profile.units_register, 1))
        for i, (key, first, width) in enumerate(spans):
            for other, o_first, o_width in spans[:i]:
                if first < o_first + o_width and o_first < first + width:
                    p.bad(key, first, f"a register not already used by {other}")
                    break
    if not p.problems and profile.block[1] > 125:
        p.bad("(registers)", profile.block[1], "one read of at most 125 registers (Modbus limit)")
    if p.problems:
        raise ConfigError(p.problems)
    return profile
