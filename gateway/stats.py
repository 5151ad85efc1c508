"""The one nearest-rank percentile the product and its benchmarks share (delivery times in
``gateway.uplinks.delivery``, every p99 of ``bench``)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) by the nearest-rank method: the smallest value
    with at least q % of the values at or below it (p99 of 500 values is the 495th)."""
    if not values:
        raise ValueError(f"p{q:g} of no values: at least one measurement is needed")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q!r} is not allowed: 0 < q <= 100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
