"""The shutoff-valve drivers and the simulated valve body, on gpiozero's MockFactory.

Real gpiozero devices on mock pins: every assertion reads the pin's recorded state history
(``MockPin.states``: each entry is the new state and the time the previous state lasted).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from gpiozero import DigitalInputDevice, DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

from gateway.config import ValveConfig
from gateway.drivers.pins import PinSetupError, pin_factory_for
from gateway.drivers.valve import HeldOpenValve, ShutoffValve, TripToCloseValve, make_valve
from gateway.sim.valve_mechanism import ValveMechanism

OUT = 17
FB = 27


def valve_cfg(
    kind: str = "held-open",
    *,
    pulse_ms: int = 0,
    feedback_pin: int | None = FB,
    level: str = "high",
    output_pin: int = OUT,
    name: str = "main-inlet",
) -> ValveConfig:
    return ValveConfig(
        name=name,
        kind=kind,
        output_pin=output_pin,
        pulse_ms=pulse_ms,
        feedback_pin=feedback_pin,
        feedback_closed_level=level,
        close_confirm_s=2.0,
        zones=("hot-kitchen",),
    )


def history(factory: MockFactory, pin: int) -> list[bool]:
    return [bool(s.state) for s in factory.pin(pin).states]


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = pin_factory_for("mock")
    assert isinstance(f, MockFactory)
    yield f
    f.reset()


@pytest.fixture
def valves(factory: MockFactory) -> Iterator[Callable[[ValveConfig], ShutoffValve]]:
    made: list[ShutoffValve] = []

    def make(cfg: ValveConfig) -> ShutoffValve:
        v = make_valve(cfg, factory)
        made.append(v)
        return v

    yield make
    for v in made:
        v.close()


# -- pin factory ---------------------------------------------------------------------------------


def test_pin_factory_kinds() -> None:
    assert pin_factory_for(None) is None
    assert pin_factory_for("auto") is None
    assert isinstance(pin_factory_for("mock"), MockFactory)
    with pytest.raises(ValueError, match=r"'lgpio5'.*auto, mock"):
        pin_factory_for("lgpio5")


# -- held-open -----------------------------------------------------------------------------------


def test_held_open_starts_de_energised_and_energises_only_while_open(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    valve = valves(valve_cfg())
    assert isinstance(valve, HeldOpenValve)
    assert valve.kind == "held-open" and valve.name == "main-inlet"
    assert factory.pin(OUT).function == "output"
    assert history(factory, OUT) == [False]
    assert not valve.coil_energised

    valve.command(True)
    assert history(factory, OUT) == [False, True]
    assert valve.coil_energised
    valve.command(False)
    assert history(factory, OUT) == [False, True, False]
    assert not valve.coil_energised


def test_held_open_repeated_command_changes_no_pin(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    valve = valves(valve_cfg())
    valve.command(False)
    valve.command(False)
    assert history(factory, OUT) == [False]
    valve.command(True)
    valve.command(True)
    valve.command(True)
    assert history(factory, OUT) == [False, True]
    valve.command(False)
    valve.command(False)
    assert history(factory, OUT) == [False, True, False]


def test_held_open_close_command_corrects_an_output_found_energised(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    valve = valves(valve_cfg())
    factory.pin(OUT).state = True  # whatever drove it: the next close command must undo it
    valve.command(False)
    assert history(factory, OUT) == [False, True, False]


def test_held_open_close_de_energises_then_releases_pins(factory: MockFactory) -> None:
    valve = make_valve(valve_cfg(), factory)
    valve.command(True)
    valve.close()
    valve.close()  # twice is harmless
    # MockPin.close() only turns the pin into an input; the low level comes from the driver.
    assert history(factory, OUT) == [False, True, False]
    assert factory.pin(OUT).function == "input"
    # Both pins are free again: a new valve can take them.
    again = make_valve(valve_cfg(), factory)
    again.close()


# -- trip-to-close -------------------------------------------------------------------------------


def pulse_widths(factory: MockFactory, pin: int) -> list[float]:
    """Durations of the high phases in the pin's history."""
    states = factory.pin(pin).states
    return [states[i + 1].timestamp for i in range(len(states) - 1) if states[i].state]


