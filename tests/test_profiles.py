"""Detector profiles: encode/decode agree, faults are never read as gas-free values, and a bad
profile file is rejected with its key, value and allowed range."""

from __future__ import annotations

import copy
import math
import struct
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.model import Level
from gateway.profiles import (
    VALUE_TYPES,
    Profile,
    default_profiles_dir,
    load_profile,
    load_profiles,
    parse_profile,
)
from gateway.validate import ConfigError, Problem

SHIPPED = load_profiles(default_profiles_dir())
SHIPPED_NAMES = sorted(SHIPPED)
GENERIC = SHIPPED["generic-cn-kitchen"]
HONEYWELL = SHIPPED["honeywell-sensepoint-xcd"]
MSA = SHIPPED["msa-ultima-x"]


def block_of(profile: Profile, registers: dict[int, int]) -> list[int]:
    """What the poller would read: the profile's block, registers it does not hold read 0."""
    start, count = profile.block
    return [registers.get(a, 0) for a in range(start, start + count)]


def with_registers(profile: Profile, changes: dict[int, int], lel: float = 10.0) -> list[int]:
    regs = profile.encode(lel)
    regs.update(changes)
    return block_of(profile, regs)


def float_words(value: float) -> tuple[int, int]:
    raw = struct.pack(">f", value)
    return int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")


def test_every_shipped_profile_loads() -> None:
    assert SHIPPED_NAMES == ["generic-cn-kitchen", "honeywell-sensepoint-xcd", "msa-ultima-x"]
    assert (GENERIC.default_baud, GENERIC.default_parity) == (9600, "N")
    assert (HONEYWELL.default_baud, HONEYWELL.default_parity) == (19200, "E")
    assert (HONEYWELL.value_register, HONEYWELL.units_register) == (2, 10)
    assert MSA.value_register == 207


# -- round trip ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED_NAMES)
@settings(max_examples=150, deadline=None)
@given(
    lel=st.floats(0.0, 100.0, allow_nan=False),
    alarm=st.sampled_from(list(Level)),
    fault=st.booleans(),
)
def test_encode_then_decode_round_trips(name: str, lel: float, alarm: Level, fault: bool) -> None:
    profile = SHIPPED[name]
    registers = profile.encode(lel, alarm, fault)
    start, count = profile.block
    assert set(registers) <= set(range(start, start + count))
    decoded = profile.decode(block_of(profile, registers))
    assert decoded.lel is not None
    if profile.value_type == "float32":
        assert decoded.lel == pytest.approx(lel, rel=1e-6, abs=1e-6)
    else:
        assert abs(decoded.lel - lel) <= profile.scale / 2 + 1e-9
    if fault:
        assert decoded.fault is not None
    else:
        assert decoded.fault is None
        assert decoded.own_alarm == alarm


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_decode_of_a_healthy_detector_at_zero_is_zero_and_normal(name: str) -> None:
    profile = SHIPPED[name]
    decoded = profile.decode(block_of(profile, profile.encode(0.0)))
    assert (decoded.lel, decoded.own_alarm, decoded.fault) == (0.0, Level.NORMAL, None)


def test_generic_profile_reads_int16_tenths_of_lel() -> None:
    decoded = GENERIC.decode([253, 1])
    assert decoded.lel == pytest.approx(25.3)
    assert decoded.own_alarm == Level.LOW
    assert decoded.fault is None
    assert GENERIC.decode([0xFFF6, 0]).lel == pytest.approx(-1.0)  # int16 is signed


# -- word order ----------------------------------------------------------------------------------


def profile_dict(**changes: Any) -> dict[str, Any]:
    """A valid float32 profile as parsed TOML, with top-level or concentration changes."""
    data: dict[str, Any] = {
        "name": "test-float",
        "function_code": 3,
        "default_address": 1,
        "default_baud": 9600,
        "default_parity": "N",
        "default_stop_bits": 1,
        "range_lel": 100.0,
        "concentration": {"register": 0, "type": "float32", "word_order": "big", "scale": 1.0},
        "status": [{"register": 2, "kind": "bits", "low_alarm_bit": 0, "fault_bit": 7}],
    }
    for key, value in changes.items():
        if key in data["concentration"] or key == "concentration_extra":
            if key == "concentration_extra":
                data["concentration"].update(value)
            else:
                data["concentration"][key] = value
        else:
            data[key] = value
    return data


