"""Seeds derived from one base seed: per epoch, per batch, per worker.

Augmentation draws come from a generator keyed by (seed, epoch, batch number),
not by worker: the stream is the same whatever the number of workers, and no
two batches in any epoch share a stream. Each worker also seeds Python's,
NumPy's and torch's global generators from (seed, epoch, worker id), for user
code that draws from them.
"""
from __future__ import annotations

import random

import numpy as np
import torch

# Distinct first words keep the streams of different purposes apart.
_EPOCH_ORDER, _BATCH_DRAWS, _WORKER_GLOBALS = 0, 1, 2


def _entropy(*words: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words])


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a new permutation each epoch, reproducible from the seed."""
    return np.random.default_rng(_entropy(_EPOCH_ORDER, seed, epoch)).permutation(n)


def batch_rng(seed: int, epoch: int, batch_number: int) -> np.random.Generator:
    """The generator all augmentation draws of one batch come from."""
    return np.random.default_rng(_entropy(_BATCH_DRAWS, seed, epoch, batch_number))


def worker_seed(seed: int, epoch: int, worker_id: int) -> int:
    """A 32-bit seed for one worker in one epoch."""
    return int(_entropy(_WORKER_GLOBALS, seed, epoch, worker_id).generate_state(1)[0])


def seed_globals(value: int) -> None:
    """Seed Python's, NumPy's legacy and torch's global generators."""
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
