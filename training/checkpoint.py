"""Checkpoints: ``best.pt`` and ``last.pt``, written atomically, enough to resume exactly.

A checkpoint holds the model, optimizer and scheduler states, the epoch it finished, the best
validation metric so far, the early-stopping count, the RNG states (Python, NumPy, torch, CUDA),
the run's config, the model name and num_classes. Killed at any moment, a run loses at most the
epoch in progress: the file on disk is the previous one or the new one, never half of either.

``Progress`` is where a run stands after an epoch: ``save_epoch`` writes it with the states,
``restore`` brings a resumed run back to it (its schedule stretched to a longer plan). Which
directory a run writes to is ``training.runs``.
"""
from __future__ import annotations

import io
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from feeding.io import write_atomic
from feeding.errors import FeedError
from training.step import StepConfig

if TYPE_CHECKING:
    from training.config import FitConfig

LAST, BEST = "last.pt", "best.pt"


class CheckpointError(FeedError):
    """A checkpoint that is missing, unreadable, or made for another model."""


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


# ---------------------------------------------------------------- where a run stands


@dataclass(frozen=True)
class Progress:
    """Where a run stands after ``epoch`` finished epochs: what a checkpoint resumes from."""

    epoch: int = 0  # epochs finished (the next epoch's index)
    updates: int = 0  # optimizer updates so far (the schedule's clock)
    best_f1: float = -1.0
    stale: int = 0  # epochs since the best macro-F1
    history: tuple[dict, ...] = ()
    improved: bool = False  # the last epoch set a new best

    def after(self, epoch: int, stats, metrics, predicted: float | None) -> Progress:
        """The progress once 0-based ``epoch`` trained (``stats``) and validated (``metrics``);
        ``predicted``: the recommendation's img/s for this feed, or None."""
        improved = metrics.macro_f1 > self.best_f1
        row = {"epoch": epoch + 1, "loss": stats.loss, "lr": stats.lr, "macro_f1": metrics.macro_f1,
               "accuracy": metrics.accuracy, "val_images": int(metrics.confusion.sum()),  # every rank's, each once
               "data_wait_fraction": stats.data_wait_fraction,
               "images_per_sec": stats.images_per_sec, "predicted_ips": predicted}
        return Progress(epoch + 1, self.updates + stats.updates, metrics.macro_f1 if improved else self.best_f1,
                        0 if improved else self.stale + 1, (*self.history, row), improved)


def save_epoch(out: Path, config: FitConfig, classes, model, optimizer, scheduler, progress: Progress,
               step: StepConfig | None = None) -> None:
    """OUT/best.pt (when the epoch improved) before OUT/last.pt, each written atomically; ``step``:
    the training step the run trains with (recorded, so that a resumed run can say if it changed)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": progress.epoch - 1, "updates": progress.updates, "best_macro_f1": progress.best_f1,
             "epochs_since_best": progress.stale, "rng": rng_states(), "config": config.to_dict(),
             "num_classes": len(classes), "model_name": config.model, "classes": list(classes),
             "history": list(progress.history), "step": step.to_dict() if step is not None else None}
    if progress.improved:  # best before last: a kill in between only repeats this epoch on resume
        save_checkpoint(out / BEST, state)
    save_checkpoint(out / LAST, state)


def restore(out: Path, config: FitConfig, num_classes: int, model, optimizer, scheduler,
            announce: bool = True, step: StepConfig | None = None) -> Progress:
    """Load OUT/last.pt into the model, optimizer, schedule and the global RNGs; where it stood.

    The schedule was built for ``config.epochs``: a run resumed with more epochs than it planned
    has its schedule stretched to them (``restore_schedule``), and ``announce`` says so, as it
    says where ``step`` differs from the step the run was trained with.
    """
    from training.schedule import restore_schedule

    state = load_checkpoint(out / LAST, config.model, num_classes)
    done, planned = state["epoch"] + 1, state["config"].get("epochs", config.epochs)
    if config.epochs <= done:
        raise CheckpointError(f"the run in {out} finished {done} epochs; pass --epochs > {done} to continue it")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_schedule(scheduler, config.scheduler, state["scheduler"], state["updates"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {out / LAST} does not fit this model, optimizer or schedule "
                              f"(--opt/--sched changed?): {str(err).splitlines()[0]}") from err
    changed = sorted(k for k, v in state["config"].items()
                     if k not in ("resume", "epochs", "out") and config.to_dict().get(k) != v)
    if changed and announce:
        print(f"warning: resuming with changed settings: {', '.join(changed)}", file=sys.stderr)
    if step is not None and state.get("step") and announce:
        for difference in step.differences(StepConfig(**state["step"])):
            print(f"warning: the training step differs from the checkpoint's: {difference}", file=sys.stderr)
    if config.epochs != planned and announce:
        change = "extended" if config.epochs > planned else "shortened"
        print(f"schedule {change} from {planned} to {config.epochs} epochs: lr {optimizer.param_groups[0]['lr']:.2e} "
              f"at update {state['updates']}")
    set_rng_states(state["rng"])
    return Progress(done, state["updates"], state["best_macro_f1"], state["epochs_since_best"],
                    tuple(state["history"]))