def test_big_endian_word_order_puts_the_high_word_first() -> None:
    big = parse_profile(profile_dict(), "big.toml")
    hi, lo = float_words(12.5)
    assert (hi, lo) == (0x4148, 0x0000)
    assert big.encode(12.5)[0] == hi and big.encode(12.5)[1] == lo
    assert big.decode([hi, lo, 0]).lel == 12.5


def test_little_endian_word_order_puts_the_low_word_first() -> None:
    little = parse_profile(profile_dict(word_order="little"), "little.toml")
    hi, lo = float_words(12.5)
    assert little.encode(12.5)[0] == lo and little.encode(12.5)[1] == hi
    assert little.decode([lo, hi, 0]).lel == 12.5
    # The same registers read with the wrong word order give a different value.
    big = parse_profile(profile_dict(), "big.toml")
    assert big.decode([lo, hi, 0]).lel != 12.5


def test_word_order_defaults_to_big_endian() -> None:
    data = profile_dict()
    del data["concentration"]["word_order"]
    assert parse_profile(data, "default.toml").word_order == "big"


@pytest.mark.parametrize("vtype", sorted(VALUE_TYPES))
@pytest.mark.parametrize("order", ["big", "little"])
def test_every_value_type_round_trips_in_both_word_orders(vtype: str, order: str) -> None:
    profile = parse_profile(
        profile_dict(type=vtype, word_order=order, scale=0.1, register=0), f"{vtype}.toml"
    )
    regs = profile.encode(42.3)
    decoded = profile.decode(block_of(profile, regs))
    assert decoded.lel == pytest.approx(42.3, abs=0.05)
    assert decoded.fault is None


def test_int32_little_word_order_decodes_explicit_registers() -> None:
    profile = parse_profile(
        profile_dict(type="int32", word_order="little", scale=0.001), "int32.toml"
    )
    # 70000 = 0x0001_1170: low word 0x1170 first, then high word 0x0001.
    assert profile.decode([0x1170, 0x0001, 0]).lel == pytest.approx(70.0)


# -- faults are never values ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_or_infinite_float_gives_no_value_and_a_fault(value: float) -> None:
    hi, lo = float_words(value)
    decoded = HONEYWELL.decode(with_registers(HONEYWELL, {2: hi, 3: lo}))
    assert decoded.lel is None
    assert decoded.fault is not None and "not a number" in decoded.fault


def test_unknown_status_code_is_a_fault() -> None:
    decoded = GENERIC.decode([100, 42])
    assert decoded.fault == "unknown status code 42 at register 1"
    assert decoded.lel == pytest.approx(10.0)


@pytest.mark.parametrize("code", [3, 9])
def test_listed_fault_code_is_a_fault(code: int) -> None:
    assert GENERIC.decode([0, code]).fault == f"detector fault code {code}"


def test_honeywell_fault_bit_is_a_fault() -> None:
    decoded = HONEYWELL.decode(with_registers(HONEYWELL, {5: 1 << 5}))
    assert decoded.fault == "detector fault bit 5 set at register 5"


def test_honeywell_fault_code_at_or_above_1000_is_a_fault_but_a_warning_is_not() -> None:
    assert HONEYWELL.decode(with_registers(HONEYWELL, {4: 999})).fault is None
    assert HONEYWELL.decode(with_registers(HONEYWELL, {4: 1000})).fault == (
        "detector fault code 1000 at register 4"
    )


def test_msa_fault_bits_are_faults() -> None:
    assert MSA.decode(with_registers(MSA, {201: 1})).fault is not None
    assert MSA.decode(with_registers(MSA, {202: 0x0100})).fault == (
        "detector fault bits 0x0100 at register 202"
    )


def test_alarm_bits_give_the_detectors_own_alarm_level() -> None:
    assert HONEYWELL.decode(with_registers(HONEYWELL, {5: 0b01})).own_alarm == Level.LOW
    assert HONEYWELL.decode(with_registers(HONEYWELL, {5: 0b11})).own_alarm == Level.HIGH
    assert MSA.decode(with_registers(MSA, {201: 0b100})).own_alarm == Level.HIGH


def test_units_register_that_is_not_lel_is_a_fault() -> None:
    decoded = HONEYWELL.decode(with_registers(HONEYWELL, {10: 4}))
    assert decoded.fault == "units code 4 at register 10 is not %LEL (5)"


