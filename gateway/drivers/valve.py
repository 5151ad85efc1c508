"""The emergency gas shutoff valve(s) on GPIO: the coil output and the position contact.

Two electrical kinds (GB 16808), both reopened only by hand at the valve:

* ``HeldOpenValve`` ("held-open", 常闭型, the fail-safe default): the coil is energised ONLY
  while the valve is commanded open. A dead controller, a crashed process or a power cut
  de-energises it and the spring closes the gas.
* ``TripToCloseValve`` ("trip-to-close", 常开型): the coil is off while open; one DC pulse trips
  it closed. NOT fail safe: a dead controller leaves the gas on, so a site with this kind needs
  a hardware watchdog relay that gives the trip pulse when the software stops (GB 16808).

Outputs are active-high on GPIO 9-27, which the Pi pulls down at power-on, so the relay is not
energised while the Pi boots; the config refuses other pins. Every output is created with an
explicit ``initial_value=False``: a valve driver starts de-energised.

``command()`` runs on the safety thread right after a decision: it never sleeps, never logs,
never takes a lock another thread can hold, and touches a pin only when the wanted state differs.

If the process dies without ``close()``, the GPIO line may stay as it was last driven (the kernel
does not always return a released line to input). For a held-open valve the systemd / hardware
watchdog (bcm2835_wdt) is then what ends it: the SoC reset turns every GPIO into a pulled-down
input and the coil drops. Call ``close()`` on every orderly exit.

Wiring assumption: after ``close()`` gpiozero's lgpio backend leaves the pin a floating input
(no pull), so the relay board's input needs its own pull-down (most boards have one) for the coil
to stay off while the service is stopped.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice, Factory
from gpiozero.exc import GPIOZeroError

from gateway.config import INPUT_PINS, OUTPUT_PINS, VALVE_KINDS, ValveConfig
from gateway.drivers.pins import PinSetupError
from gateway.log import log

# Trip pulse widths the config accepts (config.py, valve.pulse_ms).
PULSE_MS_MIN = 10
PULSE_MS_MAX = 5000
FEEDBACK_LEVELS = ("high", "low")


class ShutoffValve(ABC):
    """One shutoff valve: a coil output and an optional position contact.

    ``name`` is the valve's config name, ``kind`` "held-open" or "trip-to-close".
    """

    kind: str

    def __init__(self, cfg: ValveConfig, pin_factory: Factory | None = None) -> None:
        _check_config(cfg, self.kind)
        self.name = cfg.name
        self.config = cfg
        self._closed = False
        # The coil first: from here on it is driven low (de-energised).
        self._coil = _coil_output(cfg, pin_factory)
        try:
            self._feedback = _feedback_input(cfg, pin_factory)
        except BaseException:
            self._coil.off()
            self._coil.close()
            raise
        log(
            "valve.ready",
            valve=self.name,
            kind=self.kind,
            output_pin=cfg.output_pin,
            feedback_pin=cfg.feedback_pin if cfg.feedback_pin is not None else "none",
            feedback_closed_level=cfg.feedback_closed_level,
        )

    @abstractmethod
    def command(self, open_: bool) -> None:
        """Apply the safety core's decision: True = may be open, False = close.

        Idempotent and fast; never blocks or sleeps (it runs on the safety thread)."""

    def feedback_closed(self) -> bool | None:
        """What the position contact says now: True = closed, False = open, None = no contact.

        The input's pull is chosen so that a broken feedback wire reads "open": a close command
        is then never confirmed and the safety core raises a valve fault (fail safe). Wiring
        assumed: with ``feedback_closed_level = "high"`` the contact connects the input to 3.3 V
        when the valve is closed (internal pull-down); with "low" it connects the input to GND
        when closed (internal pull-up).
        """
        if self._feedback is None:
            return None
        return bool(self._feedback.is_active)

    @property
    def coil_energised(self) -> bool:
        """Whether the coil output is driven now (for the status API)."""
        return bool(self._coil.value)

    def close(self) -> None:
        """De-energise the coil, then release the pins. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._de_energise()
        finally:
            self._coil.close()
            if self._feedback is not None:
                self._feedback.close()
            log("valve.released", valve=self.name, kind=self.kind)

    def _de_energise(self) -> None:
        self._coil.off()


class HeldOpenValve(ShutoffValve):
    """Held-open valve (fail safe): the output is energised ONLY while commanded open."""

    kind = "held-open"

    def command(self, open_: bool) -> None:
        # Compare with the output as it is, not with the last command: a repeated command
        # touches no pin, and an output found in the wrong state is corrected right here.
        if bool(self._coil.value) != open_:
            if open_:
                self._coil.on()
            else:
                self._coil.off()


