"""Bus load from the config: what ``check-config`` prints and warns about (issue 11, item 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.busload import bus_loads
from gateway.config import load_config
from gateway.configfile import BusSpec, DetectorSpec, SiteFile, ValveSpec, write
from gateway.rtu import poll_time, silent_attempt_time

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "gasguard.example.toml"


def site(tmp_path: Path, detectors: int, period_s: float, baud: int = 9600) -> Path:
    spec = SiteFile(
        site_id="load-test",
        site_name="Load test",
        buses=[BusSpec("line-a", "/dev/ttyUSB0", baud, timeout_s=0.2, retries=1)],
        detectors=[
            DetectorSpec(f"d{a}", "kitchen", "line-a", a, "generic-cn-kitchen")
            for a in range(1, detectors + 1)
        ],
        valves=[ValveSpec("inlet", ("kitchen",))],
        poll_period_s=period_s,
    )
    return write(tmp_path / "site.toml", spec)


def test_the_cycle_is_the_sum_of_the_detectors_polls(tmp_path: Path) -> None:
    (load,) = bus_loads(load_config(site(tmp_path, 4, 0.5)))
    assert load.bus == "line-a" and load.detectors == 4
    assert load.cycle_s == pytest.approx(4 * poll_time(2, 9600, "N", 1))
    assert load.silent_attempt_s == pytest.approx(silent_attempt_time(9600, "N", 1, 0.0, 0.2))
    assert load.silent_fits and load.warnings() == []


def test_the_example_site_is_not_warned_about() -> None:
    loads = bus_loads(load_config(EXAMPLE))
    assert loads
    assert all(load.warnings() == [] for load in loads)


def test_a_bus_where_a_silent_detectors_timeout_no_longer_fits_is_warned_about(
    tmp_path: Path,
) -> None:
    # The harness's case: 16 detectors at 9600 baud in a 0.5 s period.
    (load,) = bus_loads(load_config(site(tmp_path, 16, 0.5)))
    assert 0.8 < load.load < 1.0
    assert not load.silent_fits
    text, alarming = load.warnings()
    assert text.startswith("bus line-a: ")
    assert "does not fit" in text and "timeout_s 0.2" in text
    # And while one detector alarms, its confirming poll at once makes the cycle longer still.
    assert "with one detector alarming, its confirming polls make the cycle" in alarming
    assert load.alarm_cycle_s > load.period_s > load.cycle_s


def test_a_bus_slower_than_its_period_is_warned_about(tmp_path: Path) -> None:
    (load,) = bus_loads(load_config(site(tmp_path, 30, 0.5)))
    assert load.load > 1.0
    (text,) = load.warnings()
    assert "bus line-a" in text and "longer than timings.poll_period_s 0.5 s" in text


def test_check_config_prints_the_load_and_the_warning(tmp_path: Path) -> None:
    path = site(tmp_path, 16, 0.5)
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "bus line-a: 16 detectors take" in r.stdout
    assert "WARNING: bus line-a: " in r.stdout
