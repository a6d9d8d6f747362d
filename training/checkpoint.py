"""Checkpoints: ``best.pt`` and ``last.pt``, written atomically, enough to resume exactly.

A checkpoint holds the model, optimizer and scheduler states, the epoch it finished, the best
validation metric so far, the early-stopping count, the RNG states (Python, NumPy, torch, CUDA),
the run's config, the model name and num_classes. Killed at any moment, a run loses at most the
epoch in progress: the file on disk is the previous one or the new one, never half of either.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from bench.io import write_atomic
from feeding.errors import FeedError

LAST, BEST = "last.pt", "best.pt"


class CheckpointError(FeedError):
    """A checkpoint that is missing, unreadable, or made for another model."""


def rng_states() -> dict:
    """The global generators' states, as plain types (so ``torch.load(weights_only=True)`` reads them)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """``torch.save`` into memory, then an atomic write (temp file + fsync + rename)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path, model_name: str | None = None, num_classes: int | None = None) -> dict:
    """Read a checkpoint; ``CheckpointError`` if it is missing, corrupt, or for another model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (nothing to resume; run without --resume first)")
    try:
        # Our own files hold only tensors and plain types: the safe unpickler suffices.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds (RuntimeError, UnpicklingError, EOFError...)
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from err
    missing = {"model", "model_name", "num_classes", "epoch"} - set(state) if isinstance(state, dict) else {"all"}
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a training.fit checkpoint (lacks {sorted(missing)})")
    if model_name is not None and state["model_name"] != model_name:
        raise CheckpointError(f"checkpoint {path} is for model {state['model_name']!r}, not {model_name!r}")
    if num_classes is not None and state["num_classes"] != num_classes:
        raise CheckpointError(f"checkpoint {path} has {state['num_classes']} classes, "
                              f"but the data has {num_classes}")
    return state
