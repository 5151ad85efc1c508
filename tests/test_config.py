"""The config loader: every rule in gateway/config.py's docstring rejects a bad value with a
Problem naming the key, the value and the allowed range, and every problem is reported at once.

Each test starts from the shipped example (config/gasguard.example.toml), changes one thing and
checks the exact Problem. The example itself is covered in tests/test_example_config.py.
"""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import OUTPUT_PINS, Config, load_config, parse_config
from gateway.validate import ConfigError, Problem

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "gasguard.example.toml"
EXAMPLE_DATA: dict[str, Any] = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


def example() -> dict[str, Any]:
    """A fresh, mutable copy of the example configuration as parsed TOML."""
    return copy.deepcopy(EXAMPLE_DATA)


def problems_of(data: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, EXAMPLE)
    assert info.value.problems, "a ConfigError must carry its problems"
    return info.value.problems


def only_problem(data: dict[str, Any]) -> Problem:
    problems = problems_of(data)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def problem_at(problems: list[Problem], key: str) -> Problem:
    found = [p for p in problems if p.key == key]
    assert len(found) == 1, (key, [str(p) for p in problems])
    return found[0]


def test_example_config_parses_unchanged() -> None:
    assert isinstance(parse_config(example(), EXAMPLE), Config)


# -- set points within GB 15322.1 ----------------------------------------------------------------


@pytest.mark.parametrize("low", [0, 26, -1, 0.5, 25.5])
def test_low_set_point_outside_1_to_25_lel_is_rejected(low: float) -> None:
    data = example()
    data["detector"][0]["low_lel"] = low
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == ("detector[0].low_lel", low, "a number from 1 to 25")
    assert p.file == str(EXAMPLE)


def test_high_set_point_above_50_lel_is_rejected() -> None:
    data = example()
    data["detector"][1]["high_lel"] = 51
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == ("detector[1].high_lel", 51, "a number from 1 to 50")


@pytest.mark.parametrize(("low", "high"), [(25, 25), (20, 15), (10, 10.0)])
def test_low_set_point_not_below_high_is_rejected(low: float, high: float) -> None:
    data = example()
    data["detector"][2]["low_lel"] = low
    data["detector"][2]["high_lel"] = high
    p = only_problem(data)
    assert p.key == "detector[2].high_lel"
    assert p.value == high
    assert p.allowed == f"above low_lel ({low:g} %LEL)"


@pytest.mark.parametrize("value", ["20", True, float("nan"), None])
def test_set_point_that_is_not_a_number_is_rejected(value: object) -> None:
    data = example()
    if value is None:
        del data["detector"][0]["low_lel"]
    else:
        data["detector"][0]["low_lel"] = value
    p = only_problem(data)
    assert p.key == "detector[0].low_lel"
    assert p.allowed == "a number from 1 to 25"


# -- timings (GB 16808) --------------------------------------------------------------------------


def test_comm_fault_timeout_above_100_s_is_rejected() -> None:
    data = example()
    data["timings"]["comm_fault_timeout_s"] = 101
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == (
        "timings.comm_fault_timeout_s",
        101,
        "a number from 1 to 100",
    )


def test_comm_fault_timeout_shorter_than_two_poll_periods_is_rejected() -> None:
    data = example()
    data["timings"]["poll_period_s"] = 2.0
    data["timings"]["comm_fault_timeout_s"] = 3.0
    p = only_problem(data)
    assert (p.key, p.value) == ("timings.comm_fault_timeout_s", 3.0)
    assert p.allowed == "at least two poll periods (4 s)"


@pytest.mark.parametrize("count", [1, 6, 0])
def test_confirm_count_outside_2_to_5_is_rejected(count: int) -> None:
    data = example()
    data["timings"]["confirm_count"] = count
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == (
        "timings.confirm_count",
        count,
        "a whole number from 2 to 5",
    )


def test_confirmation_taking_longer_than_10_s_is_rejected() -> None:
    data = example()
    data["timings"]["poll_period_s"] = 4.0
    data["timings"]["confirm_count"] = 3
    data["timings"]["comm_fault_timeout_s"] = 20
    p = only_problem(data)
    assert (p.key, p.value) == ("timings.poll_period_s", 4.0)
    assert p.allowed.startswith("at most 3.33333 s, so that 3 confirming readings fit")


def test_timings_default_to_the_safe_values() -> None:
    data = example()
    del data["timings"]
    cfg = parse_config(data, EXAMPLE)
    assert cfg.timings.comm_fault_timeout_s == 10.0
    assert cfg.timings.confirm_count == 2
    assert cfg.plan().confirm_count == 2


