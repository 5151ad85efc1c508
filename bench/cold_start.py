"""(d) Cold start: from spawning the safety process (``python -m gateway.safety.main --config
FILE``) to its first completed poll.

The outside figure is spawn -> the ``event=controller.ready`` line on its stdout, which the
controller logs the moment every detector has a reading or a fault; that line also carries
``first_poll_s``, the same moment measured inside from ``Controller.start``. Each run gets a
fresh data directory (a first boot: the event store is created). Same site as the resources
benchmark: 8 detectors on two emulated buses in another process, mock pins. Baseline: spawn ->
exit of ``python -c "import gateway.safety.main"`` (the interpreter and the imports alone).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TextIO

from bench import Figure, emit, median, note
from bench.emulator_proc import EmulatorProcess
from bench.procutil import child_env, python
from bench.resources import BUSES, ControllerProcess, emulated_buses, site_buses
from bench.siteconfig import write_site_config

FIRST_POLL_RE = re.compile(r"\bfirst_poll_s=([0-9.]+)")
# A pty that was just opened with parity is parked by the emulator within 0.2 s of idling;
# opening it again before that fails once and the poller retries only after 1 s (see
# BusEmulator._park_line), which would be charged to the next cold start.
SETTLE_S = 0.5


def run(
    out: TextIO,
    *,
    runs: int = 5,
    baseline_runs: int = 5,
    per_bus: int = 4,
    poll_period_s: float = 0.5,
) -> list[Figure]:
    """Start the controller ``runs`` times; print and return the figures."""
    if runs < 1 or baseline_runs < 1 or per_bus < 1:
        raise ValueError(
            f"runs {runs!r}, baseline_runs {baseline_runs!r} and per_bus {per_bus!r} must be >= 1"
        )
    note(
        out,
        f"(d) cold start: {runs} runs of the safety process, {per_bus * len(BUSES)} "
        f"detectors, poll period {poll_period_s:g} s, fresh data directory each",
    )
    ready: list[float] = []
    inside: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="gasguard-bench-") as tmp,
        EmulatorProcess(emulated_buses(per_bus)) as emu,
    ):
        for i in range(runs):
            config = write_site_config(
                Path(tmp) / f"run{i}", site_buses(emu.paths, per_bus), poll_period_s=poll_period_s
            )
            time.sleep(SETTLE_S)
            controller = ControllerProcess(config)
            try:
                ready.append(controller.wait_ready())
            finally:
                controller.stop()
            m = FIRST_POLL_RE.search(controller.ready_line)
            if m is None:
                raise RuntimeError(
                    f"controller.ready line has no first_poll_s: {controller.ready_line!r}"
                )
            inside.append(float(m.group(1)))
    imports: list[float] = []
    for _ in range(baseline_runs):
        t0 = time.monotonic()
        subprocess.run(
            [python(), "-c", "import gateway.safety.main"],
            check=True,
            env=child_env(GPIOZERO_PIN_FACTORY="mock"),
        )
        imports.append(time.monotonic() - t0)
    figures = [
        Figure(
            "cold_start_ready",
            median(ready),
            "s",
            f"spawn -> controller.ready (first complete poll), median of {runs} [target <= 0.5 s]",
            decimals=3,
        ),
        Figure("cold_start_ready_max", max(ready), "s", "same, slowest run", decimals=3),
        Figure(
            "cold_start_first_poll_inside",
            median(inside),
            "s",
            "first_poll_s from the ready line: Controller.start -> first complete poll, median",
            decimals=3,
        ),
        Figure(
            "cold_start_import_baseline",
            median(imports),
            "s",
            f"baseline: spawn -> exit of python -c 'import gateway.safety.main', median of "
            f"{baseline_runs}",
            decimals=3,
        ),
        Figure(
            "cold_start_vs_import",
            median(ready) / median(imports),
            "x",
            "cold start / that baseline",
        ),
    ]
    for fig in figures:
        emit(out, fig)
    return figures
