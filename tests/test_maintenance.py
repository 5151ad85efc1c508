"""Detector service dates: calibration due, end of service life, and how they are checked."""

from __future__ import annotations

import dataclasses
import datetime
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import DetectorConfig, load_config, parse_config
from gateway.maintenance import service_of, warnings
from gateway.validate import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gasguard.example.toml"
D = datetime.date


def detector(**dates: Any) -> DetectorConfig:
    base = load_config(EXAMPLE).detectors[0]
    return dataclasses.replace(base, **dates)


def test_calibration_counts_from_the_last_calibration_or_the_installation() -> None:
    installed = detector(installed=D(2025, 1, 10))
    assert service_of(installed).calibration_due == D(2026, 1, 10)
    calibrated = detector(installed=D(2025, 1, 10), calibrated=D(2025, 6, 1))
    assert service_of(calibrated).calibration_due == D(2026, 6, 1)
    # Three years of service life by default (a commercial kitchen detector).
    assert service_of(installed).end_of_life == D(2028, 1, 10)


def test_what_is_due_is_said_in_days_and_overdue_is_a_warning() -> None:
    svc = service_of(detector(installed=D(2025, 1, 10), calibrated=D(2025, 6, 1)))
    assert svc.overdue(D(2026, 6, 1)) is None
    assert svc.summary(D(2026, 5, 20)) == "calibration due in 12 days (2026-06-01)"
    assert svc.overdue(D(2026, 6, 3)) == "calibration overdue since 2026-06-01 (2 days)"
    status = svc.as_status(D(2026, 6, 3))
    assert (status["calibration_due_days"], status["end_of_life"]) == (-2, "2028-01-10")
    # End of life comes first: a recalibration does not make an old detector new.
    late = service_of(detector(installed=D(2022, 1, 1), calibrated=D(2025, 1, 1)))
    assert late.overdue(D(2025, 2, 1)) == (
        "end of service life since 2025-01-01 (31 days): replace it"
    )


def test_a_detector_without_dates_is_shown_as_such_and_never_warned_about() -> None:
    svc = service_of(detector())
    assert svc.overdue(D(2040, 1, 1)) is None
    assert svc.summary(D(2040, 1, 1)) == "install and calibration dates not recorded"
    assert warnings((detector(),), D(2040, 1, 1)) == {}


def test_a_profile_sets_its_own_intervals() -> None:
    base = detector(installed=D(2025, 1, 1))
    profile = dataclasses.replace(
        base.profile, service_life_years=5.0, calibration_interval_days=180
    )
    svc = service_of(dataclasses.replace(base, profile=profile))
    assert svc.calibration_due == D(2025, 6, 30)
    assert svc.end_of_life == D(2030, 1, 1)


def example_with(**keys: Any) -> dict[str, Any]:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    data["detector"][0].update(keys)
    return data


def test_dates_are_read_as_toml_dates_or_iso_strings() -> None:
    cfg = parse_config(example_with(installed=D(2025, 3, 1), calibrated="2025-09-01"), EXAMPLE)
    assert (cfg.detectors[0].installed, cfg.detectors[0].calibrated) == (
        D(2025, 3, 1),
        D(2025, 9, 1),
    )


@pytest.mark.parametrize(
    ("keys", "key", "allowed"),
    [
        ({"installed": "last spring"}, "detector[0].installed", "a date YYYY-MM-DD"),
        ({"installed": D(2099, 1, 1)}, "detector[0].installed", "a date YYYY-MM-DD"),
        ({"installed": D(1999, 12, 31)}, "detector[0].installed", "from 2000-01-01"),
        (
            {"installed": D(2025, 3, 1), "calibrated": D(2025, 2, 1)},
            "detector[0].calibrated",
            "on or after installed (2025-03-01)",
        ),
    ],
)
def test_a_bad_date_is_refused_naming_the_key_and_the_range(
    keys: dict[str, Any], key: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(example_with(**keys), EXAMPLE)
    (problem,) = err.value.problems
    assert problem.key == key and allowed in problem.allowed