# -- GPIO pins -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pin", [4, 14, 15, 8, 28, -1])
def test_valve_output_pin_outside_gpio_9_to_27_or_on_the_uart_is_rejected(pin: int) -> None:
    data = example()
    data["valve"][0]["output_pin"] = pin
    p = only_problem(data)
    assert (p.key, p.value) == ("valve[0].output_pin", pin)
    assert p.allowed == "a BCM GPIO number, one of " + ", ".join(map(str, OUTPUT_PINS))
    assert "14" not in p.allowed.split(", ") and "4" not in p.allowed.split(", ")


@pytest.mark.parametrize("key", ["sounder_pin", "red_pin", "yellow_pin", "green_pin"])
def test_annunciator_output_on_a_pulled_up_pin_is_rejected(key: str) -> None:
    data = example()
    data["annunciator"][key] = 4
    p = only_problem(data)
    assert (p.key, p.value) == (f"annunciator.{key}", 4)


def test_feedback_input_on_the_uart_is_rejected() -> None:
    data = example()
    data["valve"][0]["feedback_pin"] = 14
    p = only_problem(data)
    assert (p.key, p.value) == ("valve[0].feedback_pin", 14)


def test_pin_used_twice_is_rejected_naming_both_users() -> None:
    data = example()
    data["annunciator"]["sounder_pin"] = data["valve"][0]["output_pin"]  # 17
    p = only_problem(data)
    assert (p.key, p.value) == ("valve[0].output_pin", 17)
    assert p.allowed == "a GPIO not already used (by annunciator.sounder_pin)"


def test_input_pin_shared_with_an_output_is_rejected() -> None:
    data = example()
    data["valve"][0]["feedback_pin"] = data["annunciator"]["red_pin"]
    p = only_problem(data)
    assert (p.key, p.value) == ("valve[0].feedback_pin", 23)
    assert "annunciator.red_pin" in p.allowed


# -- names, references, zones --------------------------------------------------------------------


def test_duplicate_detector_name_is_rejected() -> None:
    data = example()
    data["detector"][1]["name"] = "wok-1"
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == (
        "detector[1].name",
        "wok-1",
        "a name not used by another detector",
    )


def test_duplicate_valve_name_is_rejected() -> None:
    data = example()
    second = copy.deepcopy(data["valve"][0])
    second.update(output_pin=18, feedback_pin=26)
    data["valve"].append(second)
    p = only_problem(data)
    assert (p.key, p.value) == ("valve[1].name", "main-inlet")
    assert p.allowed == "a name not used by another valve"


def test_duplicate_bus_name_is_rejected() -> None:
    data = example()
    second = copy.deepcopy(data["bus"][0])
    second["port"] = "/dev/ttyUSB0"
    data["bus"].append(second)
    p = only_problem(data)
    assert (p.key, p.value) == ("bus[1].name", "bus0")


def test_problem_keys_count_every_detector_even_ones_that_could_not_be_read() -> None:
    # detector[0] has an unknown profile; the duplicate name is detector[2]'s, not "[1]".
    data = example()
    data["detector"][0]["profile"] = "acme-9000"
    data["detector"][2]["name"] = "wok-2"
    data["detector"][2]["address"] = 2
    problems = problems_of(data)
    assert problem_at(problems, "detector[0].profile").value == "acme-9000"
    assert problem_at(problems, "detector[2].name").value == "wok-2"
    assert problem_at(problems, "detector[2].address").value == 2


def test_duplicate_address_on_one_bus_is_rejected() -> None:
    data = example()
    data["detector"][2]["address"] = 1
    p = only_problem(data)
    assert (p.key, p.value) == ("detector[2].address", 1)
    assert p.allowed == "an address not already used on bus 'bus0' (by 'wok-1')"


def test_rejected_address_is_reported_once_not_also_as_a_duplicate() -> None:
    data = example()
    data["detector"][2]["address"] = 0
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == ("detector[2].address", 0, "a whole number from 1 to 247")


def test_rejected_pins_are_reported_once_not_also_as_duplicates() -> None:
    data = example()
    data["valve"][0]["output_pin"] = 14
    data["annunciator"]["sounder_pin"] = 15
    problems = problems_of(data)
    assert {(p.key, p.value) for p in problems} == {
        ("valve[0].output_pin", 14),
        ("annunciator.sounder_pin", 15),
    }


