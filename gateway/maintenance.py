"""Detector service: when each detector is due for calibration and when it reaches the end of
its service life, from its install and last-calibration dates (config, set at the console) and
its profile's intervals (3 years and 365 days unless the profile says otherwise).

Pure date arithmetic on the site's local date: no clock, no I/O. An overdue calibration or a
detector past its service life is a *warning* fault: it shows (yellow light, status, upstream
once a day) but never closes a valve, and a detector without recorded dates is shown as such,
not warned about.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from gateway.config import DetectorConfig

DUE_SOON_DAYS = 30  # "calibration due in N days" is worth showing from this close


@dataclass(frozen=True, slots=True)
class DetectorService:
    """One detector's service dates. ``calibration_due`` counts from the last calibration, or
    from the installation when it was never calibrated since."""

    detector: str
    installed: date | None
    calibrated: date | None
    calibration_due: date | None
    end_of_life: date | None

    def overdue(self, today: date) -> str | None:
        """The warning for ``today``, or None: end of life first (it needs a new detector)."""
        if self.end_of_life is not None and today >= self.end_of_life:
            days = (today - self.end_of_life).days
            return f"end of service life since {self.end_of_life} ({days} days): replace it"
        if self.calibration_due is not None and today > self.calibration_due:
            days = (today - self.calibration_due).days
            return f"calibration overdue since {self.calibration_due} ({days} days)"
        return None

    def summary(self, today: date) -> str:
        """One line for people: what is due next."""
        warning = self.overdue(today)
        if warning is not None:
            return warning
        if self.calibration_due is None:
            return "install and calibration dates not recorded"
        days = (self.calibration_due - today).days
        text = f"calibration due in {days} days ({self.calibration_due})"
        if self.end_of_life is not None and (self.end_of_life - today).days <= DUE_SOON_DAYS:
            text += f"; end of life in {(self.end_of_life - today).days} days"
        return text

    def as_status(self, today: date) -> dict[str, Any]:
        def iso(d: date | None) -> str | None:
            return None if d is None else d.isoformat()

        def days(d: date | None) -> int | None:
            return None if d is None else (d - today).days

        return {
            "installed": iso(self.installed),
            "calibrated": iso(self.calibrated),
            "calibration_due": iso(self.calibration_due),
            "calibration_due_days": days(self.calibration_due),
            "end_of_life": iso(self.end_of_life),
            "end_of_life_days": days(self.end_of_life),
            "overdue": self.overdue(today),
            "text": self.summary(today),
        }


def service_of(det: DetectorConfig) -> DetectorService:
    profile = det.profile
    since = det.calibrated or det.installed
    due = None if since is None else since + timedelta(days=profile.calibration_interval_days)
    end = None if det.installed is None else _years_after(det.installed, profile.service_life_years)
    return DetectorService(det.name, det.installed, det.calibrated, due, end)


def _years_after(start: date, years: float) -> date:
    """Whole calendar years (29 February becomes 28 February), then the rest in days."""
    whole = int(years)
    try:
        end = start.replace(year=start.year + whole)
    except ValueError:
        end = start.replace(year=start.year + whole, day=28)
    return end + timedelta(days=round((years - whole) * 365.25))


def warnings(detectors: tuple[DetectorConfig, ...], today: date) -> dict[str, str]:
    """The detectors that need service on ``today``, with why."""
    out = {}
    for det in detectors:
        text = service_of(det).overdue(today)
        if text is not None:
            out[det.name] = text
    return out
