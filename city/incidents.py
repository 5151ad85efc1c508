"""Which kitchen events open, repeat or clear an incident on the duty desk (pure rules).

An incident is one thing an officer must act on: a gas alarm at a detector, a failed valve, a
detector or power fault, a site gone silent. One stays open per (site, category, source) until
an officer closes it; a repeat of the same alarm adds to its timeline, and the kitchen saying
it is back to normal is shown but closes nothing: only a person closes an incident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Severity on the desk: the order of the list (highest first).
HIGH, MEDIUM, LOW = 3, 2, 1


@dataclass(frozen=True, slots=True)
class Rule:
    """What an event does: ``open`` an incident (or repeat an open one) or ``clear`` it."""

    action: str  # "open" or "clear"
    category: str  # gas, valve, fault, power
    source: str
    severity: int = LOW


def rule_for(kind: str, source: str, details: dict[str, Any]) -> Rule | None:
    """The incident action of one event, or None for events that are only on the timeline."""
    if kind == "alarm.raised":
        level = details.get("level")
        return Rule("open", "gas", source, HIGH if level == "high" else MEDIUM)
    if kind == "alarm.cleared":
        return Rule("clear", "gas", source)
    if kind in ("valve.failed",):
        return Rule("open", "valve", source, MEDIUM)
    if kind == "fault.raised":
        severity = MEDIUM if details.get("fault") == "valve" else LOW
        return Rule("open", "fault", source, severity)
    if kind == "fault.cleared":
        return Rule("clear", "fault", source)
    if kind == "fan.failed":
        return Rule("open", "fault", source, LOW)
    if kind in ("power.mains_failed", "power.battery_low"):
        return Rule("open", "power", "site", MEDIUM if kind == "power.battery_low" else LOW)
    if kind == "power.restored":
        return Rule("clear", "power", "site")
    return None


def silent_titles(site_id: str, silent_s: float) -> tuple[str, str]:
    minutes = max(1, round(silent_s / 60))
    return (
        f"站点失联：{site_id} 已 {minutes} 分钟无任何消息",
        f"Site silent: nothing from {site_id} for {minutes} min",
    )
