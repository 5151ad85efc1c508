"""``gasguard trend DETECTOR --png FILE``: the detector's hourly min / mean / max as a plot.

matplotlib is optional on a Pi (``pip install 'gasguard[plot]'``); without it the command says
so and the text chart still works.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.trend import Hour


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def write_png(path: Path, detector: str, hours: Sequence[Hour], low_lel: float) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(
            "--png needs matplotlib: pip install 'gasguard[plot]' (the text chart needs nothing)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # matplotlib's date numbers are days since 1970-01-01 (its default epoch).
    when = [h.index / 24 for h in hours]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.fill_between(when, [h.low for h in hours], [h.high for h in hours], alpha=0.3,
                    label="hourly min-max", step="post")  # fmt: skip
    ax.step(when, [h.mean for h in hours], where="post", label="hourly mean")
    ax.axhline(low_lel, color="tab:red", linestyle="--", linewidth=1, label="low set point")
    ax.xaxis_date()
    ax.set_ylabel("%LEL")
    ax.set_title(f"{detector}: gas trend (UTC)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