def test_trip_to_close_gives_one_pulse_of_the_configured_width(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    valve = valves(valve_cfg("trip-to-close", pulse_ms=100))
    assert isinstance(valve, TripToCloseValve)
    assert history(factory, OUT) == [False]
    assert valve.armed

    valve.command(False)
    assert wait_until(lambda: len(factory.pin(OUT).states) == 3)
    assert history(factory, OUT) == [False, True, False]
    (width,) = pulse_widths(factory, OUT)
    assert 0.09 <= width <= 0.1 + 0.4
    assert not valve.armed

    # A repeated close gives no second pulse.
    valve.command(False)
    valve.command(False)
    time.sleep(0.3)
    assert history(factory, OUT) == [False, True, False]

    # Open re-arms without driving the coil; the next close pulses again.
    valve.command(True)
    assert history(factory, OUT) == [False, True, False]
    assert valve.armed
    valve.command(False)
    assert wait_until(lambda: len(factory.pin(OUT).states) == 5)
    assert history(factory, OUT) == [False, True, False, True, False]
    assert all(0.09 <= w <= 0.5 for w in pulse_widths(factory, OUT))


def test_trip_to_close_open_command_drives_nothing(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    valve = valves(valve_cfg("trip-to-close", pulse_ms=50))
    valve.command(True)
    valve.command(True)
    time.sleep(0.15)
    assert history(factory, OUT) == [False]
    assert not valve.coil_energised


def test_trip_to_close_reclose_during_a_pulse_does_not_extend_it(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    valve = valves(valve_cfg("trip-to-close", pulse_ms=400))
    valve.command(False)
    time.sleep(0.3)  # mid-pulse: open (re-arms), then close again
    valve.command(True)
    valve.command(False)
    assert wait_until(lambda: len(factory.pin(OUT).states) >= 3)
    time.sleep(0.2)
    assert history(factory, OUT) == [False, True, False]
    # One pulse of 0.4 s, not 0.3 s + a fresh 0.4 s.
    (width,) = pulse_widths(factory, OUT)
    assert 0.39 <= width <= 0.4 + 0.25


def test_trip_to_close_close_lets_a_running_pulse_finish(factory: MockFactory) -> None:
    valve = make_valve(valve_cfg("trip-to-close", pulse_ms=300), factory)
    valve.command(False)
    valve.close()
    assert history(factory, OUT) == [False, True, False]
    (width,) = pulse_widths(factory, OUT)
    assert width >= 0.29
    assert factory.pin(OUT).function == "input"


# -- position feedback ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["high", "low"])
def test_feedback_polarity_and_broken_wire_reads_open(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve], level: str
) -> None:
    valve = valves(valve_cfg(level=level))
    pin = factory.pin(FB)
    assert pin.function == "input"
    # Nothing drives the input (broken wire): the pull makes it read "open".
    assert pin.pull == ("down" if level == "high" else "up")
    assert valve.feedback_closed() is False

    closing, opening = (
        (pin.drive_high, pin.drive_low)
        if level == "high"
        else (
            pin.drive_low,
            pin.drive_high,
        )
    )
    closing()
    assert valve.feedback_closed() is True
    opening()
    assert valve.feedback_closed() is False


def test_no_feedback_pin_gives_none(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    valve = valves(valve_cfg(feedback_pin=None))
    assert valve.feedback_closed() is None
    trip = valves(valve_cfg("trip-to-close", pulse_ms=50, feedback_pin=None, output_pin=22))
    assert trip.feedback_closed() is None


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (valve_cfg(kind="normally-open"), r"'main-inlet'.*kind 'normally-open'.*held-open"),
        (valve_cfg("trip-to-close", pulse_ms=0), r"'main-inlet'.*pulse_ms 0.*10-5000"),
        (valve_cfg(output_pin=4), r"'main-inlet'.*output_pin 4 .*9, 10"),
        (valve_cfg(output_pin=14), r"output_pin 14 "),
        (valve_cfg(level="middle"), r"feedback_closed_level 'middle'.*high, low"),
        (valve_cfg(feedback_pin=OUT), r"feedback_pin 17 is also the output_pin"),
    ],
)
def test_bad_valve_config_is_refused_and_takes_no_pin(
    factory: MockFactory, cfg: ValveConfig, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_valve(cfg, factory)
    assert factory.pins == {}


def test_pin_in_use_is_a_setup_error_and_releases_the_coil(factory: MockFactory) -> None:
    other = DigitalInputDevice(FB, pin_factory=factory)
    try:
        with pytest.raises(PinSetupError, match=r"'main-inlet'.*feedback_pin GPIO27"):
            make_valve(valve_cfg(), factory)
        # The coil output taken before the failure was released, de-energised.
        assert history(factory, OUT) == [False]
        coil = DigitalOutputDevice(OUT, pin_factory=factory)
        coil.close()
    finally:
        other.close()
    first = make_valve(valve_cfg(), factory)
    try:
        with pytest.raises(PinSetupError, match=r"'second'.*output_pin GPIO17"):
            make_valve(valve_cfg(name="second", feedback_pin=None), factory)
    finally:
        first.close()


# -- the simulated valve body --------------------------------------------------------------------


@pytest.mark.parametrize("level", ["high", "low"])
def test_mechanism_confirms_held_open_moves_after_its_travel_time(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve], level: str
) -> None:
    cfg = valve_cfg(level=level)
    valve = valves(cfg)
    travel = 0.2
    with ValveMechanism(factory, cfg, travel) as body:
        # De-energised held-open valve: closed, and the contact says so.
        assert wait_until(lambda: valve.feedback_closed() is True)
        t_open = time.monotonic()
        valve.command(True)
        assert wait_until(lambda: valve.feedback_closed() is False)
        assert body.moves[-1].closed is False
        assert body.moves[-1].at - t_open >= travel

        t_close = time.monotonic()
        valve.command(False)
        assert wait_until(lambda: valve.feedback_closed() is True)
        assert body.closed
        assert body.moves[-1].closed is True
        assert body.moves[-1].at - t_close >= travel


def test_mechanism_stuck_open_never_confirms_closed(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    cfg = valve_cfg()
    valve = valves(cfg)
    travel = 0.05
    with ValveMechanism(factory, cfg, travel, stuck_open=True) as body:
        valve.command(True)
        assert wait_until(lambda: not body.closed)
        valve.command(False)
        assert wait_until(lambda: body.closed)  # the body moved ...
        time.sleep(5 * travel)
        assert valve.feedback_closed() is False  # ... but the contact never says so


def test_mechanism_stuck_closed_always_reads_closed(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    cfg = valve_cfg(level="low")
    valve = valves(cfg)
    with ValveMechanism(factory, cfg, 0.05, stuck_closed=True) as body:
        valve.command(True)
        assert wait_until(lambda: not body.closed)
        time.sleep(0.2)
        assert valve.feedback_closed() is True


def test_mechanism_trip_to_close_trips_on_a_pulse_and_reopens_only_by_hand(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    cfg = valve_cfg("trip-to-close", pulse_ms=20)  # shorter than the poll period below
    valve = valves(cfg)
    travel = 0.1
    with ValveMechanism(factory, cfg, travel, poll_s=0.05) as body:
        # Opened by hand before we started: open, and the contact says so.
        assert wait_until(lambda: valve.feedback_closed() is False)
        assert not body.closed
        t_close = time.monotonic()
        valve.command(False)
        assert wait_until(lambda: valve.feedback_closed() is True)
        assert body.moves[-1].at - t_close >= travel

        # Commanding open does not open it.
        valve.command(True)
        time.sleep(3 * travel)
        assert valve.feedback_closed() is True
        assert body.closed

        assert body.reopen_by_hand()
        assert valve.feedback_closed() is False
        # Re-armed by the open command: the next close trips it again.
        valve.command(False)
        assert wait_until(lambda: valve.feedback_closed() is True)


def test_mechanism_held_open_with_hand_reopen(
    factory: MockFactory, valves: Callable[[ValveConfig], ShutoffValve]
) -> None:
    cfg = valve_cfg()
    valve = valves(cfg)
    with ValveMechanism(factory, cfg, 0.05, hand_reopen=True) as body:
        assert not body.reopen_by_hand()  # coil off: the spring shuts it again
        valve.command(True)
        time.sleep(0.2)
        assert body.closed  # energising only holds it
        assert body.reopen_by_hand()
        assert valve.feedback_closed() is False
        valve.command(False)
        assert wait_until(lambda: valve.feedback_closed() is True)


def test_mechanism_refuses_bad_options(factory: MockFactory) -> None:
    cfg = valve_cfg()
    with pytest.raises(ValueError, match="stuck_open and stuck_closed"):
        ValveMechanism(factory, cfg, 0.1, stuck_open=True, stuck_closed=True)
    with pytest.raises(ValueError, match=r"travel_s -1 .*0-60"):
        ValveMechanism(factory, cfg, -1)
    body = ValveMechanism(factory, cfg, 0.1).start()
    body.stop()
    body.stop()
    with pytest.raises(RuntimeError, match="already started"):
        body.start()