class TripToCloseValve(ShutoffValve):
    """Trip-to-close valve (NOT fail safe, needs a hardware watchdog relay): the coil is off while
    open, and a close command gives ONE pulse of ``pulse_ms``.

    The pulse runs in gpiozero's background blink thread (``n=1``), which always ends with the
    coil off, so ``command()`` does not wait for it. Commanding open does nothing electrically
    (the valve is reopened by hand at the valve) but re-arms, so that the next close pulses again.
    A valve starts armed: its position is unknown at start, so the first close command pulses
    (harmless if it is already closed). A close command during a running pulse adds nothing: that
    pulse trips the valve, and the coil is never held for more than the configured width.
    """

    kind = "trip-to-close"

    def __init__(self, cfg: ValveConfig, pin_factory: Factory | None = None) -> None:
        super().__init__(cfg, pin_factory)
        self._pulse_s = cfg.pulse_ms / 1000.0
        self._armed = True
        self._pulse_ends_at = 0.0

    @property
    def armed(self) -> bool:
        """True when the next close command will pulse."""
        return self._armed

    def command(self, open_: bool) -> None:
        if open_:
            self._armed = True
            return
        if not self._armed:
            return
        self._armed = False
        now = time.monotonic()
        if now < self._pulse_ends_at:
            return
        self._pulse_ends_at = now + self._pulse_s
        # background=True: starts the pulse thread and returns; the thread writes high, waits
        # pulse_s, writes low.
        self._coil.blink(on_time=self._pulse_s, off_time=0, n=1, background=True)

    def _de_energise(self) -> None:
        # A pulse cut short may not trip the valve: let a running one finish (at most pulse_ms,
        # bounded by the config to 5 s) before switching the coil off for good.
        remaining = self._pulse_ends_at - time.monotonic()
        if remaining > 0:
            time.sleep(remaining + 0.02)
        self._coil.off()


def make_valve(cfg: ValveConfig, pin_factory: Factory | None = None) -> ShutoffValve:
    """The driver for ``cfg.kind``; raises ValueError for an unknown kind or a bad config and
    PinSetupError when the pins cannot be set up."""
    if cfg.kind == HeldOpenValve.kind:
        return HeldOpenValve(cfg, pin_factory)
    if cfg.kind == TripToCloseValve.kind:
        return TripToCloseValve(cfg, pin_factory)
    raise ValueError(
        f"valve {cfg.name!r}: kind {cfg.kind!r} is not one of {', '.join(VALVE_KINDS)}"
    )


def _check_config(cfg: ValveConfig, kind: str) -> None:
    """Refuse a hand-built config the config loader would have refused."""
    if cfg.kind != kind:
        raise ValueError(f"valve {cfg.name!r}: kind {cfg.kind!r} given to a {kind} driver")
    if cfg.output_pin not in OUTPUT_PINS:
        raise ValueError(
            f"valve {cfg.name!r}: output_pin {cfg.output_pin!r} is not one of "
            f"{', '.join(map(str, OUTPUT_PINS))} (pulled down at power-on, not UART)"
        )
    if cfg.feedback_pin is not None and cfg.feedback_pin not in INPUT_PINS:
        raise ValueError(
            f"valve {cfg.name!r}: feedback_pin {cfg.feedback_pin!r} is not one of "
            f"{', '.join(map(str, INPUT_PINS))}"
        )
    if cfg.feedback_pin is not None and cfg.feedback_pin == cfg.output_pin:
        raise ValueError(
            f"valve {cfg.name!r}: feedback_pin {cfg.feedback_pin} is also the output_pin"
        )
    if cfg.feedback_closed_level not in FEEDBACK_LEVELS:
        raise ValueError(
            f"valve {cfg.name!r}: feedback_closed_level {cfg.feedback_closed_level!r} is not "
            f"one of {', '.join(FEEDBACK_LEVELS)}"
        )
    if kind == "trip-to-close" and not PULSE_MS_MIN <= cfg.pulse_ms <= PULSE_MS_MAX:
        raise ValueError(
            f"valve {cfg.name!r}: pulse_ms {cfg.pulse_ms!r} is not within "
            f"{PULSE_MS_MIN}-{PULSE_MS_MAX}"
        )


def _coil_output(cfg: ValveConfig, pin_factory: Factory | None) -> Any:
    try:
        return DigitalOutputDevice(
            cfg.output_pin, active_high=True, initial_value=False, pin_factory=pin_factory
        )
    except GPIOZeroError as e:
        raise PinSetupError(
            f"valve {cfg.name!r}: output_pin GPIO{cfg.output_pin} cannot drive the coil: {e}"
        ) from e


def _feedback_input(cfg: ValveConfig, pin_factory: Factory | None) -> Any:
    if cfg.feedback_pin is None:
        return None
    # Pull towards "open" so that a broken wire is never read as "closed". gpiozero makes a
    # pulled-up input active-low and a pulled-down one active-high, so is_active == closed.
    pull_up = cfg.feedback_closed_level == "low"
    try:
        return DigitalInputDevice(cfg.feedback_pin, pull_up=pull_up, pin_factory=pin_factory)
    except GPIOZeroError as e:
        pull = "pull-up" if pull_up else "pull-down"
        raise PinSetupError(
            f"valve {cfg.name!r}: feedback_pin GPIO{cfg.feedback_pin} cannot be an input with "
            f"{pull} (feedback_closed_level={cfg.feedback_closed_level!r}): {e}"
        ) from e