@pytest.mark.parametrize("name", ["", "wok 1", "-wok", "x" * 33, "灶台"])
def test_detector_name_outside_the_name_rule_is_rejected(name: str) -> None:
    data = example()
    data["detector"][0]["name"] = name
    p = only_problem(data)
    assert (p.key, p.value) == ("detector[0].name", name)


def test_unknown_profile_is_rejected_listing_the_known_ones() -> None:
    data = example()
    data["detector"][1]["profile"] = "acme-9000"
    p = only_problem(data)
    assert (p.key, p.value) == ("detector[1].profile", "acme-9000")
    assert p.allowed == "one of generic-cn-kitchen, honeywell-sensepoint-xcd, msa-ultima-x"


def test_unknown_bus_is_rejected() -> None:
    data = example()
    data["detector"][0]["bus"] = "bus9"
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == ("detector[0].bus", "bus9", "the name of a [[bus]]: bus0")


def test_zone_without_a_valve_is_rejected() -> None:
    data = example()
    data["detector"][2]["zone"] = "bakery"
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == (
        "detector[2].zone",
        "bakery",
        "a zone listed in some valve's zones",
    )


def test_valve_zone_without_a_detector_is_rejected() -> None:
    data = example()
    data["valve"][0]["zones"] = ["hot-kitchen", "cold-room"]
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == (
        "valve[0].zones",
        "cold-room",
        "zones that have at least one detector",
    )


def test_config_without_detectors_or_valves_is_rejected() -> None:
    data = example()
    data["detector"] = []
    data["valve"] = []
    problems = problems_of(data)
    assert problem_at(problems, "detector").allowed == "at least one [[detector]] table"
    assert problem_at(problems, "valve").allowed == "at least one [[valve]] table"


# -- valves --------------------------------------------------------------------------------------


def test_trip_to_close_valve_without_pulse_ms_is_rejected() -> None:
    data = example()
    data["valve"][0]["kind"] = "trip-to-close"
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == (
        "valve[0].pulse_ms",
        None,
        "a whole number from 10 to 5000",
    )


def test_trip_to_close_valve_with_pulse_ms_is_accepted() -> None:
    data = example()
    data["valve"][0].update(kind="trip-to-close", pulse_ms=200)
    cfg = parse_config(data, EXAMPLE)
    assert (cfg.valves[0].kind, cfg.valves[0].pulse_ms) == ("trip-to-close", 200)


def test_pulse_ms_on_a_held_open_valve_is_rejected() -> None:
    data = example()
    data["valve"][0]["pulse_ms"] = 200
    p = only_problem(data)
    assert (p.key, p.value, p.allowed) == (
        "valve[0].pulse_ms",
        200,
        "only for kind = 'trip-to-close'",
    )


def test_unknown_valve_kind_is_rejected() -> None:
    data = example()
    data["valve"][0]["kind"] = "normally-open"
    p = only_problem(data)
    assert (p.key, p.value) == ("valve[0].kind", "normally-open")
    assert p.allowed == "one of 'held-open', 'trip-to-close'"


def test_valve_kind_defaults_to_held_open() -> None:
    data = example()
    del data["valve"][0]["kind"]
    assert parse_config(data, EXAMPLE).valves[0].kind == "held-open"


# -- unknown keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "typo", "expected_key"),
    [
        ((), "timing", "timing"),
        (("site",), "adress", "site.adress"),
        (("timings",), "confirm_cont", "timings.confirm_cont"),
        (("bus", 0), "parity_", "bus[0].parity_"),
        (("valve", 0), "feedback_pn", "valve[0].feedback_pn"),
        (("annunciator",), "reset_hold", "annunciator.reset_hold"),
        (("storage",), "datadir", "storage.datadir"),
    ],
)
def test_misspelt_key_is_rejected(
    where: tuple[str | int, ...], typo: str, expected_key: str
) -> None:
    data = example()
    table: Any = data
    for part in where:
        table = table[part]
    table[typo] = 1
    p = only_problem(data)
    assert (p.key, p.value) == (expected_key, 1)
    assert p.allowed.startswith("not a known key; allowed: ")


def test_misspelt_set_point_reports_the_typo_and_the_missing_key() -> None:
    data = example()
    data["detector"][0]["low_lell"] = data["detector"][0].pop("low_lel")
    problems = problems_of(data)
    assert problem_at(problems, "detector[0].low_lell").value == 20
    assert problem_at(problems, "detector[0].low_lel").value is None
    assert len(problems) == 2


# -- files ---------------------------------------------------------------------------------------


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [p] = info.value.problems
    assert p.file == str(path)
    assert p.key == "(file)"
    assert p.allowed.startswith("a readable TOML file")


