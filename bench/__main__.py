"""``python -m bench [NAME ...] [--quick] [--plots DIR]``: run the benchmarks (all of them by
default).

NAME is one of ``BENCHMARKS``. ``--quick`` runs each with tiny sizes: it checks the machinery
(the smoke test uses it), its figures mean nothing. Figures go to stdout as ``name: value unit``
lines; a benchmark that fails is reported on stderr, the others still run, and the exit status
is 1. Then the plots (``bench.plots``) are drawn from the samples: into ``docs/img/`` after a
full run, where docs/performance.md shows them; after ``--quick`` only into a ``--plots DIR``
given, so that meaningless figures never replace the committed ones.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from bench import Figure, note
from bench.plots import DEFAULT_DIR, write_plots

Runner = Callable[..., list[Figure]]


def _runner(module: str, function: str = "run") -> Callable[[], Runner]:
    """Import ``module`` only when its benchmark runs: one that cannot import fails alone."""

    def load() -> Runner:
        return cast(Runner, getattr(importlib.import_module(module), function))

    return load


# name -> loader of its ``run(out: TextIO, **sizes) -> list[Figure]``.
BENCHMARKS: dict[str, Callable[[], Runner]] = {
    "poll": _runner("bench.poll"),
    "bus_faults": _runner("bench.bus_faults"),
    "reaction": _runner("bench.reaction"),
    "resources": _runner("bench.resources"),
    "cold_start": _runner("bench.cold_start"),
    "reaction_flooded": _runner("bench.reaction", "run_flooded"),
    "socket_flood": _runner("bench.socket_flood"),
    "storage_writes": _runner("bench.storage_writes"),
    "uplink_mqtt": _runner("bench.uplink_mqtt"),
    "uplink_gb": _runner("bench.uplink_gb"),
    "leak_to_valve": _runner("bench.leak_to_valve"),
    "city": _runner("bench.city"),
}

# Full sizes are each run()'s defaults (about 7 minutes in all on 2 cores).
QUICK: dict[str, dict[str, Any]] = {
    "poll": {"detectors": 2, "cycles": 3, "warmup": 1},
    "bus_faults": {"seconds": 1.5, "busy_seconds": 1.5},
    "reaction": {"trials": 3, "baseline_reads": 3},
    "resources": {"warmup_s": 0.5, "window_s": 1.5},
    "cold_start": {"runs": 1, "baseline_runs": 1},
    "reaction_flooded": {"trials": 3, "flood_per_s": 100},
    "socket_flood": {"trials": 3},
    "storage_writes": {"warmup_s": 0.5, "window_s": 2.0, "event_window_s": 3.0},
    "uplink_mqtt": {"alarms": 5, "replay": 50},
    "uplink_gb": {"samples": 5, "warmup": 1},
    "leak_to_valve": {"trials": 8},
    "city": {
        "kitchens": 20,
        "storm": 5,
        "storm_s": 0.3,
        "baseline_s": 0.5,
        "heartbeat_s": 0.5,
        "outage_s": 0.5,
        "catchup_timeout_s": 60.0,
    },
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of gasguard's safety core; figures print as 'name: value unit'.",
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: checks the machinery only, the figures mean nothing",
    )
    p.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help=f"where the plots go (default: {DEFAULT_DIR} after a full run, none after --quick)",
    )
    return p


def run_benchmarks(
    names: Sequence[str],
    quick: bool,
    out: TextIO,
    err: TextIO,
    figures: list[Figure] | None = None,
) -> int:
    """Run ``names`` in order, adding their figures to ``figures``; 0 if every one finished,
    1 otherwise."""
    failed = []
    for name in names:
        started = time.monotonic()
        kwargs = QUICK.get(name, {}) if quick else {}
        try:
            got = BENCHMARKS[name]()(out, **kwargs)
        except Exception as e:
            failed.append(name)
            err.write(f"bench {name} failed: {type(e).__name__}: {e}\n")
            traceback.print_exc(file=err)
            err.flush()
        else:
            if figures is not None:
                figures.extend(got)
            note(out, f"{name} took {time.monotonic() - started:.1f} s")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(
            f"python -m bench: unknown benchmark {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    names = args.names or list(BENCHMARKS)
    figures: list[Figure] = []
    status = run_benchmarks(names, args.quick, sys.stdout, sys.stderr, figures)
    plots = args.plots or (None if args.quick else DEFAULT_DIR)
    if plots is not None:
        for path in write_plots(figures, plots):
            note(sys.stdout, f"plot written: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