def test_several_faults_are_all_named() -> None:
    hi, lo = float_words(math.nan)
    decoded = HONEYWELL.decode(with_registers(HONEYWELL, {2: hi, 3: lo, 5: 1 << 5, 10: 0}))
    assert decoded.fault is not None
    assert decoded.fault.count(";") == 2


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_a_short_or_long_read_is_a_fault_not_a_value(name: str) -> None:
    profile = SHIPPED[name]
    good = block_of(profile, profile.encode(5.0))
    for regs in (good[:-1], [*good, 0]):
        decoded = profile.decode(regs)
        assert decoded.lel is None
        assert decoded.fault == f"expected {len(good)} registers, got {len(regs)}"


# -- the block read ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_block_covers_every_register_the_profile_uses(name: str) -> None:
    profile = SHIPPED[name]
    start, count = profile.block
    inside = set(range(start, start + count))
    used = {profile.value_register + i for i in range(VALUE_TYPES[profile.value_type])}
    used |= {rule.register for rule in profile.status}
    if profile.units_register is not None:
        used.add(profile.units_register)
    assert used <= inside
    assert min(used) == start and max(used) == start + count - 1  # and nothing more
    assert 1 <= count <= 125


def test_block_of_honeywell_spans_value_to_units() -> None:
    assert HONEYWELL.block == (2, 9)
    assert GENERIC.block == (0, 2)
    assert MSA.block == (201, 8)


# -- bad profiles --------------------------------------------------------------------------------


def problems_of(data: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse_profile(data, "bad.toml")
    return info.value.problems


def only_problem(data: dict[str, Any]) -> Problem:
    problems = problems_of(data)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_valid_profile_dict_parses() -> None:
    assert parse_profile(profile_dict(), "ok.toml").name == "test-float"


@pytest.mark.parametrize(
    ("change", "key", "value", "allowed"),
    [
        ({"function_code": 6}, "function_code", 6, "a whole number from 3 to 4"),
        ({"default_address": 0}, "default_address", 0, "a whole number from 1 to 247"),
        ({"default_parity": "M"}, "default_parity", "M", "one of 'N', 'E', 'O'"),
        ({"default_stop_bits": 3}, "default_stop_bits", 3, "a whole number from 1 to 2"),
        ({"range_lel": 0}, "range_lel", 0, "a number from 1 to 100"),
        ({"range_lel": 101}, "range_lel", 101, "a number from 1 to 100"),
        ({"type": "float64"}, "concentration.type", "float64", "one of 'int16', 'uint16', "),
        ({"word_order": "middle"}, "concentration.word_order", "middle", "one of 'big', "),
        ({"scale": 0}, "concentration.scale", 0, "a number from 1e-06 to 1e+06"),
        ({"register": 70000}, "concentration.register", 70000, "a whole number from 0 to 65535"),
        ({"name": ""}, "name", "", "a non-empty string"),
        ({"status": {"register": 1}}, "status", {"register": 1}, "an array of [[status]] tables"),
        ({"units": 5}, "units", 5, "a table with register and expect"),
    ],
)
def test_bad_profile_value_is_rejected_with_key_value_and_range(
    change: dict[str, Any], key: str, value: object, allowed: str
) -> None:
    p = only_problem(profile_dict(**change))
    assert (p.file, p.key, p.value) == ("bad.toml", key, value)
    assert p.allowed.startswith(allowed), p.allowed


@pytest.mark.parametrize(
    ("rule", "key", "value"),
    [
        ({"register": 2, "kind": "colour"}, "status[0].kind", "colour"),
        ({"register": 2, "kind": "bits", "fault_bit": 16}, "status[0].fault_bit", 16),
        ({"register": 2, "kind": "threshold"}, "status[0].fault_at_or_above", None),
        ({"register": 2, "kind": "code", "fault": [70000]}, "status[0].fault", [70000]),
        ({"register": 2, "kind": "code", "normal": "0"}, "status[0].normal", "0"),
        ({"kind": "any_bit_fault"}, "status[0].register", None),
    ],
)
def test_bad_status_rule_is_rejected(rule: dict[str, Any], key: str, value: object) -> None:
    p = only_problem(profile_dict(status=[rule]))
    assert (p.key, p.value) == (key, value)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"word_ordr": "little"}, "word_ordr"),
        ({"concentration_extra": {"word_ordr": "little"}}, "concentration.word_ordr"),
        ({"status": [{"register": 2, "kind": "bits", "fault_bt": 7}]}, "status[0].fault_bt"),
        ({"units": {"register": 3, "expect": 5, "expected": 5}}, "units.expected"),
    ],
)
def test_misspelt_profile_key_is_rejected(change: dict[str, Any], key: str) -> None:
    p = only_problem(profile_dict(**change))
    assert p.key == key
    assert p.allowed.startswith("not a known key; allowed: ")