def test_malformed_toml_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "gasguard.toml"
    text = EXAMPLE.read_text(encoding="utf-8").replace('name = "wok-2"', 'name = "wok-2', 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [p] = info.value.problems
    assert p.file == str(path)
    assert "line" in p.allowed
    assert str(path) in str(info.value)


def test_config_file_with_a_bad_value_is_rejected_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "gasguard.toml"
    text = EXAMPLE.read_text(encoding="utf-8").replace("low_lel = 20 ", "low_lel = 30 ", 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [p] = info.value.problems
    assert (p.file, p.key, p.value) == (str(path), "detector[0].low_lel", 30)
    assert str(p) == f"{path}: detector[0].low_lel = 30: a number from 1 to 25"


def test_relative_paths_are_resolved_beside_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "gasguard.toml"
    text = EXAMPLE.read_text(encoding="utf-8").replace('"/var/lib/gasguard"', '"state"', 1)
    path.write_text(text, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.data_dir == tmp_path / "state"
    assert cfg.control_socket == tmp_path / "state" / "control.sock"


def test_a_bad_profile_in_the_profiles_dir_is_reported_with_the_config(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for shipped in (ROOT / "config" / "profiles").glob("*.toml"):
        (profiles / shipped.name).write_text(shipped.read_text(encoding="utf-8"))
    broken = profiles / "broken.toml"
    broken.write_text('name = "broken"\nfunction_code = 16\n', encoding="utf-8")
    path = tmp_path / "gasguard.toml"
    text = EXAMPLE.read_text(encoding="utf-8").replace("confirm_count = 2 ", "confirm_count = 1 ")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert problem_at(problems, "timings.confirm_count").file == str(path)
    fc = problem_at(problems, "function_code")
    assert (fc.file, fc.value, fc.allowed) == (str(broken), 16, "a whole number from 3 to 4")


# -- all problems at once ------------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    data = example()
    data["detector"][0]["low_lel"] = 0
    data["detector"][1]["high_lel"] = 51
    data["detector"][2]["profile"] = "acme-9000"
    data["timings"]["comm_fault_timeout_s"] = 101
    data["timings"]["confirm_count"] = 1
    data["valve"][0]["output_pin"] = 14
    data["valve"][0]["zones"] = ["hot-kitchen", "cold-room"]
    data["annunciator"]["silence_pin"] = 15
    data["bus"][0]["baud"] = 9601
    data["site"]["adress"] = "typo"
    problems = problems_of(data)
    expected = {
        "detector[0].low_lel": 0,
        "detector[1].high_lel": 51,
        "detector[2].profile": "acme-9000",
        "timings.comm_fault_timeout_s": 101,
        "timings.confirm_count": 1,
        "valve[0].output_pin": 14,
        "valve[0].zones": "cold-room",
        "annunciator.silence_pin": 15,
        "bus[0].baud": 9601,
        "site.adress": "typo",
    }
    assert {p.key: p.value for p in problems} == expected
    assert len(problems) == len(expected)
    message = str(ConfigError(problems))
    for key in expected:
        assert key in message


def test_reply_timeout_shorter_than_the_exchange_on_the_wire_is_rejected(tmp_path: Path) -> None:
    # The example's detectors read 2 registers: 8 + 9 bytes and a t3.5 at 1200 baud 8N1 take
    # about 0.17 s, more than a 0.1 s reply timeout: one problem per detector on that bus.
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace("baud = 9600", "baud = 1200").replace("timeout_s = 0.2", "timeout_s = 0.1")
    path = tmp_path / "slow.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    keys = [p.key for p in e.value.problems]
    assert keys == ["bus[0].timeout_s"] * 3
    assert "needs" in e.value.problems[0].allowed and "1200 baud" in e.value.problems[0].allowed


# -- hostile files: one clear line each, never a crash or a hang ---------------------------------


def only_file_problem(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert len(e.value.problems) == 1, e.value.problems
    p = e.value.problems[0]
    assert p.file == str(path)
    return p.allowed


def test_deeply_nested_toml_is_one_clear_problem(tmp_path: Path) -> None:
    path = tmp_path / "nested.toml"
    path.write_text("x = " + "[" * 500 + "]" * 500 + "\n")
    assert "nested at most 16 levels" in only_file_problem(path)
    path.write_text("x = " + "{a = " * 40 + "1" + "}" * 40 + "\n")
    assert "at most 16 levels" in only_file_problem(path)


def test_a_device_or_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    link = tmp_path / "zero.toml"
    link.symlink_to("/dev/zero")
    assert "a regular file" in only_file_problem(link)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # nobody writes to it: opening it must not wait
    assert "a regular file" in only_file_problem(fifo)


def test_oversized_files_and_texts_are_refused(tmp_path: Path) -> None:
    text = (ROOT / "config" / "gasguard.example.toml").read_text()
    big = tmp_path / "big.toml"
    big.write_text(text.replace('name = "', 'name = "' + "x" * 50_000_000, 1))
    assert "at most 1048576 bytes" in only_file_problem(big)
    long_name = tmp_path / "long.toml"
    long_name.write_text(text.replace('name = "', 'name = "' + "x" * 5000, 1))
    with pytest.raises(ConfigError) as e:
        load_config(long_name)
    assert any("at most 4096 characters" in p.allowed for p in e.value.problems)


def test_display_names_in_any_language_are_kept_for_detectors_and_valves() -> None:
    data = example()
    data["detector"][0]["label"] = "炒锅上方 wok 1"
    data["valve"][0]["label"] = "总阀"
    cfg = parse_config(data, EXAMPLE)
    assert cfg.detectors[0].label == "炒锅上方 wok 1"
    assert cfg.detectors[1].label == ""  # none given: people see the name
    assert cfg.valves[0].label == "总阀"


@pytest.mark.parametrize("label", ["", "   ", "a\nb", "x" * 41, 7])
def test_a_display_name_that_is_empty_too_long_or_has_control_characters_is_rejected(
    label: object,
) -> None:
    data = example()
    data["detector"][0]["label"] = label
    p = only_problem(data)
    assert (p.key, p.value) == ("detector[0].label", label)
    assert p.allowed == "1-40 characters in any language, no control characters"


# -- fans and power contacts -------------------------------------------------------------------


def test_a_fan_over_a_zone_without_detectors_is_rejected() -> None:
    data = example()
    data["fan"][0]["zones"] = ["pastry"]
    p = only_problem(data)
    assert (p.key, p.value) == ("fan[0].zones", "pastry")
    assert p.allowed == "zones that have at least one detector"


def test_a_fan_run_on_beyond_an_hour_is_rejected_naming_the_range() -> None:
    data = example()
    data["fan"][0]["run_on_s"] = 7200
    p = only_problem(data)
    assert (p.key, p.value) == ("fan[0].run_on_s", 7200)
    assert "3600" in p.allowed


def test_a_power_contact_on_a_used_pin_is_rejected() -> None:
    data = example()
    data["power"]["battery_low_pin"] = 13  # the fan's run contact
    p = only_problem(data)
    assert (p.key, p.value) == ("power.battery_low_pin", 13)
    assert "fan[0].feedback_pin" in p.allowed


def test_a_power_level_must_be_high_or_low() -> None:
    data = example()
    data["power"]["mains_failed_level"] = "off"
    p = only_problem(data)
    assert (p.key, p.value) == ("power.mains_failed_level", "off")


def test_a_site_without_fans_or_power_contacts_is_valid() -> None:
    data = example()
    del data["fan"], data["power"]
    cfg = parse_config(data, EXAMPLE)
    assert cfg.fans == () and cfg.plan().fans == ()
    assert cfg.plan().power.mains is False and cfg.plan().power.battery is False


# -- two-detector confirmation ------------------------------------------------------------------


def test_two_detector_confirmation_is_per_zone_and_off_by_default() -> None:
    assert parse_config(example(), EXAMPLE).two_detector_zones == frozenset()
    data = example()
    data["zone"] = [{"name": "hot-kitchen", "two_detector_confirmation": True}]
    cfg = parse_config(data, EXAMPLE)
    assert cfg.plan().two_detector_zones == frozenset({"hot-kitchen"})


def test_two_detector_confirmation_in_a_zone_of_one_detector_is_refused_saying_why() -> None:
    data = example()
    for det in data["detector"][1:]:
        det["zone"] = "pastry"
    data["valve"][0]["zones"] = ["hot-kitchen", "pastry"]
    data["fan"][0]["zones"] = ["hot-kitchen"]
    data["zone"] = [{"name": "hot-kitchen", "two_detector_confirmation": True}]
    p = only_problem(data)
    assert p.key == "zone[0].two_detector_confirmation"
    assert "it has 1 detector(s), and two-detector confirmation needs at least 2" in p.allowed


def test_a_zone_table_must_name_a_zone_with_detectors() -> None:
    data = example()
    data["zone"] = [{"name": "cellar", "two_detector_confirmation": True}]
    p = only_problem(data)
    assert (p.key, p.value) == ("zone[0].name", "cellar")
