"""The power supply's two contacts, debounced: the mains has failed, the backup battery is low.

Pure: ``SafetyCore`` feeds it each contact reading with its time and asks it at each decision.
A contact counts once it has held its new state for ``debounce_s`` (a flicker is ignored).
Events: ``power.mains_failed`` / ``power.restored`` and ``power.battery_low`` /
``power.battery_ok``. What they mean for the site is the core's rule: a mains failure is a
fault; a low battery is a fault that closes every valve while there is still power to drive a
motorised or latching valve closed (a held-open one would close anyway when the power goes).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.model import Event, PowerInput, PowerPlan, PowerSignal

RAISED = {
    PowerSignal.MAINS_FAILED: "power.mains_failed",
    PowerSignal.BATTERY_LOW: "power.battery_low",
}
CLEARED = {
    PowerSignal.MAINS_FAILED: "power.restored",
    PowerSignal.BATTERY_LOW: "power.battery_ok",
}


@dataclass(slots=True)
class _Contact:
    raw: bool = False
    raw_since: float = 0.0
    active: bool = False  # debounced


class PowerMonitor:
    """The wired power contacts of one site (``PowerPlan``); an unwired one is never active."""

    def __init__(self, plan: PowerPlan) -> None:
        self._plan = plan
        self._contacts: dict[PowerSignal, _Contact] = {}
        self.replan(plan)

    def replan(self, plan: PowerPlan) -> None:
        """A contact kept by the new plan keeps its state; one no longer wired is dropped
        (its fault clears at the next decision)."""
        self._plan = plan
        wired = {PowerSignal.MAINS_FAILED: plan.mains, PowerSignal.BATTERY_LOW: plan.battery}
        for signal, on in wired.items():
            if on:
                self._contacts.setdefault(signal, _Contact())
            elif signal in self._contacts:  # no longer wired: clears at the next decision
                self._contacts[signal].raw = False
                self._contacts[signal].raw_since = float("-inf")

    def feed(self, inp: PowerInput) -> None:
        contact = self._contacts.get(inp.signal)
        if contact is None or inp.active == contact.raw:
            return
        contact.raw = inp.active
        contact.raw_since = inp.at

    def decide(self, now: float) -> list[Event]:
        events = []
        for signal, contact in list(self._contacts.items()):
            if contact.raw == contact.active or now - contact.raw_since < self._plan.debounce_s:
                if not contact.raw and not contact.active and not self._wired(signal):
                    del self._contacts[signal]
                continue
            contact.active = contact.raw
            kind = RAISED[signal] if contact.active else CLEARED[signal]
            events.append(Event(kind, "power", now, {"signal": signal.value}))
        return events

    def _wired(self, signal: PowerSignal) -> bool:
        return self._plan.mains if signal is PowerSignal.MAINS_FAILED else self._plan.battery

    @property
    def mains_failed(self) -> bool:
        c = self._contacts.get(PowerSignal.MAINS_FAILED)
        return c is not None and c.active

    @property
    def battery_low(self) -> bool:
        c = self._contacts.get(PowerSignal.BATTERY_LOW)
        return c is not None and c.active
