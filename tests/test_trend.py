"""The detectors' hourly trend: aggregation, the slow-rise and zero-drift rules, the text chart,
the trend file on the SD card and ``gasguard trend``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.store.trendfile import SIZE, read_hours, trend_path, write_hour
from gateway.trend import HOURS_KEPT, Hour, HourBuckets, judge, text_chart

NOW = 500_000  # an hour index (2027)


def week(mean: float, rise: float = 0.0, low_offset: float = 0.5) -> list[Hour]:
    """7 days of hours before NOW, the mean rising linearly by ``rise`` over the week."""
    hours = []
    for i in range(7 * 24):
        m = mean + rise * i / (7 * 24)
        hours.append(Hour(NOW - 7 * 24 + i, m - low_offset, m, m + 1.0))
    return hours


def test_hours_aggregate_min_mean_max_and_close_when_the_hour_ends() -> None:
    b = HourBuckets()
    assert b.add("wok-1", 10, 1.0) is None
    assert b.add("wok-1", 10, 3.0) is None
    done = b.add("wok-1", 11, 2.0)
    assert done == Hour(10, 1.0, 2.0, 3.0)
    b.add("wok-2", 11, 4.0)
    assert b.close(11) == {}
    assert set(b.close(12)) == {"wok-1", "wok-2"}


def test_a_flat_clean_week_gives_no_warning_and_too_little_data_none_either() -> None:
    assert judge("wok-1", week(1.0), 20.0, NOW) is None
    assert judge("wok-1", week(1.0, rise=8.0)[-48:], 20.0, NOW) is None


def test_a_slow_rise_below_the_low_set_point_is_a_warning_with_the_daily_means() -> None:
    w = judge("wok-1", week(1.0, rise=8.0), 20.0, NOW)
    assert w is not None and w.text.startswith("slow rise below the low set point: +8.0 %LEL")
    assert len(w.daily_means) == 7
    assert w.daily_means[0] < w.daily_means[-1]
    # The same rise above the low set point is an alarm's business, not the trend's.
    assert judge("wok-1", week(1.0, rise=8.0), 5.0, NOW) is None


def test_zero_drift_up_and_down_are_warnings() -> None:
    up = judge("wok-1", week(7.0), 20.0, NOW)
    assert up is not None and up.text.startswith("zero drifted up: never below 6.5 %LEL")
    down = judge("wok-1", week(-2.0, low_offset=2.0), 20.0, NOW)
    assert down is not None and down.text.startswith("zero drifted down to -4.0 %LEL")


def test_the_text_chart_shows_each_day_and_says_when_there_is_none() -> None:
    chart = text_chart(week(2.0)[24:], 7, NOW)
    lines = chart.splitlines()
    assert lines[0].split()[:4] == ["DAY", "(UTC)", "MIN", "MEAN"]
    assert "no data" in lines[1]  # the first day was left out
    assert "|" in lines[2] and "=" in lines[2]
    assert lines[-1].startswith("full bar = 3.0 %LEL")


def test_the_trend_file_keeps_90_days_in_6_kb_with_half_percent_steps(tmp_path: Path) -> None:
    path = trend_path(tmp_path, "wok-1")
    write_hour(path, Hour(NOW, 0.26, 1.24, 3.0))
    assert path.stat().st_size == SIZE < 7 * 1024
    assert read_hours(path) == [Hour(NOW, 0.5, 1.0, 3.0)]  # rounded to 0.5 %LEL steps
    # Hours skipped (the controller was off) are blank, never an older hour's values.
    write_hour(path, Hour(NOW - HOURS_KEPT, 9.0, 9.0, 9.0))  # 90 days older, same slot: dropped
    write_hour(path, Hour(NOW + 3, -12.0, 0.0, 200.0))
    assert read_hours(path) == [Hour(NOW, 0.5, 1.0, 3.0), Hour(NOW + 3, -10.0, 0.0, 117.0)]
    # A wrap of the ring: hours older than 90 days are gone.
    write_hour(path, Hour(NOW + HOURS_KEPT + 1, 2.0, 2.0, 2.0))
    assert [h.index for h in read_hours(path)] == [NOW + 3, NOW + HOURS_KEPT + 1]


def test_a_damaged_trend_file_is_started_afresh(tmp_path: Path) -> None:
    path = trend_path(tmp_path, "wok-1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a trend file")
    write_hour(path, Hour(NOW, 1.0, 1.0, 1.0))
    assert read_hours(path) == [Hour(NOW, 1.0, 1.0, 1.0)]


def test_gasguard_trend_prints_the_chart_and_writes_a_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "gasguard.example.toml"
    text = example.read_text().replace('data_dir = "/var/lib/gasguard"', 'data_dir = "data"')
    config = tmp_path / "gasguard.toml"
    config.write_text(
        f'profiles_dir = "{example.parent / "profiles"}"\n' + text, encoding="utf-8"
    )
    now = int(__import__("time").time() // 3600)
    for i in range(3 * 24):
        write_hour(trend_path(tmp_path / "data", "wok-1"), Hour(now - 72 + i, 0.5, 1.0, 2.0))
    png = tmp_path / "wok-1.png"
    assert main(["trend", "wok-1", "--config", str(config), "--days", "3", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "wok-1: 72 hours stored in the last 3 days" in out
    assert out.count("   0.5    1.0    2.0  ") == 3
    assert "no trend warning" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["trend", "nope", "--config", str(config)]) == 2
    assert "no detector 'nope'" in capsys.readouterr().err
    assert os.path.exists(trend_path(tmp_path / "data", "wok-1"))
