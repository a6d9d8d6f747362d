"""Class-balanced sampling, drawn anew every epoch (fed by ``feeding.resampled.ResampledFeeder``).

Drawing once per run instead would leave most images of the common classes out of the whole
run (a class of c images gets about n / classes draws: with c = 40 and 18.7 draws,
e^(-18.7/40) = 63% of its images are never drawn).
"""
from __future__ import annotations

import numpy as np

_BALANCED_STREAM = 0xBA1A  # keeps these draws apart from every other stream seeded by the run's seed


def balanced_indices(labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """``len(labels)`` draws with replacement, each class equally likely, seeded by (seed, epoch).

    Sorted, so that the feeder's own per-epoch shuffle alone decides the order.
    """
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]  # a class's images share one class's probability
    rng = np.random.default_rng(np.random.SeedSequence([_BALANCED_STREAM, seed, epoch]))
    return np.sort(rng.choice(len(labels), size=len(labels), replace=True, p=weights / weights.sum()))
