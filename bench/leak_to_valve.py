"""Leak -> valve: from the gas step at a detector to the valve output pin de-energised, on a
busy emulated bus, with the confirming readings taken at once (``timings.confirm_at_once``,
the default) and, in the same run, a cycle later (the old behaviour).

The site: 16 generic detectors on one 9600 8N1 bus (the emulator in another process), polled
every ``poll_period_s`` (0.5 s: the healthy cycle is ~0.42 s), in 8 zones of two detectors,
each zone behind its own held-open valve (gpiozero mock pins). A trial waits a random part of
a period (so the leak lands anywhere in the cycle), puts 60 %LEL at one detector of the next
zone still open, and measures until that zone's coil pin falls. After all 8 zones are shut the
gas goes back to normal and the local reset reopens them.

Printed: p50 / p99 of each behaviour, the bus's median cycle, and the ratio
(leak -> valve p99) / (cycle + confirming polls + valve drive), where the confirming polls are
``confirm_count - 1`` poll times on the wire (``gateway.rtu.poll_time``) and the drive is 0:
the pin is the end point (``bench.reaction`` measures reply -> pin, a fraction of a
millisecond). [target <= 1.05 with confirm_at_once]
"""

from __future__ import annotations

import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from gpiozero.pins.mock import MockFactory

from bench import Figure, emit, median, note, percentile
from bench.emulator_proc import BusSpec, DetectorSpec, EmulatorProcess
from bench.reaction import STEP_TIMEOUT_S, CoilHistory, _quiet_gasguard_logs, _wait
from gateway import configfile
from gateway.config import load_config
from gateway.core.model import ResetRequest
from gateway.profiles import default_profiles_dir, load_profiles
from gateway.rtu import poll_time
from gateway.safety.controller import Controller

PROFILE = "generic-cn-kitchen"
BAUD = 9600
DETECTORS = 16
ZONES = 8
VALVE_PINS = (9, 10, 11, 12, 13, 16, 17, 18)  # output pins the annunciator does not use
LEAK_LEL = 60.0
NORMAL_LEL = 1.0


def run(
    out: TextIO, *, trials: int = 200, poll_period_s: float = 0.5, seed: int = 16
) -> list[Figure]:
    """``trials`` leaks with each behaviour; print and return the figures."""
    if trials < ZONES:
        raise ValueError(f"trials {trials!r} is not allowed: at least {ZONES} (one per zone)")
    profile = load_profiles(default_profiles_dir())[PROFILE]
    confirm_count = 2
    frames = (confirm_count - 1) * poll_time(profile.block[1], BAUD, "N", 1)
    note(
        out,
        f"(issue 16) leak -> valve pin: {trials} leaks with the confirming readings at once, "
        f"{trials} a cycle later; {DETECTORS} detectors at {BAUD} 8N1, period {poll_period_s} s",
    )
    rng = random.Random(seed)
    figures: list[Figure] = []
    spec = BusSpec(BAUD, "N", 1, 0.001, tuple(DetectorSpec(a, PROFILE, NORMAL_LEL)
                                              for a in range(1, DETECTORS + 1)))  # fmt: skip
    with (
        _quiet_gasguard_logs(),
        tempfile.TemporaryDirectory(prefix="gasguard-bench-") as tmp,
        EmulatorProcess([spec]) as emu,
    ):
        results = {}
        for tag, at_once in (("at_once", True), ("next_cycle", False)):
            path = _site(Path(tmp) / tag, emu.paths[0], poll_period_s, at_once)
            results[tag] = _trials(emu, path, trials, poll_period_s, rng)
    for tag, (leaks, cycle) in results.items():
        p99 = percentile(leaks, 99)
        how = "confirming readings at once" if tag == "at_once" else "confirmed a cycle later"
        figures += [
            Figure(f"leak_valve_median_{tag}", median(leaks) * 1000, "ms",
                   f"gas step -> valve pin de-energised, {how}, median", 1,
                   samples=tuple(x * 1000 for x in leaks)),
            Figure(f"leak_valve_p99_{tag}", p99 * 1000, "ms", f"same, {how}, p99", 1),
            Figure(f"leak_valve_cycle_{tag}", cycle * 1000, "ms",
                   f"the bus's median cycle during those trials ({how})", 1),
            Figure(f"leak_valve_ratio_{tag}", p99 / (cycle + frames), "x",
                   f"p99 / (cycle + {confirm_count - 1} confirming poll of "
                   f"{frames * 1000:.1f} ms + drive 0), {how}"
                   + (" [target <= 1.05]" if tag == "at_once" else ""), 3),
        ]  # fmt: skip
    figures.append(
        Figure(
            "leak_valve_p99_gain",
            percentile(results["next_cycle"][0], 99) / percentile(results["at_once"][0], 99),
            "x",
            "leak -> valve p99, a cycle later / at once (the gain of confirming at once)",
        )
    )
    for fig in figures:
        emit(out, fig)
    return figures


