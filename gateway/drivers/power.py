"""The power supply's contacts on GPIO: "mains failed" and "backup battery low".

A UPS HAT or a relay contact drives each input. ``*_level`` in the config is the level that
means the fault; the input is pulled towards it, so a broken wire reads as the fault (for the
battery, the valves close: a fault we cannot rule out ends with the gas off). The safety core
debounces: this driver only reads.
"""

from __future__ import annotations

from typing import Any

from gpiozero import DigitalInputDevice, Factory
from gpiozero.exc import GPIOZeroError

from gateway.config import PowerConfig
from gateway.core.model import PowerSignal
from gateway.drivers.pins import PinSetupError
from gateway.log import log


class PowerContacts:
    """The wired power contacts; ``read()`` gives each one's state now (True = the fault)."""

    def __init__(self, cfg: PowerConfig, pin_factory: Factory | None = None) -> None:
        self._inputs: dict[PowerSignal, Any] = {}
        wiring = (
            (PowerSignal.MAINS_FAILED, cfg.mains_failed_pin, cfg.mains_failed_level),
            (PowerSignal.BATTERY_LOW, cfg.battery_low_pin, cfg.battery_low_level),
        )
        try:
            for signal, pin, level in wiring:
                if pin is None:
                    continue
                # Pulled towards the fault level. gpiozero makes a pulled-up input active-low
                # and a pulled-down one active-high, so is_active means "driven away from the
                # pull", i.e. healthy, either way: the fault is ``not is_active``.
                try:
                    self._inputs[signal] = DigitalInputDevice(
                        pin, pull_up=level == "high", pin_factory=pin_factory
                    )
                except GPIOZeroError as e:
                    raise PinSetupError(
                        f"power: {signal.value} pin GPIO{pin} cannot be an input: {e}"
                    ) from e
        except BaseException:
            self.close()
            raise
        if self._inputs:
            log("power.ready", contacts=",".join(s.value for s in self._inputs))

    def read(self) -> dict[PowerSignal, bool]:
        return {signal: not dev.is_active for signal, dev in self._inputs.items()}

    def close(self) -> None:
        for dev in self._inputs.values():
            dev.close()
        self._inputs = {}
