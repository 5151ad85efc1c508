"""The local annunciator: sounder, red/yellow/green lights, silence and reset buttons.

Lights follow GB 16808 §4.2.2: red = alarm, yellow = fault, green = power. ``Light.FLASH_ALARM``
flashes at 1 Hz (0.5 s on / 0.5 s off), ``Light.FLASH_FAULT`` at 0.5 Hz (1 s on / 1 s off). The
three lights are driven by one thread of the annunciator's own (``LightDriver``): ``show()``
only hands it the wanted patterns and wakes it, so the safety thread never waits for a light
(gpiozero's own ``blink()`` joins the old blink thread whenever a light changes). The sounder is
a plain active-high output (steady while sounding), written by the caller at once. Every output
is active-high on a pin the config keeps to GPIO 9-27 (pulled down at power-on) and starts off
(explicit ``initial_value=False``).

Buttons are push buttons to ground (internal pull-up). Silence fires on press. Reset fires only
when HELD for ``reset_hold_s`` (config: at least 2 s) without being released; a short press, or
several short presses, do nothing. The callbacks run in gpiozero's threads (the pin-event thread,
the hold thread): they must only enqueue a request for the safety thread and return. The
controller passes functions that put a ``SilenceRequest`` / ``ResetRequest`` on the safety queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpiozero import LED, Button, Buzzer, Factory
from gpiozero.exc import GPIOZeroError

from gateway.config import INPUT_PINS, OUTPUT_PINS, AnnunciatorConfig
from gateway.core.model import Light
from gateway.drivers.pins import PinSetupError
from gateway.log import error, log

# (on seconds, off seconds) of each flashing Light, GB 16808 §4.2.2: alarm >= 1 Hz, fault
# >= 0.2 Hz, on-time >= 0.25 s.
FLASH_TIMES: dict[Light, tuple[float, float]] = {
    Light.FLASH_ALARM: (0.5, 0.5),
    Light.FLASH_FAULT: (1.0, 1.0),
}
# Software debounce for the buttons: short against a 2 s hold, long against contact bounce.
BUTTON_BOUNCE_S = 0.05
RESET_HOLD_MIN_S = 2.0


@dataclass(frozen=True, slots=True)
class AnnunciatorState:
    """What the annunciator shows now (for the status API): the last ``show()`` and whether each
    button is pressed at this moment."""

    sounder: bool
    red: Light
    yellow: Light
    green: Light
    silence_pressed: bool
    reset_pressed: bool


class Annunciator:
    """Sounder, three lights and two buttons on GPIO.

    ``on_silence`` is called when the silence button is pressed, ``on_reset`` when the reset
    button has been held for ``cfg.reset_hold_s``. Both run in gpiozero threads and must only
    enqueue. An exception they raise is logged, never propagated into gpiozero's thread.
    """

    def __init__(
        self,
        cfg: AnnunciatorConfig,
        on_silence: Callable[[], None],
        on_reset: Callable[[], None],
        pin_factory: Factory | None = None,
    ) -> None:
        _check_config(cfg)
        self.config = cfg
        self._closed = False
        # What the outputs show now; every output starts off.
        self._sounder_on = False
        self._light_shown = [Light.OFF, Light.OFF, Light.OFF]
        self._devices: list[Any] = []
        out = {"active_high": True, "initial_value": False, "pin_factory": pin_factory}
        button = {"pull_up": True, "bounce_time": BUTTON_BOUNCE_S, "pin_factory": pin_factory}
        try:
            self._sounder = self._make("sounder_pin", cfg.sounder_pin, Buzzer, **out)
            self._lights = (
                self._make("red_pin", cfg.red_pin, LED, **out),
                self._make("yellow_pin", cfg.yellow_pin, LED, **out),
                self._make("green_pin", cfg.green_pin, LED, **out),
            )
            self._silence = self._make("silence_pin", cfg.silence_pin, Button, **button)
            self._reset = self._make(
                "reset_pin",
                cfg.reset_pin,
                Button,
                hold_time=cfg.reset_hold_s,
                hold_repeat=False,
                **button,
            )
        except BaseException:
            self._release()
            raise
        self._driver = LightDriver(self._lights)
        self._driver.start()
        self._silence.when_pressed = _guarded("silence", on_silence)
        # Only when_held: a press shorter than hold_time never reaches on_reset.
        self._reset.when_held = _guarded("reset", on_reset)
        log(
            "annunciator.ready",
            sounder_pin=cfg.sounder_pin,
            red_pin=cfg.red_pin,
            yellow_pin=cfg.yellow_pin,
            green_pin=cfg.green_pin,
            silence_pin=cfg.silence_pin,
            reset_pin=cfg.reset_pin,
            reset_hold_s=cfg.reset_hold_s,
        )

    def show(self, sounder: bool, red: Light, yellow: Light, green: Light) -> None:
        """Show the safety core's outputs. Idempotent: only an output whose wanted state changed
        is touched, so a flashing light keeps its rhythm across repeated calls. Never sleeps and
        never waits for another thread: the lights follow within a few milliseconds."""
        if sounder != self._sounder_on:
            if sounder:
                self._sounder.on()
            else:
                self._sounder.off()
            self._sounder_on = sounder
        wanted = (red, yellow, green)
        if list(wanted) != self._light_shown:
            self._light_shown = list(wanted)
            self._driver.set(wanted)

    def pin_states(self) -> AnnunciatorState:
        """What each output shows now and whether each button is pressed."""
        red, yellow, green = self._light_shown
        return AnnunciatorState(
            sounder=self._sounder_on,
            red=red,
            yellow=yellow,
            green=green,
            silence_pressed=bool(self._silence.is_pressed),
            reset_pressed=bool(self._reset.is_pressed),
        )

    def close(self) -> None:
        """Switch every output off, then release the pins. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._release()
        log("annunciator.released")

    def _make(self, key: str, pin: int, device_class: Any, **kwargs: Any) -> Any:
        try:
            device = device_class(pin, **kwargs)
        except GPIOZeroError as e:
            raise PinSetupError(f"annunciator.{key} GPIO{pin} cannot be set up: {e}") from e
        self._devices.append(device)
        return device

    def _release(self) -> None:
        # The light thread first, then every output off, then every device releases its pin.
        driver = getattr(self, "_driver", None)
        if driver is not None:
            driver.stop()
        for device in self._devices:
            if hasattr(device, "off"):
                device.off()
        for device in self._devices:
            device.close()
        self._devices.clear()


