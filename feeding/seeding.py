"""Seeds derived from one base seed: per epoch, per batch, per worker.

Augmentation draws come from a generator keyed by (seed, epoch, batch number),
not by worker: the stream is the same whatever the number of workers or the
executor, and no two batches in any epoch share a stream. Each worker
*process* also seeds Python's, NumPy's and torch's global generators from
(seed, epoch, worker id), for user code that draws from them. Worker threads
cannot: those generators belong to the process, which its threads share, so
user code in a thread pool that draws from them gets no per-worker stream
(feedbench's own transforms never draw from them).
"""
from __future__ import annotations

import random

import numpy as np
import torch

# Distinct first words keep the streams of different purposes apart.
_EPOCH_ORDER, _BATCH_DRAWS, _WORKER_GLOBALS, _RANK_MODEL = 0, 1, 2, 3


def _entropy(*words: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words])


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a new permutation each epoch, reproducible from the seed."""
    return np.random.default_rng(_entropy(_EPOCH_ORDER, seed, epoch)).permutation(n)


def batch_rng(seed: int, epoch: int, batch_number: int, shard: int = 0) -> np.random.Generator:
    """The generator all augmentation draws of one batch come from.

    ``shard``: the rank's shard in a distributed run, so that batch k of one rank
    does not repeat the rotations and flips of batch k of another.
    """
    words = (seed, epoch, batch_number) + ((shard,) if shard else ())  # shard 0: the one-process stream
    return np.random.default_rng(_entropy(_BATCH_DRAWS, *words))


def worker_seed(seed: int, epoch: int, worker_id: int, shard: int = 0) -> int:
    """A 32-bit seed for one worker (of one rank's shard) in one epoch."""
    words = (seed, epoch, worker_id) + ((shard,) if shard else ())
    return int(_entropy(_WORKER_GLOBALS, *words).generate_state(1)[0])


def rank_seed(seed: int, rank: int) -> int:
    """A 32-bit seed for the model-side draws (dropout, drop-path) of one rank of a distributed run: the
    ranks start from the same weights (DDP broadcasts rank 0's), then each draws its own masks."""
    return int(_entropy(_RANK_MODEL, seed, rank).generate_state(1)[0])


def seed_globals(value: int) -> None:
    """Seed Python's, NumPy's legacy and torch's global generators."""
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
