"""Simulated exhaust fans and power supply on gpiozero mock pins, for the demo, the tests and
the HIL sim rig.

* A fan body watches its relay output and, ``spin_up_s`` after the relay closes, drives the
  run-feedback contact to "running" (at the configured level); it stops at once when the relay
  opens. ``jammed`` fans never report running.
* The power supply drives the mains-failed and battery-low contacts at the healthy level until
  ``fail_mains()`` / ``low_battery()`` say otherwise.

Inputs are re-driven every poll: a driver created later sets its pull, which moves a mock
input to the pull level (towards the fault, on purpose).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from gpiozero.pins.mock import MockFactory

from gateway.config import FanConfig, PowerConfig

POLL_S = 0.005


class SiteIoSim:
    """The fans and power supply of one simulated site; ``start()`` / ``stop()``."""

    def __init__(
        self,
        factory: MockFactory,
        fans: tuple[FanConfig, ...],
        power: PowerConfig,
        *,
        spin_up_s: float = 0.2,
    ) -> None:
        self._factory = factory
        self._fans = fans
        self._power = power
        self.spin_up_s = spin_up_s
        self.jammed: set[str] = set()
        self.mains_failed = False
        self.battery_low = False
        self._relay_on_since: dict[str, float | None] = {f.name: None for f in fans}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SiteIoSim:
        self._drive()
        self._thread = threading.Thread(target=self._run, name="sim-site-io", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)

    def relay_on(self, fan: str) -> bool:
        cfg = next(f for f in self._fans if f.name == fan)
        return bool(self._factory.pin(cfg.output_pin).state)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._drive()

    def _drive(self) -> None:
        now = time.monotonic()
        for cfg in self._fans:
            on = bool(self._factory.pin(cfg.output_pin).state)
            since = self._relay_on_since[cfg.name]
            if on and since is None:
                self._relay_on_since[cfg.name] = since = now
            elif not on:
                self._relay_on_since[cfg.name] = since = None
            if cfg.feedback_pin is not None:
                running = (
                    since is not None
                    and now - since >= self.spin_up_s
                    and cfg.name not in self.jammed
                )
                high = running == (cfg.feedback_running_level == "high")
                self._set(cfg.feedback_pin, high)
        p = self._power
        for pin, level, fault in (
            (p.mains_failed_pin, p.mains_failed_level, self.mains_failed),
            (p.battery_low_pin, p.battery_low_level, self.battery_low),
        ):
            if pin is not None:
                self._set(pin, fault == (level == "high"))

    def _set(self, number: int, high: bool) -> None:
        pin: Any = self._factory.pin(number)
        if pin.function != "input":
            return  # nothing has claimed it as an input yet, or it is driven as an output
        if bool(pin.state) != high:
            if high:
                pin.drive_high()
            else:
                pin.drive_low()