class LightDriver(threading.Thread):
    """The only writer of the three light pins: steady on, steady off or flashing (in phase
    from the moment a pattern was set, so repeated ``set`` calls keep the rhythm). ``set`` never
    blocks; the thread wakes at once, and otherwise at the next flash edge."""

    def __init__(self, leds: tuple[Any, Any, Any]) -> None:
        super().__init__(name="annunciator-lights", daemon=True)
        self.leds = leds
        self._wanted: tuple[Light, Light, Light] = (Light.OFF, Light.OFF, Light.OFF)
        self._wake = threading.Event()
        self._stopping = False

    def set(self, wanted: tuple[Light, Light, Light]) -> None:
        self._wanted = wanted  # one reference assignment: no lock
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self.is_alive():
            self.join(5.0)

    def run(self) -> None:
        current: list[Light] = [Light.OFF, Light.OFF, Light.OFF]
        started = [0.0, 0.0, 0.0]
        lit = [False, False, False]
        while not self._stopping:
            wanted = self._wanted
            now = time.monotonic()
            wait = 1.0
            for i, light in enumerate(wanted):
                if light != current[i]:
                    current[i] = light
                    started[i] = now
                level, until = _level(light, now - started[i])
                wait = min(wait, until)
                if level != lit[i]:
                    try:
                        if level:
                            self.leds[i].on()
                        else:
                            self.leds[i].off()
                        lit[i] = level
                    except Exception as e:  # a light must never stop the others
                        error("annunciator.light_failed", light=i, error=repr(e))
            if self._wake.wait(max(0.001, wait)):
                self._wake.clear()


def _level(light: Light, elapsed: float) -> tuple[bool, float]:
    """Whether ``light`` is lit ``elapsed`` s after it was set, and for how much longer."""
    if light is Light.ON:
        return True, 1.0
    if light is Light.OFF:
        return False, 1.0
    on_s, off_s = FLASH_TIMES[light]
    phase = elapsed % (on_s + off_s)
    if phase < on_s:
        return True, on_s - phase
    return False, on_s + off_s - phase


def _guarded(button: str, callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` in a gpiozero thread without letting an exception kill that thread."""

    def run() -> None:
        try:
            callback()
        except Exception as e:
            error("annunciator.callback_failed", button=button, error=repr(e))

    return run


def _check_config(cfg: AnnunciatorConfig) -> None:
    """Refuse a hand-built config the config loader would have refused."""
    for key in ("sounder_pin", "red_pin", "yellow_pin", "green_pin"):
        pin = getattr(cfg, key)
        if pin not in OUTPUT_PINS:
            raise ValueError(
                f"annunciator.{key} {pin!r} is not one of {', '.join(map(str, OUTPUT_PINS))}"
            )
    for key in ("silence_pin", "reset_pin"):
        pin = getattr(cfg, key)
        if pin not in INPUT_PINS:
            raise ValueError(
                f"annunciator.{key} {pin!r} is not one of {', '.join(map(str, INPUT_PINS))}"
            )
    if not cfg.reset_hold_s >= RESET_HOLD_MIN_S:
        raise ValueError(
            f"annunciator.reset_hold_s {cfg.reset_hold_s!r} is below {RESET_HOLD_MIN_S:g} s: "
            "a reset must be a deliberate hold"
        )
