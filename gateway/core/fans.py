"""The exhaust-fan interlock (GB 50028): which fans run, and whether each one really does.

Pure, like the rest of the core: ``SafetyCore`` tells it, at each decision, which zones call
for ventilation and why; it answers with the fan commands and the events. Rules:

* A fan runs while any of its zones calls for it: a detector there is alarming or has a
  latched alarm (test alarms of an inhibited detector do not count), or, only for a fan with
  ``on_comm_fault``, a detector there is in comm fault.
* When the call ends (the manual reset cleared the latch and the gas is gone) it runs on for
  ``run_on_s`` to clear what gas is left, then stops.
* A fan with run feedback must report running within ``start_confirm_s`` of being started, and
  keep running while commanded: otherwise it is a fan fault (yellow light, sounder, upstream).
  The fault clears when the contact reports running again or at the manual reset.
* A fan never changes a valve: the valves follow the detectors only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.core.model import Event, FanFeedback, FanPlan


@dataclass(frozen=True, slots=True)
class FanView:
    """What the status shows of one fan."""

    name: str
    zones: tuple[str, ...]
    commanded_on: bool
    reason: str  # why it runs (or "off")
    running: bool | None  # the run-feedback contact; None without one
    failed: bool
    run_on_until: float | None  # the run-on's end while it runs on, else None


class _Fan:
    __slots__ = ("failed", "not_running_since", "on", "plan", "reason", "run_on_until", "running")

    def __init__(self, plan: FanPlan) -> None:
        self.plan = plan
        self.on = False
        self.reason = "off"
        self.run_on_until: float | None = None
        self.running: bool | None = None
        self.not_running_since: float | None = None
        self.failed = False


class FanInterlock:
    """The site's exhaust fans. ``decide`` once per core decision, ``feedback`` per contact
    reading; both return the events they caused."""

    def __init__(self, plans: tuple[FanPlan, ...]) -> None:
        self._fans: dict[str, _Fan] = {p.name: _Fan(p) for p in plans}

    def replan(self, plans: tuple[FanPlan, ...]) -> None:
        """New plans (config reload): a fan kept by name keeps its state, a new one starts
        off; a removed one is no longer commanded (its relay is released by the driver)."""
        old = self._fans
        self._fans = {}
        for plan in plans:
            fan = old.get(plan.name) or _Fan(plan)
            fan.plan = plan
            self._fans[plan.name] = fan

    def feedback(self, fb: FanFeedback) -> list[Event]:
        fan = self._fans.get(fb.fan)
        if fan is None or not fan.plan.has_feedback:
            return []
        fan.running = fb.running
        events: list[Event] = []
        if fb.running:
            fan.not_running_since = None
            if fan.failed:
                fan.failed = False
                events.append(Event("fault.cleared", fan.plan.name, fb.at, {"fault": "fan"}))
        elif fan.on and fan.not_running_since is None:
            fan.not_running_since = fb.at
        return events

    def decide(
        self, now: float, alarms: Mapping[str, str], comm_faults: Mapping[str, str]
    ) -> list[Event]:
        """``alarms``: zone -> the alarm that needs ventilation there; ``comm_faults``: zone
        -> a detector in comm fault there (it counts only for fans with ``on_comm_fault``)."""
        events: list[Event] = []
        for fan in self._fans.values():
            why = _why(fan.plan, alarms, comm_faults)
            name = fan.plan.name
            if why is not None:
                fan.run_on_until = None
                if not fan.on:
                    fan.on = True
                    fan.not_running_since = now if fan.running is not True else None
                    events.append(Event("fan.started", name, now, {"reason": why}))
                fan.reason = why
            elif fan.on and fan.run_on_until is None:
                fan.run_on_until = now + fan.plan.run_on_s
                fan.reason = f"run-on for {fan.plan.run_on_s:g} s after the alarm"
                events.append(Event("fan.run_on", name, now, {"seconds": fan.plan.run_on_s}))
            if fan.on and fan.run_on_until is not None and now >= fan.run_on_until:
                fan.on = False
                fan.run_on_until = None
                fan.not_running_since = None
                fan.reason = "off"
                events.append(Event("fan.stopped", name, now, {}))
            if (
                fan.on
                and fan.plan.has_feedback
                and not fan.failed
                and fan.not_running_since is not None
                and now - fan.not_running_since > fan.plan.start_confirm_s
            ):
                fan.failed = True
                text = f"no run feedback within {fan.plan.start_confirm_s:g} s"
                events.append(Event("fan.failed", name, now, {"text": text}))
        return events

    def reset(self, now: float) -> list[Event]:
        """The manual reset acknowledges fan faults; the next start checks the fan again."""
        events = []
        for fan in self._fans.values():
            if fan.failed:
                fan.failed = False
                fan.not_running_since = now if fan.on and fan.running is not True else None
                events.append(Event("fault.cleared", fan.plan.name, now, {"fault": "fan"}))
        return events

    def commands(self) -> dict[str, bool]:
        return {name: fan.on for name, fan in self._fans.items()}

    def any_failed(self) -> bool:
        return any(fan.failed for fan in self._fans.values())

    def view(self) -> tuple[FanView, ...]:
        return tuple(
            FanView(
                f.plan.name,
                f.plan.zones,
                f.on,
                f.reason,
                f.running,
                f.failed,
                f.run_on_until,
            )
            for f in self._fans.values()
        )


def _why(plan: FanPlan, alarms: Mapping[str, str], comm_faults: Mapping[str, str]) -> str | None:
    for zone in plan.zones:
        if zone in alarms:
            return alarms[zone]
    if plan.on_comm_fault:
        for zone in plan.zones:
            if zone in comm_faults:
                return comm_faults[zone]
    return None
