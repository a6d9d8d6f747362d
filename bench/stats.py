"""Summary statistics of repeated measurements (as pytest-benchmark reports them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Median, interquartile range, min and max of ``n`` values (in the caller's unit)."""

    median: float
    iqr: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(values) -> Summary:
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        raise ValueError("nothing to summarize: no measurements were taken")
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return Summary(float(median), float(q3 - q1), float(data.min()), float(data.max()), int(data.size))