def _site(directory: Path, port: str, poll_period_s: float, at_once: bool) -> Path:
    zones = [f"zone-{z}" for z in range(1, ZONES + 1)]
    return configfile.write(
        directory / "gasguard.toml",
        configfile.SiteFile(
            site_id="BENCH-LEAK",
            site_name="Leak to valve benchmark (simulated)",
            buses=[configfile.BusSpec("bus0", port, BAUD, "N", timeout_s=0.1)],
            detectors=[
                configfile.DetectorSpec(f"det-{a}", zones[(a - 1) % ZONES], "bus0", a, PROFILE)
                for a in range(1, DETECTORS + 1)
            ],
            valves=[
                configfile.ValveSpec(f"valve-{z}", (zone,), pin, None)
                for z, (zone, pin) in enumerate(zip(zones, VALVE_PINS, strict=True), start=1)
            ],
            poll_period_s=poll_period_s,
            comm_fault_timeout_s=5.0,
            confirm_at_once=at_once,
            comment="Generated by gasguard's benchmarks. SIMULATION.",
        ),
    )


def _trials(
    emu: EmulatorProcess, path: Path, trials: int, period: float, rng: random.Random
) -> tuple[list[float], float]:
    """Leak -> pin times (s) of ``trials`` leaks, and the median cycle (s) meanwhile."""
    factory = MockFactory()
    controller = Controller(load_config(path), pin_factory=factory, simulated=True)
    coils = [CoilHistory(factory.pin(pin)) for pin in VALVE_PINS]
    leaks: list[float] = []
    cycles: list[float] = []
    try:
        controller.start()
        _wait(controller.first_poll_done.is_set, STEP_TIMEOUT_S, "the first complete poll")
        _reset_all(controller, coils)
        while len(leaks) < trials:
            for zone in range(ZONES):
                if len(leaks) >= trials:
                    break
                address = zone + 1 + ZONES * rng.randrange(2)  # either detector of the zone
                time.sleep(rng.uniform(0.0, period))
                t_set = time.monotonic()
                emu.set_gas(0, address, LEAK_LEL)
                coil = coils[zone]
                _wait(_closed(coil), STEP_TIMEOUT_S, "the zone's valve closing")
                closed_at = coil.first_fall_after(t_set)
                if closed_at is None:
                    raise RuntimeError(f"valve-{zone + 1}: no falling edge after the leak")
                leaks.append(closed_at - t_set)
            for address in range(1, DETECTORS + 1):
                emu.set_gas(0, address, NORMAL_LEL)
            cycles += _cycle_lengths(controller)
            _reset_all(controller, coils)
    finally:
        controller.stop()
        factory.close()
    return leaks, statistics.median(cycles)


def _closed(coil: CoilHistory) -> Callable[[], bool]:
    return lambda: not coil.energised


def _cycle_lengths(controller: Controller) -> list[float]:
    starts = [start for _, start in controller.buses[0].stats.recent_cycles]
    return [b - a for a, b in itertools.pairwise(starts)]


def _reset_all(controller: Controller, coils: list[CoilHistory]) -> None:
    """The local reset once every detector is normal again, until every coil is energised."""
    deadline = time.monotonic() + 3 * STEP_TIMEOUT_S
    while not all(c.energised for c in coils):
        if time.monotonic() > deadline:
            snap = controller.snapshot
            raise TimeoutError(
                f"leak benchmark: valves not reopened; blockers "
                f"{snap.reset_blockers if snap is not None else 'no snapshot'}"
            )
        snap = controller.snapshot
        if snap is not None and not snap.reset_blockers:
            controller.submit(ResetRequest(time.monotonic(), "bench"))
            time.sleep(0.05)
        else:
            time.sleep(0.01)
