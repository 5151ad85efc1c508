"""Each detector's slow trend: hourly min / mean / max of its readings for 90 days, and the two
things a trend shows that no single reading does.

* A **slow rise** below the low set point: the hourly means of the last 7 days climb by at least
  ``RISE_WARN_LEL`` (least-squares slope), while the last day stays below the low set point. A
  small leak, or a sensor creeping up; either way someone should look.
* **Zero drift**: in a kitchen the gas is near zero most of the time, so the lowest hourly
  minimum of 7 days should be near zero. At or above ``ZERO_HIGH_LEL`` the zero has drifted up
  (or there is gas all the time); at or below ``ZERO_LOW_LEL`` it has drifted down, which hides
  that much gas.

Pure: ``HourBuckets`` aggregates samples, ``judge`` reads hours. Storage is
``gateway.store.trendfile``; the sampling thread is ``gateway.safety.trendwatch``.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass

HOURS_KEPT = 90 * 24
WINDOW_H = 7 * 24  # the trend rules look at the last 7 days
MIN_HOURS = 5 * 24  # ... and need at least 5 days of them
RISE_WARN_LEL = 5.0  # a 7-day rise of the hourly mean by this much is worth a look
ZERO_HIGH_LEL = 5.0
ZERO_LOW_LEL = -3.0


@dataclass(frozen=True, slots=True)
class Hour:
    """One hour of one detector: ``index`` is hours since the epoch (UTC)."""

    index: int
    low: float
    mean: float
    high: float


class HourBuckets:
    """The hour being filled for each detector. ``add`` a sample (a current reading, never a
    stale one); ``close(hour)`` hands back the finished hours before ``hour``."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[int, float, float, float, int]] = {}

    def add(self, detector: str, hour: int, lel: float) -> Hour | None:
        """Add one sample; returns the detector's previous hour when this one starts a new."""
        done = None
        cur = self._open.get(detector)
        if cur is not None and cur[0] != hour:
            done = _finish(cur)
            cur = None
        if cur is None:
            self._open[detector] = (hour, lel, lel, lel, 1)
        else:
            h, low, total, high, n = cur
            self._open[detector] = (h, min(low, lel), total + lel, max(high, lel), n + 1)
        return done

    def close(self, before_hour: int) -> dict[str, Hour]:
        """Finish and remove every open hour earlier than ``before_hour``."""
        out = {}
        for detector, cur in list(self._open.items()):
            if cur[0] < before_hour:
                out[detector] = _finish(cur)
                del self._open[detector]
        return out


def _finish(cur: tuple[int, float, float, float, int]) -> Hour:
    h, low, total, high, n = cur
    return Hour(h, low, total / n, high)


@dataclass(frozen=True, slots=True)
class TrendWarning:
    detector: str
    text: str
    daily_means: tuple[float, ...]  # the last 7 days, oldest first (what the centre is shown)


def judge(
    detector: str, hours: Sequence[Hour], low_lel: float, now_hour: int
) -> TrendWarning | None:
    """The warning the last 7 days of ``hours`` give, if any."""
    recent = [h for h in hours if now_hour - WINDOW_H <= h.index < now_hour]
    if len(recent) < MIN_HOURS:
        return None
    daily = _daily_means(recent, now_hour)
    floor = min(h.low for h in recent)
    if floor >= ZERO_HIGH_LEL:
        return TrendWarning(
            detector,
            f"zero drifted up: never below {floor:.1f} %LEL in 7 days (recalibrate, or find the "
            "gas that is always there)",
            daily,
        )
    if floor <= ZERO_LOW_LEL:
        return TrendWarning(
            detector,
            f"zero drifted down to {floor:.1f} %LEL (it hides that much gas): recalibrate",
            daily,
        )
    rise = _slope_per_hour(recent) * WINDOW_H
    last_day = [h.mean for h in recent if h.index >= now_hour - 24]
    if rise >= RISE_WARN_LEL and last_day and max(last_day) < low_lel:
        return TrendWarning(
            detector,
            f"slow rise below the low set point: +{rise:.1f} %LEL in 7 days, now "
            f"{sum(last_day) / len(last_day):.1f} %LEL (a small leak, or the sensor creeping)",
            daily,
        )
    return None


def _slope_per_hour(hours: Sequence[Hour]) -> float:
    n = len(hours)
    mx = sum(h.index for h in hours) / n
    my = sum(h.mean for h in hours) / n
    var = sum((h.index - mx) ** 2 for h in hours)
    if var == 0:
        return 0.0
    return sum((h.index - mx) * (h.mean - my) for h in hours) / var


def _daily_means(hours: Sequence[Hour], now_hour: int) -> tuple[float, ...]:
    out = []
    for day in range(7, 0, -1):
        start = now_hour - day * 24
        values = [h.mean for h in hours if start <= h.index < start + 24]
        out.append(round(sum(values) / len(values), 1) if values else math.nan)
    return tuple(out)


def text_chart(hours: Sequence[Hour], days: int, now_hour: int, width: int = 50) -> str:
    """One line per day, oldest first: the day's min, mean and max and a bar from 0 to the
    day's max (``=``) with the mean marked (``|``). A day without data says so."""
    lines = [f"{'DAY (UTC)':<10} {'MIN':>6} {'MEAN':>6} {'MAX':>6}  0 %LEL"]
    top = max([h.high for h in hours if h.index >= now_hour - days * 24] + [1.0])
    scale = width / top
    for day in range(days, 0, -1):
        start = now_hour - day * 24
        day_hours = [h for h in hours if start <= h.index < start + 24]
        label = _day_label(start)
        if not day_hours:
            lines.append(f"{label:<10} {'no data':>20}")
            continue
        low = min(h.low for h in day_hours)
        mean = sum(h.mean for h in day_hours) / len(day_hours)
        high = max(h.high for h in day_hours)
        bar = list("=" * max(0, round(high * scale)))
        at = min(max(0, round(mean * scale)), max(len(bar) - 1, 0))
        if bar:
            bar[at] = "|"
        lines.append(f"{label:<10} {low:6.1f} {mean:6.1f} {high:6.1f}  {''.join(bar)}")
    lines.append(f"full bar = {top:.1f} %LEL; '|' marks the day's mean")
    return "\n".join(lines)


def _day_label(hour: int) -> str:
    return datetime.datetime.fromtimestamp(hour * 3600, datetime.UTC).strftime("%Y-%m-%d")
