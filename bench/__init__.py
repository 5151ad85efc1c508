"""Benchmarks of gasguard's safety core: ``python -m bench [NAME ...] [--quick]``.

Every figure is printed on a line of its own as ``name: value unit`` (``reaction_p99: 2.1 ms``),
after one comment line (``# ...``) saying what it means and, where the issue sets one, its
target in brackets. Scripts read the figures with ``parse_figures``; targets are checked by
reading them, never by timed assertions in the tests.

The figures and the file that produces them:

* ``bench.poll``: poll-cycle time of 16 detectors against the physical floor of the wire;
* ``bench.bus_faults``: t3.5 kept under CRC errors, timeouts and late replies; a silent
  detector's cost to the healthy ones on a busy bus;
* ``bench.reaction``: confirming reply on the wire -> valve output pin changed;
* ``bench.resources``: the running controller's RSS and CPU with 8 detectors;
* ``bench.cold_start``: spawn -> first completed poll;
* ``bench.city``: the city desk with 10,000 simulated kitchens (``bench.city_fleet``), an alarm
  storm and faults during it (docs/city.md).

A figure that summarises a distribution keeps its samples (``Figure.samples``, in the figure's
unit): ``bench.plots`` draws them after a full run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from gateway.stats import percentile

__all__ = ["Figure", "emit", "median", "note", "parse_figures", "percentile"]

# name: value unit (the unit is one word without spaces: ms, x, MB, %, trials, polls/s)
FIGURE_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*): (\S+) (\S+)$")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure: printed as ``# meaning`` then ``name: value unit``.

    ``samples`` are the measurements the figure summarises (a median's, a p99's), in ``unit``,
    for the plots; they are not printed."""

    name: str
    value: float
    unit: str
    meaning: str
    decimals: int = 2
    samples: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(
                f"figure name {self.name!r} is not allowed: a letter, then letters, digits, '_'"
            )
        if not self.unit or any(ch.isspace() for ch in self.unit):
            raise ValueError(f"figure {self.name}: unit {self.unit!r} is not allowed: one word")
        if "\n" in self.meaning:
            raise ValueError(f"figure {self.name}: meaning must be one line, got {self.meaning!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"figure {self.name}: value {self.value!r} is not a finite number")
        if not all(math.isfinite(v) for v in self.samples):
            raise ValueError(f"figure {self.name}: a sample is not a finite number")

    def lines(self) -> str:
        return f"# {self.meaning}\n{self.name}: {self.value:.{self.decimals}f} {self.unit}\n"


def emit(out: TextIO, figure: Figure) -> Figure:
    """Print ``figure`` (its comment line, then its figure line) and flush."""
    out.write(figure.lines())
    out.flush()
    return figure


def note(out: TextIO, text: str) -> None:
    """Print a comment line (what is being measured now, how, on what)."""
    for line in text.splitlines() or [""]:
        out.write(f"# {line}\n")
    out.flush()


def parse_figures(text: str) -> dict[str, tuple[float, str]]:
    """The figures in benchmark output, by name: ``{"reaction_p99": (2.1, "ms")}``.

    Comment lines (``#``) and blank lines are skipped; any other line that is not
    ``name: value unit`` with a finite number, or a name given twice, raises ValueError naming
    the line."""
    figures: dict[str, tuple[float, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        m = FIGURE_RE.match(line)
        if m is None:
            raise ValueError(f"line {number} {line!r} is not a figure: expected 'name: value unit'")
        name, raw, unit = m.groups()
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"line {number} {line!r}: value {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"line {number} {line!r}: value {raw!r} is not a finite number")
        if name in figures:
            raise ValueError(f"line {number} {line!r}: figure {name!r} appears twice")
        figures[name] = (value, unit)
    return figures


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (at least one)."""
    if not values:
        raise ValueError("median of no values: at least one measurement is needed")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2
