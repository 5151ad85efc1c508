"""Which gpiozero pin factory drives the GPIO pins, and the one error GPIO set-up raises.

``pin_factory_for("auto")`` (or ``None``) leaves the choice to gpiozero: it honours
``GPIOZERO_PIN_FACTORY`` and otherwise picks lgpio, the only backend that works on a Pi 5.
``pin_factory_for("mock")`` gives a ``MockFactory`` whose pins record every state change (demo,
tests). No gpiochip number is ever named here: it changed in kernel 6.6.45, gpiozero finds it.
"""

from __future__ import annotations

from gpiozero import Factory
from gpiozero.pins.mock import MockFactory

PIN_FACTORY_KINDS = ("auto", "mock")


class PinSetupError(Exception):
    """A GPIO device could not be set up (pin in use, fixed pull, no GPIO backend).

    Raised while building valves and the annunciator, never while running: nothing is half set
    up afterwards (the pins taken so far are released, de-energised).
    """


def pin_factory_for(kind: str | None) -> Factory | None:
    """The pin factory for ``kind``: ``None`` for "auto"/None (gpiozero's own choice), a fresh
    ``MockFactory`` for "mock". Anything else is a ValueError naming the allowed kinds."""
    if kind is None or kind == "auto":
        return None
    if kind == "mock":
        return MockFactory()
    raise ValueError(f"pin factory {kind!r} is not one of {', '.join(PIN_FACTORY_KINDS)}")
