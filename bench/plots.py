"""The plots a full ``make bench`` writes beside its figures (``docs/img/`` by default), drawn
from the samples the figures keep (``Figure.samples``):

* ``bench-reaction.png``: the reaction (confirming reply -> valve pin) of every trial, idle and
  with the uplinks flooded, for each way ``bench.reaction.run_flooded`` ran them. It is drawn
  as the share of trials slower than x (log scales), so the tail the p99 target is about shows.
* ``bench-poll-cycle.png``: every measured poll cycle of ``bench.poll`` and of its bare
  minimalmodbus baseline, divided by the wire's floor, with the 1.10 target.

matplotlib is imported here only, when a plot is drawn: the benchmarks themselves (the memory
one above all) never load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench import Figure, percentile

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as Drawing

REACTION_PNG = "bench-reaction.png"
POLL_PNG = "bench-poll-cycle.png"
POLL_TARGET_RATIO = 1.10  # the target for a poll cycle over the wire's floor
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "docs" / "img"

# How bench.reaction.run_flooded ran each pair of trials (its figure-name tags), in plot order.
REACTION_RUNS = {
    "rt": "as the units run it: own core, SCHED_FIFO",
    "nort": "own core, no real-time priority",
    "rt_one_box": "every process on every core",
    "recorder_rt": "flood stored by the safety recorder",
}


def write_plots(figures: Sequence[Figure], directory: Path) -> list[Path]:
    """Draw every plot whose samples are among ``figures`` into ``directory``; the files
    written (none if no benchmark that keeps samples ran)."""
    by_name = {f.name: f for f in figures}
    written = []
    reaction = _reaction_pairs(by_name)
    if reaction:
        written.append(_plot_reaction(reaction, directory / REACTION_PNG))
    poll = _poll_settings(by_name)
    if poll:
        written.append(_plot_poll(poll, directory / POLL_PNG))
    return written


def _reaction_pairs(by_name: dict[str, Figure]) -> list[tuple[str, Figure, Figure]]:
    pairs = []
    for tag in REACTION_RUNS:
        idle = by_name.get(f"reaction_idle_p99_{tag}")
        flooded = by_name.get(f"reaction_flooded_p99_{tag}")
        if idle is not None and flooded is not None and idle.samples and flooded.samples:
            pairs.append((tag, idle, flooded))
    return pairs


def _poll_settings(by_name: dict[str, Figure]) -> list[tuple[str, Figure, Figure, Figure]]:
    """(line setting, floor, DetectorBus cycles, baseline cycles) for each setting measured."""
    found = []
    for name, cycle in by_name.items():
        if not name.startswith("poll_cycle_") or name.startswith("poll_cycle_ratio_"):
            continue
        tag = name.removeprefix("poll_cycle_")
        floor = by_name.get(f"poll_floor_{tag}")
        base = by_name.get(f"poll_baseline_cycle_{tag}")
        if floor is not None and base is not None and cycle.samples and base.samples:
            found.append((tag, floor, cycle, base))
    return found


def _use_files_only() -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a Pi or in CI


def _slower_than(ax: Axes, samples: Sequence[float], label: str, colour: str) -> None:
    """Share of samples above each value, as a step line, and the p99 as a dashed mark."""
    ordered = sorted(samples)
    n = len(ordered)
    # At the k-th smallest value, (n - k - 1) / n of the trials are slower; keep the last point
    # above zero so it shows on a log axis.
    share = [max(n - k - 1, 0.5) / n for k in range(n)]
    ax.step(ordered, share, where="post", label=label, color=colour)
    ax.axvline(percentile(ordered, 99), color=colour, linestyle="--", linewidth=0.8)


def _log_axes(ax: Axes) -> None:
    """Log scales labelled 0.2, 0.5, 1, 2, 5 ms and 1 %, 10 %: plain numbers, not powers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis, text in ((ax.xaxis, "{:g}"), (ax.yaxis, "{:.3g} %")):
        scale = 100.0 if axis is ax.yaxis else 1.0
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _, t=text, k=scale: t.format(v * k)))
        axis.set_minor_formatter(NullFormatter())


def _plot_reaction(pairs: list[tuple[str, Figure, Figure]], path: Path) -> Path:
    _use_files_only()
    import matplotlib.pyplot as plt

    columns = min(2, len(pairs))
    rows = -(-len(pairs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    for ax, (tag, idle, flooded) in zip(axes.flat, pairs, strict=False):
        _slower_than(ax, idle.samples, f"idle (p99 {idle.value:.2f} ms)", "tab:blue")
        flooded_label = f"uplinks flooded (p99 {flooded.value:.2f} ms)"
        _slower_than(ax, flooded.samples, flooded_label, "tab:red")
        _log_axes(ax)
        ax.set_xlabel("confirming reply -> valve pin de-energised (ms)")
        ax.set_ylabel("share of trials slower")
        ax.set_title(f"{REACTION_RUNS[tag]} ({len(idle.samples)} + {len(flooded.samples)} trials)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
    for ax in list(axes.flat)[len(pairs) :]:
        ax.set_visible(False)
    fig.suptitle("Reaction, idle vs uplinks flooded (dashed: p99)")
    fig.tight_layout()
    return _save(fig, path)


def _plot_poll(settings: list[tuple[str, Figure, Figure, Figure]], path: Path) -> Path:
    _use_files_only()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = []
    for i, (tag, floor, cycle, base) in enumerate(settings):
        for offset, fig_, colour in ((-0.15, cycle, "tab:blue"), (0.15, base, "tab:grey")):
            ratios = [x / floor.value for x in fig_.samples]
            spread = [i + offset + 0.06 * ((k % 5) - 2) / 2 for k in range(len(ratios))]
            ax.scatter(spread, ratios, s=12, color=colour, alpha=0.7)
        labels.append(f"{tag.replace('_', ' ')}\nfloor {floor.value:.0f} ms")
    ax.scatter([], [], s=12, color="tab:blue", label="gasguard DetectorBus")
    ax.scatter([], [], s=12, color="tab:grey", label="bare minimalmodbus loop")
    ax.axhline(1.0, color="black", linewidth=1, label="wire floor (frames + 2 t3.5 + turnaround)")
    ax.axhline(POLL_TARGET_RATIO, color="tab:red", linestyle="--", linewidth=1, label="target")
    ax.set_xticks(range(len(settings)), labels)
    ax.set_xlim(-0.6, len(settings) - 0.4)
    ax.set_ylabel("poll cycle / wire floor")
    ax.set_title("Poll cycle of every detector once, against the wire's floor")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Drawing, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
