"""``gasguard demo``: the whole controller on a simulated kitchen, with a scripted leak.

The scenario: start-up (gas off until a local reset) → the cook holds the reset button → gas on
→ normal cooking → an LPG leak in the LPG room → alarm confirmed, that zone's valve closed while
the hot kitchen's valve stays open → a reset while gas is still present is refused → the gas
disperses, the alarm stays latched, the valve stays closed → the cook holds the reset button →
gas on again.

With ``--once`` it prints each step and a summary instead of the live view, and exits 0 only if
the valve closed on the leak and stayed closed until the accepted reset.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import log
from gateway.api.render import render_events, render_status
from gateway.safety.controller import Controller
from gateway.sim.kitchen import SimulatedKitchen
from gateway.store.events import EventStore

BANNER = "*** SIMULATION — simulated kitchen, emulated detectors, no real gas or valve ***"
LEAK_AT = "lpg-store"  # a Honeywell XCD on the 19200 8E1 bus, in zone lpg-room
LEAK_VALVE = "lpg-manifold"
OTHER_VALVE = "main-inlet"


@dataclass
class DemoResult:
    leak_to_valve_s: float | None = None
    closed_on_leak: bool = False
    reopened_before_reset: bool = False
    reset_refused_with_gas: bool = False
    reopened_after_reset: bool = False
    other_zone_kept_gas: bool = False
    steps: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.closed_on_leak
            and not self.reopened_before_reset
            and self.reset_refused_with_gas
            and self.reopened_after_reset
            and self.other_zone_kept_gas
        )


def _wait(cond: Callable[[], bool], timeout: float, poll: float = 0.001) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return cond()


def run_scenario(
    kitchen: SimulatedKitchen,
    controller: Controller,
    say: Callable[[str], None],
    speed: float = 1.0,
) -> DemoResult:
    """Drive the scripted scenario; ``say`` reports each step."""
    result = DemoResult()

    def step(text: str) -> None:
        result.steps.append(text)
        say(text)

    def pause(seconds: float) -> None:
        time.sleep(seconds / speed)

    step("Controller started: every valve starts closed; gas stays off until a local reset.")
    if not controller.first_poll_done.wait(10):
        step("FAILED: no complete poll of every detector within 10 s")
        return result
    kitchen.set_all_gas(1.5)
    pause(1.5)
    step("The cook holds the RESET button for 2 s ...")
    kitchen.press_reset()

    def both_open() -> bool:
        return all(kitchen.valve_coil_energised(v) for v in kitchen.valves)

    if not _wait(both_open, 3):
        step("FAILED: the reset did not open the valves")
        return result
    step("Reset accepted: both valves are open, the kitchen is cooking.")
    pause(3)
    step(f"LPG LEAK in the LPG room: gas at {LEAK_AT} rises to 62 %LEL.")
    t_leak = kitchen.set_gas(LEAK_AT, 62.0)
    if _wait(lambda: not kitchen.valve_coil_energised(LEAK_VALVE), 5):
        result.closed_on_leak = True
        closed_at = kitchen.valve_coil_closed_at(t_leak, LEAK_VALVE)
        result.leak_to_valve_s = None if closed_at is None else closed_at - t_leak
        took = "" if closed_at is None else f" {(closed_at - t_leak) * 1000:.0f} ms after the leak"
        result.other_zone_kept_gas = kitchen.valve_coil_energised(OTHER_VALVE)
        step(
            f"Alarm confirmed by 2 readings: {LEAK_VALVE} CLOSED{took}; {OTHER_VALVE} (other "
            "zone) stays open. Sounder on, red light flashing."
        )
    else:
        step("FAILED: the valve did not close within 5 s of the leak")
        return result

    def watch_reopen() -> None:
        while not stop_watch.is_set():
            if kitchen.valve_coil_energised(LEAK_VALVE) and not reset_started.is_set():
                result.reopened_before_reset = True
            time.sleep(0.005)

    stop_watch, reset_started = threading.Event(), threading.Event()
    watcher = threading.Thread(target=watch_reopen, daemon=True)
    watcher.start()
    pause(2)
    kitchen.set_gas(LEAK_AT, 35.0)
    pause(1.5)
    step("The cook holds RESET while gas is still at 35 %LEL ...")
    before = _count_events(controller, "operator.reset_refused")
    kitchen.press_reset()
    if _wait(lambda: _count_events(controller, "operator.reset_refused") > before, 2, 0.05):
        result.reset_refused_with_gas = True
        blockers = controller.snapshot.reset_blockers if controller.snapshot else ()
        step("Reset REFUSED: " + "; ".join(blockers))
    pause(1)
    step(f"The gas disperses ({LEAK_AT} back to 1 %LEL). The alarm stays latched, gas stays off.")
    kitchen.set_gas(LEAK_AT, 1.0)
    pause(3)
    step("The cook checks the kitchen and holds RESET for 2 s ...")
    reset_started.set()
    kitchen.press_reset()
    result.reopened_after_reset = _wait(lambda: kitchen.valve_coil_energised(LEAK_VALVE), 3)
    stop_watch.set()
    watcher.join(1)
    if result.reopened_after_reset:
        step("Reset accepted: the valve is open again.")
    else:
        step("FAILED: the valve did not reopen after the reset")
    pause(1)
    return result


def _count_events(controller: Controller, kind: str) -> int:
    controller.recorder.flush(2) if controller.recorder else None
    with EventStore.open_readonly(controller.events_path) as reader:
        return sum(1 for e in reader.recent(1000) if e.kind == kind)


def run_demo(once: bool = False, speed: float = 1.0) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gasguard-demo-"))
    kitchen = SimulatedKitchen(workdir)
    logbuf = io.StringIO()
    try:
        config = kitchen.start()
        # The controller's own log lines would bury the scenario: they go to a buffer.
        with contextlib.redirect_stdout(logbuf):
            log.setup()
        controller = Controller(config, pin_factory=kitchen.factory, simulated=True)
        controller.start()
        try:
            if once:
                print(BANNER)
                result = run_scenario(kitchen, controller, lambda s: print(f"- {s}"), speed)
            else:
                result = _live(kitchen, controller, speed)
        finally:
            controller.stop()
        _summary(result, controller)
        return 0 if result.passed else 1
    finally:
        kitchen.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _live(kitchen: SimulatedKitchen, controller: Controller, speed: float) -> DemoResult:
    """The scenario in a thread, the status redrawn in the terminal twice a second."""
    lines: list[str] = []
    out: dict[str, Any] = {}

    def scenario() -> None:
        out["result"] = run_scenario(kitchen, controller, lines.append, speed)

    thread = threading.Thread(target=scenario, daemon=True)
    thread.start()
    tty = sys.stdout.isatty()
    while thread.is_alive():
        screen = [BANNER, ""]
        with contextlib.suppress(RuntimeError):
            screen.append(render_status(controller.status()))
        screen += ["", "Scenario:"] + [f"  - {s}" for s in lines[-8:]]
        text = "\n".join(screen)
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            sys.stdout.write(text + "\n\n")
        sys.stdout.flush()
        thread.join(0.5)
    result: DemoResult = out.get("result", DemoResult())
    return result


def _summary(result: DemoResult, controller: Controller) -> None:
    print()
    print(BANNER)
    print("Summary")
    leak = (
        f"{result.leak_to_valve_s * 1000:.0f} ms"
        if result.leak_to_valve_s is not None
        else "valve did not close"
    )
    print(f"  leak to valve closed:           {leak} ({LEAK_AT} -> {LEAK_VALVE})")
    print(f"  valve closed on the leak:       {'yes' if result.closed_on_leak else 'NO'}")
    print(f"  reopened before the reset:      {'YES' if result.reopened_before_reset else 'no'}")
    print(f"  reset refused while gas present: {'yes' if result.reset_refused_with_gas else 'NO'}")
    print(f"  reopened after the reset:       {'yes' if result.reopened_after_reset else 'NO'}")
    print(f"  other zone kept its gas:        {'yes' if result.other_zone_kept_gas else 'NO'}")
    with EventStore.open_readonly(controller.events_path) as reader:
        events = reader.recent(200)
    print()
    print("Events recorded:")
    print(render_events(events))
    print()
    print("PASS" if result.passed else "FAIL")
