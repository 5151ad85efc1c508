"""The annunciator (sounder, lights, silence and reset buttons) on gpiozero's MockFactory.

Outputs are checked from each mock pin's recorded state history (``MockPin.states``: each entry
is the new state and how long the previous state lasted); buttons are pressed by driving the
mock input pin low (buttons are wired to ground, pulled up).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gateway.config import AnnunciatorConfig
from gateway.core.model import Light
from gateway.drivers.annunciator import Annunciator
from gateway.drivers.pins import PinSetupError

SOUNDER, RED, YELLOW, GREEN, SILENCE, RESET = 22, 23, 24, 25, 5, 6


def ann_cfg(**changes: float) -> AnnunciatorConfig:
    values: dict[str, float] = {
        "sounder_pin": SOUNDER,
        "red_pin": RED,
        "yellow_pin": YELLOW,
        "green_pin": GREEN,
        "silence_pin": SILENCE,
        "reset_pin": RESET,
        "reset_hold_s": 2.0,
    }
    values.update(changes)
    return AnnunciatorConfig(
        sounder_pin=int(values["sounder_pin"]),
        red_pin=int(values["red_pin"]),
        yellow_pin=int(values["yellow_pin"]),
        green_pin=int(values["green_pin"]),
        silence_pin=int(values["silence_pin"]),
        reset_pin=int(values["reset_pin"]),
        reset_hold_s=values["reset_hold_s"],
    )


def history(factory: MockFactory, pin: int) -> list[bool]:
    return [bool(s.state) for s in factory.pin(pin).states]


def phases(factory: MockFactory, pin: int) -> list[tuple[bool, float]]:
    """(state, duration) of every completed phase after the first change."""
    states = factory.pin(pin).states
    return [(bool(states[i].state), states[i + 1].timestamp) for i in range(1, len(states) - 1)]


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


class Calls:
    """Records button callbacks, from whichever gpiozero thread they come."""

    def __init__(self) -> None:
        self.silence: list[float] = []
        self.reset: list[float] = []
        self._lock = threading.Lock()

    def on_silence(self) -> None:
        with self._lock:
            self.silence.append(time.monotonic())

    def on_reset(self) -> None:
        with self._lock:
            self.reset.append(time.monotonic())


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def ann(factory: MockFactory, calls: Calls) -> Iterator[Annunciator]:
    a = Annunciator(ann_cfg(), calls.on_silence, calls.on_reset, pin_factory=factory)
    yield a
    a.close()


OUTPUTS = (SOUNDER, RED, YELLOW, GREEN)


# -- outputs -------------------------------------------------------------------------------------


def test_outputs_start_off(factory: MockFactory, ann: Annunciator) -> None:
    for pin in OUTPUTS:
        assert factory.pin(pin).function == "output"
        assert history(factory, pin) == [False]
    state = ann.pin_states()
    assert (state.sounder, state.red, state.yellow, state.green) == (
        False,
        Light.OFF,
        Light.OFF,
        Light.OFF,
    )


def test_steady_on_and_off_and_the_sounder_follow_show(
    factory: MockFactory, ann: Annunciator
) -> None:
    # The sounder is written at once; the lights by the annunciator's light thread, promptly.
    ann.show(False, Light.OFF, Light.OFF, Light.ON)
    assert wait_until(lambda: history(factory, GREEN) == [False, True], 1.0)
    assert history(factory, SOUNDER) == [False]

    ann.show(True, Light.ON, Light.OFF, Light.ON)
    assert history(factory, SOUNDER) == [False, True]
    assert wait_until(lambda: history(factory, RED) == [False, True], 1.0)

    ann.show(False, Light.OFF, Light.ON, Light.OFF)
    assert history(factory, SOUNDER) == [False, True, False]
    assert wait_until(lambda: history(factory, GREEN) == [False, True, False], 1.0)
    assert history(factory, RED) == [False, True, False]
    assert history(factory, YELLOW) == [False, True]
    state = ann.pin_states()
    assert (state.sounder, state.red, state.yellow, state.green) == (
        False,
        Light.OFF,
        Light.ON,
        Light.OFF,
    )


def test_flash_rates_follow_gb16808(factory: MockFactory, ann: Annunciator) -> None:
    ann.show(True, Light.FLASH_ALARM, Light.FLASH_FAULT, Light.ON)
    # Red: 1 Hz, 0.5 s on / 0.5 s off. Yellow: 0.5 Hz, 1 s on / 1 s off.
    assert wait_until(
        lambda: len(phases(factory, RED)) >= 4 and len(phases(factory, YELLOW)) >= 2,
        timeout_s=8.0,
    )
    red = phases(factory, RED)
    yellow = phases(factory, YELLOW)
    assert history(factory, RED)[:3] == [False, True, False]
    assert [on for on, _ in red] == [True, False] * (len(red) // 2) + [True] * (len(red) % 2)
    assert all(0.45 <= d <= 0.5 + 0.3 for _, d in red), red
    assert [on for on, _ in yellow[:2]] == [True, False]
    assert all(0.95 <= d <= 1.0 + 0.4 for _, d in yellow), yellow
    # Steady outputs did not flicker meanwhile.
    assert history(factory, GREEN) == [False, True]
    assert history(factory, SOUNDER) == [False, True]


def test_a_flashing_light_turned_steady_stops_flashing(
    factory: MockFactory, ann: Annunciator
) -> None:
    ann.show(False, Light.FLASH_ALARM, Light.OFF, Light.OFF)
    assert wait_until(lambda: len(factory.pin(RED).states) >= 3)  # on, then off
    ann.show(False, Light.ON, Light.OFF, Light.OFF)
    assert wait_until(lambda: bool(factory.pin(RED).state), 1.0)
    time.sleep(0.05)
    changes = len(factory.pin(RED).states)
    time.sleep(0.7)  # longer than a flash phase
    assert len(factory.pin(RED).states) == changes
    assert factory.pin(RED).state
    ann.show(False, Light.OFF, Light.OFF, Light.OFF)
    assert wait_until(lambda: not factory.pin(RED).state, 1.0)
    changes = len(factory.pin(RED).states)
    time.sleep(0.7)
    assert len(factory.pin(RED).states) == changes


def test_repeated_show_touches_no_pin(factory: MockFactory, ann: Annunciator) -> None:
    ann.show(True, Light.ON, Light.OFF, Light.ON)
    assert wait_until(lambda: history(factory, GREEN) == [False, True], 1.0)
    time.sleep(0.05)
    before = {pin: history(factory, pin) for pin in OUTPUTS}
    for _ in range(5):
        ann.show(True, Light.ON, Light.OFF, Light.ON)
    time.sleep(0.1)
    assert {pin: history(factory, pin) for pin in OUTPUTS} == before


def test_repeated_show_keeps_a_flash_rhythm(factory: MockFactory, ann: Annunciator) -> None:
    # Were each call to restart the blink, the light would stay in its first "on" phase.
    deadline = time.monotonic() + 1.7
    while time.monotonic() < deadline:
        ann.show(False, Light.FLASH_ALARM, Light.OFF, Light.ON)
        time.sleep(0.02)
    red = phases(factory, RED)
    assert len(red) >= 2, red
    assert all(0.45 <= d <= 0.5 + 0.3 for _, d in red), red
    assert history(factory, GREEN) == [False, True]


def test_close_switches_every_output_off_and_releases_the_pins(
    factory: MockFactory, calls: Calls
) -> None:
    a = Annunciator(ann_cfg(), calls.on_silence, calls.on_reset, pin_factory=factory)
    a.show(True, Light.FLASH_ALARM, Light.ON, Light.ON)
    a.close()
    a.close()
    for pin in OUTPUTS:
        assert history(factory, pin)[-1] is False
        assert factory.pin(pin).function == "input"
    # The pins are free for a new annunciator.
    Annunciator(ann_cfg(), calls.on_silence, calls.on_reset, pin_factory=factory).close()


# -- buttons -------------------------------------------------------------------------------------


def test_silence_press_calls_on_silence(
    factory: MockFactory, ann: Annunciator, calls: Calls
) -> None:
    button = factory.pin(SILENCE)
    assert button.state  # pulled up: released
    assert not ann.pin_states().silence_pressed
    button.drive_low()
    assert wait_until(lambda: len(calls.silence) == 1)
    assert ann.pin_states().silence_pressed
    button.drive_high()
    button.drive_low()
    button.drive_high()
    assert wait_until(lambda: len(calls.silence) == 2)
    assert calls.reset == []


def test_short_reset_presses_do_not_reset(
    factory: MockFactory, ann: Annunciator, calls: Calls
) -> None:
    button = factory.pin(RESET)
    start = time.monotonic()
    # Two presses of 1.2 s: together longer than the 2 s hold, each one shorter.
    for _ in range(2):
        button.drive_low()
        assert ann.pin_states().reset_pressed
        time.sleep(1.2)
        button.drive_high()
        time.sleep(0.1)
    time.sleep(max(0.0, start + 2.8 - time.monotonic()))
    assert calls.reset == []
    assert calls.silence == []


def test_reset_held_for_the_hold_time_resets_once(
    factory: MockFactory, ann: Annunciator, calls: Calls
) -> None:
    button = factory.pin(RESET)
    pressed_at = time.monotonic()
    button.drive_low()
    time.sleep(1.5)
    assert calls.reset == []  # gpiozero's hold thread cannot fire before hold_time
    assert wait_until(lambda: len(calls.reset) == 1)
    assert calls.reset[0] - pressed_at >= 2.0
    # A stuck reset button must not reset again and again.
    time.sleep(2.3)
    assert len(calls.reset) == 1
    button.drive_high()
    assert calls.silence == []


def test_a_failing_callback_does_not_break_the_button(factory: MockFactory) -> None:
    presses: list[int] = []

    def on_silence() -> None:
        presses.append(1)
        raise RuntimeError("queue full")

    a = Annunciator(ann_cfg(), on_silence, lambda: None, pin_factory=factory)
    try:
        button = factory.pin(SILENCE)
        for _ in range(2):
            button.drive_low()  # MockPin runs the callback in this thread: it must not raise
            button.drive_high()
        assert len(presses) == 2
    finally:
        a.close()


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reset_hold_s": 1.0}, r"reset_hold_s 1.0 is below 2 s"),
        ({"reset_hold_s": float("nan")}, r"reset_hold_s nan"),
        ({"sounder_pin": 4}, r"annunciator.sounder_pin 4 is not one of 9, 10"),
        ({"red_pin": 15}, r"annunciator.red_pin 15 "),
        ({"reset_pin": 40}, r"annunciator.reset_pin 40 is not one of 2, 3"),
    ],
)
def test_bad_annunciator_config_is_refused_and_takes_no_pin(
    factory: MockFactory, changes: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Annunciator(ann_cfg(**changes), lambda: None, lambda: None, pin_factory=factory)
    assert factory.pins == {}


def test_a_pin_used_twice_is_a_setup_error_and_releases_everything(factory: MockFactory) -> None:
    with pytest.raises(PinSetupError, match=r"annunciator.green_pin GPIO23"):
        Annunciator(ann_cfg(green_pin=RED), lambda: None, lambda: None, pin_factory=factory)
    for pin in (SOUNDER, RED, YELLOW):
        assert factory.pin(pin).function == "input"
        assert history(factory, pin) == [False]
    Annunciator(ann_cfg(), lambda: None, lambda: None, pin_factory=factory).close()


def test_show_never_waits_for_the_light_thread(factory: MockFactory, ann: Annunciator) -> None:
    """The safety thread's call returns while the light thread cannot run: here it is held
    inside a pin write until the test lets it go (gpiozero's blink() would join it)."""
    entered = threading.Event()
    release = threading.Event()
    red = factory.pin(RED)
    cls = type(red)
    original = cls._set_state

    def held_write(pin: Any, value: Any) -> None:
        if pin is red:
            entered.set()
            release.wait(30)
        original(pin, value)

    cls._set_state = held_write
    try:
        ann.show(False, Light.FLASH_ALARM, Light.OFF, Light.OFF)
        assert entered.wait(2), "the light thread never wrote the red light"

        def safety_thread() -> None:
            for light in (Light.ON, Light.OFF, Light.FLASH_ALARM, Light.ON):
                ann.show(True, light, Light.FLASH_FAULT, Light.ON)

        caller = threading.Thread(target=safety_thread)
        caller.start()
        caller.join(10)  # a deadlock guard, not a timing: it returns as soon as it ran
        returned_while_held = not caller.is_alive() and not release.is_set()
        assert factory.pin(SOUNDER).state  # the sounder was written at once
    finally:
        release.set()
        cls._set_state = original
    assert returned_while_held
    assert wait_until(lambda: bool(red.state), 2.0)  # and the lights caught up