def test_status_key_of_another_kind_is_rejected_not_ignored() -> None:
    # Fault codes given to a "bits" rule would never be looked at: a fault would read as normal.
    p = only_problem(profile_dict(status=[{"register": 2, "kind": "bits", "fault": [3]}]))
    assert (p.key, p.value) == ("status[0].fault", [3])
    assert "low_alarm_bit, high_alarm_bit, fault_bit" in p.allowed


def test_registers_used_twice_are_rejected() -> None:
    # The status register inside the float's second word.
    p = only_problem(profile_dict(status=[{"register": 1, "kind": "any_bit_fault"}]))
    assert (p.key, p.value) == ("status[0].register", 1)
    assert p.allowed == "a register not already used by concentration.register"


def test_block_longer_than_one_modbus_read_is_rejected() -> None:
    p = only_problem(profile_dict(status=[{"register": 200, "kind": "any_bit_fault"}]))
    assert (p.key, p.value) == ("(registers)", 201)
    assert "125" in p.allowed


def test_every_problem_of_a_profile_is_reported_at_once() -> None:
    data = profile_dict(function_code=16, range_lel=500, type="bcd", word_ordr="big")
    problems = problems_of(data)
    assert {p.key for p in problems} == {
        "function_code",
        "range_lel",
        "concentration.type",
        "word_ordr",
    }


# -- profile files ---------------------------------------------------------------------------------


def write_profile(directory: Path, name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` as TOML (only the shapes profile_dict produces)."""

    def value(v: object) -> str:
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    tables = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((f"[{k}]", v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            tables += [(f"[[{k}]]", item) for item in v]
        else:
            lines.append(f"{k} = {value(v)}")
    for header, table in tables:
        lines.append(header)
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
    path = directory / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert tomllib.loads(path.read_text(encoding="utf-8")) == data
    return path


def test_profile_file_round_trips_through_toml(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "ok.toml", profile_dict())
    assert load_profile(path) == parse_profile(profile_dict(), "x")


def test_bad_profile_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "bad.toml", profile_dict(range_lel=0))
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    [p] = info.value.problems
    assert (p.file, p.key, p.value) == (str(path), "range_lel", 0)
    assert str(path) in str(info.value)


def test_malformed_profile_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "broken\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    [p] = info.value.problems
    assert (p.file, p.key) == (str(path), "(file)")
    assert p.allowed.startswith("a readable TOML file")


def test_profiles_dir_reports_problems_of_every_file(tmp_path: Path) -> None:
    write_profile(tmp_path, "a.toml", profile_dict(function_code=9))
    write_profile(tmp_path, "b.toml", profile_dict(name="other", default_stop_bits=0))
    write_profile(tmp_path, "c.toml", profile_dict())
    with pytest.raises(ConfigError) as info:
        load_profiles(tmp_path)
    assert {(Path(p.file).name, p.key) for p in info.value.problems} == {
        ("a.toml", "function_code"),
        ("b.toml", "default_stop_bits"),
    }


def test_two_profiles_with_one_name_are_rejected(tmp_path: Path) -> None:
    write_profile(tmp_path, "a.toml", profile_dict())
    second = write_profile(tmp_path, "b.toml", copy.deepcopy(profile_dict()))
    with pytest.raises(ConfigError) as info:
        load_profiles(tmp_path)
    [p] = info.value.problems
    assert (p.file, p.key, p.value) == (str(second), "name", "test-float")


def test_empty_or_missing_profiles_dir_is_rejected(tmp_path: Path) -> None:
    for directory in (tmp_path, tmp_path / "missing"):
        with pytest.raises(ConfigError) as info:
            load_profiles(directory)
        [p] = info.value.problems
        assert (p.file, p.allowed) == (str(directory), "no *.toml profiles here")
