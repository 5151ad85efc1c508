"""The one config writer: what it writes loads back as written, strings are escaped, and its
wiring is the example config's."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway import configfile
from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def site(**overrides: object) -> configfile.SiteFile:
    spec = configfile.SiteFile(
        site_id="T-1",
        site_name='Kitchen "A" \\ 东湖面馆',
        buses=[configfile.BusSpec("bus0", "/dev/ttyUSB0", 19200, "E", timeout_s=0.2)],
        detectors=[
            configfile.DetectorSpec("wok-1", "hot", "bus0", 3, "generic-cn-kitchen", "lpg", 15, 40)
        ],
        valves=[configfile.ValveSpec("main", ("hot",), close_confirm_s=1.5)],
        poll_period_s=0.25,
        comm_fault_timeout_s=3.0,
    )
    for key, value in overrides.items():
        object.__setattr__(spec, key, value)
    return spec


def test_a_written_site_loads_back_as_written(tmp_path: Path) -> None:
    cfg = load_config(configfile.write(tmp_path / "gasguard.toml", site()))
    assert cfg.site.name == 'Kitchen "A" \\ 东湖面馆'
    bus = cfg.buses[0]
    assert (bus.port, bus.baud, bus.parity, bus.timeout_s) == ("/dev/ttyUSB0", 19200, "E", 0.2)
    d = cfg.detectors[0]
    assert (d.name, d.address, d.gas.value, d.low_lel, d.high_lel) == ("wok-1", 3, "lpg", 15, 40)
    v = cfg.valves[0]
    assert (v.output_pin, v.feedback_pin, v.close_confirm_s) == (17, 27, 1.5)
    assert cfg.timings.poll_period_s == 0.25 and cfg.timings.comm_fault_timeout_s == 3.0
    assert cfg.data_dir == tmp_path / "data"


def test_a_valve_without_feedback_has_no_feedback_keys(tmp_path: Path) -> None:
    spec = site(valves=[configfile.ValveSpec("main", ("hot",), feedback_pin=None)])
    text = configfile.render(spec)
    assert "feedback" not in text
    assert load_config(configfile.write(tmp_path / "g.toml", spec)).valves[0].feedback_pin is None


def test_the_wiring_is_the_example_configs() -> None:
    example = tomllib.loads((ROOT / "config" / "gasguard.example.toml").read_text())
    ann = example["annunciator"]
    valve = example["valve"][0]
    fan = example["fan"][0]
    power = example["power"]
    assert {
        "valve": valve["output_pin"],
        "feedback": valve["feedback_pin"],
        "sounder": ann["sounder_pin"],
        "red": ann["red_pin"],
        "yellow": ann["yellow_pin"],
        "green": ann["green_pin"],
        "silence": ann["silence_pin"],
        "reset": ann["reset_pin"],
        "fan": fan["output_pin"],
        "fan_feedback": fan["feedback_pin"],
        "mains_failed": power["mains_failed_pin"],
        "battery_low": power["battery_low_pin"],
    } == configfile.EXAMPLE_PINS


@pytest.mark.parametrize("value", ['a"b', "a\\b", "line\nbreak", "tab\there", "中文"])
def test_strings_round_trip_through_toml(value: str) -> None:
    assert tomllib.loads(f"k = {configfile.toml_value(value)}")["k"] == value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object()])
def test_values_toml_cannot_hold_are_refused(value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        configfile.toml_value(value)
