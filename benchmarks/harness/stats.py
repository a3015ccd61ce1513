"""The statistics the benchmarks report: percentiles and medians that skip NaN."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`th percentile by linear interpolation between closest ranks; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    """The median of the values that are not NaN; NaN if there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def pct(share: float) -> str:
    """A share as a whole percentage, `n/a` for NaN."""
    return "n/a" if math.isnan(share) else f"{share * 100:.0f} %"
