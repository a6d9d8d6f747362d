"""Checkpoints: ``best.pt`` and ``last.pt``, written atomically, enough to resume exactly.

A checkpoint holds the model, optimizer and scheduler states, the epoch it finished, the best
validation metric so far, the early-stopping count, the RNG states (Python, NumPy, torch, CUDA),
the run's config, the model name and num_classes. Killed at any moment, a run loses at most the
epoch in progress: the file on disk is the previous one or the new one, never half of either.

Run directories: a directory that holds a run (``RUN_FILES``, in it or in a ``fold*/``) is never
written over by a new run. Without ``--out`` a run takes the first free directory of the default
series (``runs/fit``, ``runs/fit-2``, ...), and ``--resume`` the newest run of it.
"""
from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from feeding.io import write_atomic
from feeding.errors import FeedError

LAST, BEST = "last.pt", "best.pt"
RUN_FILES = (LAST, BEST, "summary.json")  # any of them: the directory holds a run


class CheckpointError(FeedError):
    """A checkpoint that is missing, unreadable, or made for another model."""


class RunDirectoryError(FeedError):
    """A run directory that would be written over, or no run to resume."""


def run_files(directory: Path) -> list[str]:
    """What marks ``directory`` as holding a run: ``RUN_FILES`` in it or in its ``fold*/``, as relative paths."""
    folds = sorted(d for d in directory.glob("fold*") if d.is_dir()) if directory.is_dir() else []
    return [str(place.relative_to(directory) / name) for place in (directory, *folds) for name in RUN_FILES
            if (place / name).is_file()]


def _series(base: Path) -> Iterator[Path]:
    """``base``, ``base-2``, ``base-3``, ... (endless)."""
    yield base
    number = 2
    while True:
        yield base.with_name(f"{base.name}-{number}")
        number += 1


def _existing_series(base: Path) -> list[Path]:
    """The directories of ``base``'s series on disk (``base`` itself and ``base-N``, N >= 2)."""
    numbered = [d for d in base.parent.glob(f"{base.name}-*") if d.name[len(base.name) + 1:].isdigit()]
    return [d for d in (base, *numbered) if d.is_dir()]


def _resume_mtime(directory: Path, folds: bool) -> float | None:
    """When the run in ``directory`` last saved ``last.pt`` (a folds run: any fold's), or None."""
    checkpoints = list(directory.glob(f"fold*/{LAST}")) if folds else [directory / LAST]
    times = [c.stat().st_mtime for c in checkpoints if c.is_file()]
    return max(times) if times else None


def choose_run_dir(out: str | None, base: str, resume: bool, folds: bool) -> tuple[Path, str]:
    """The run directory and a sentence saying which one it is (and why, when it was chosen).

    ``out`` None: a new run takes the first directory of ``base``'s series that holds no run; a
    resumed one the run of the series with the newest ``last.pt``. An explicit ``out`` that holds
    a run is refused unless ``resume``.
    """
    if out is not None:
        directory = Path(out)
        found = run_files(directory)
        if found and not resume:
            raise RunDirectoryError(f"{directory} already holds a run ({', '.join(found[:3])}); pass --resume "
                                    "to continue it, or another --out for a new run")
        return directory, f"run directory: {directory}"
    base_dir = Path(base)
    if resume:
        candidates = [(mtime, d) for d in _existing_series(base_dir)
                      if (mtime := _resume_mtime(d, folds)) is not None]
        if not candidates:
            kind = f"fold*/{LAST}" if folds else LAST
            raise RunDirectoryError(f"--resume: no run with a {kind} in {base_dir} or {base_dir}-N to continue; "
                                    "pass --out DIR to name the run")
        directory = max(candidates)[1]
        return directory, f"run directory: {directory} (resuming the newest run of {base_dir}*)"
    directory = next(d for d in _series(base_dir) if not run_files(d))
    why = "" if directory == base_dir else f" ({base_dir} holds an earlier run; --out names another)"
    return directory, f"run directory: {directory}{why}"


def saved_epochs(path: Path) -> int | None:
    """Epochs finished in the checkpoint at ``path`` (memory-mapped: the weights are not read), or None."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1
    except Exception:  # missing, half-written or foreign: nothing to report
        return None


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
