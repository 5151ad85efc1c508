"""The exhaust fans' relays on GPIO, with their optional run-feedback contacts.

A fan relay is an active-high output on GPIO 9-27 (pulled down at power-on), created off: the
controller starting, stopping or dying leaves the fan off. That is acceptable because the fan
is not what makes the kitchen safe, the valve is: the valve's own rule closes the gas.

``command()`` runs on the safety thread after the valves were set: it never blocks or logs.
"""

from __future__ import annotations

from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice, Factory
from gpiozero.exc import GPIOZeroError

from gateway.config import FanConfig
from gateway.drivers.pins import PinSetupError
from gateway.log import log


class ExhaustFan:
    """One fan: its relay and, if wired, its run-feedback contact."""

    def __init__(self, cfg: FanConfig, pin_factory: Factory | None = None) -> None:
        self.name = cfg.name
        self.config = cfg
        self._closed = False
        try:
            self._relay: Any = DigitalOutputDevice(
                cfg.output_pin, active_high=True, initial_value=False, pin_factory=pin_factory
            )
        except GPIOZeroError as e:
            raise PinSetupError(
                f"fan {cfg.name!r}: output_pin GPIO{cfg.output_pin} cannot drive the relay: {e}"
            ) from e
        self._feedback: Any = None
        if cfg.feedback_pin is not None:
            # Pulled towards "not running": a broken wire is never read as a running fan.
            pull_up = cfg.feedback_running_level == "low"
            try:
                self._feedback = DigitalInputDevice(
                    cfg.feedback_pin, pull_up=pull_up, pin_factory=pin_factory
                )
            except GPIOZeroError as e:
                self._relay.close()
                raise PinSetupError(
                    f"fan {cfg.name!r}: feedback_pin GPIO{cfg.feedback_pin} cannot be an input "
                    f"(feedback_running_level={cfg.feedback_running_level!r}): {e}"
                ) from e
        log(
            "fan.ready",
            fan=self.name,
            output_pin=cfg.output_pin,
            feedback_pin=cfg.feedback_pin if cfg.feedback_pin is not None else "none",
        )

    def command(self, on: bool) -> None:
        """Run or stop the fan; touches the pin only when it differs (safety thread)."""
        if bool(self._relay.value) != on:
            if on:
                self._relay.on()
            else:
                self._relay.off()

    def running(self) -> bool | None:
        """What the run-feedback contact says now; None without one."""
        if self._feedback is None:
            return None
        return bool(self._feedback.is_active)

    @property
    def relay_on(self) -> bool:
        return bool(self._relay.value)

    def close(self) -> None:
        """Stop the fan and release the pins. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._relay.off()
        finally:
            self._relay.close()
            if self._feedback is not None:
                self._feedback.close()
