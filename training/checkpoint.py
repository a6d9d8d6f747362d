"""Checkpoints: ``best.pt`` and ``last.pt``, written atomically, enough to resume exactly.

A checkpoint holds the model, optimizer and scheduler states, the epochs it finished, the best
validation metric so far, the early-stopping count, the run's config, the model name and
num_classes, and for each rank its RNG states (Python, NumPy, torch, CUDA) and its training
feeder's state (``feeding.state``). A step checkpoint (``--checkpoint-every N``, or a SIGTERM)
also holds where it stands inside an epoch (``EpochSoFar``): a resumed run starts at the next
batch, with the draws the uninterrupted run would have made, so it ends with the same weights
(bit for bit on the CPU). Killed at any moment, a run loses at most the updates since the last
checkpoint: the file on disk is the previous one or the new one, never half of either. There is
no loss scaler to save: autocast runs in bfloat16, which needs none.

``Progress`` is where a run stands after an epoch: ``save_state`` writes it with the states,
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
from training.engine import EpochSoFar
from training.step import StepConfig

if TYPE_CHECKING:
    from training.config import FitConfig

LAST, BEST = "last.pt", "best.pt"
# 1: epoch checkpoints, rank 0's RNG; 2: step checkpoints (within_epoch), every rank's RNG and feeder state.
CHECKPOINT_FORMAT = 2


class CheckpointError(FeedError):
    """A checkpoint that is missing, unreadable, or made for another model."""


def saved_position(path: Path) -> str | None:
    """Where the checkpoint at ``path`` stands, in words ("epoch 2", "epoch 3, batch 8 (update 20)"), read
    memory-mapped (the weights are not read); None where there is none to read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        finished, within = int(state["epoch"]) + 1, state.get("within_epoch")
    except Exception:  # missing, half-written or foreign: nothing to report
        return None
    if within:
        return f"epoch {int(within['epoch']) + 1}, batch {int(within['batches'])} (update {int(state['updates'])})"
    return f"epoch {finished}" if finished else None


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


def rank_state(train_feed, so_far: EpochSoFar | None = None) -> dict:
    """This rank's share of a checkpoint: its global RNG states, its training feeder's state and, in a step
    checkpoint, its part of the epoch trained (each rank's losses are its own until the epoch's reduction)."""
    return {"rng": rng_states(), "feeder": train_feed.state_dict(),
            "so_far": so_far.to_dict() if so_far is not None else None}


def save_state(out: Path, config: FitConfig, classes, model, optimizer, scheduler, progress: Progress,
               ranks: list[dict], step: StepConfig | None = None, within: tuple[int, EpochSoFar] | None = None,
               ) -> None:
    """OUT/last.pt, written atomically: at an epoch's end (``within`` None; OUT/best.pt before it when the
    epoch improved), or at an update inside epoch ``within[0]`` (0-based), ``within[1]`` trained of it.
    ``ranks``: every rank's ``rank_state``, in rank order; ``step``: the training step the run trains
    with (recorded, so that a resumed run can say if it changed)."""
    so_far = within[1] if within is not None else None
    state = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": progress.epoch - 1,
             "updates": progress.updates + (len(so_far.lrs) if so_far else 0), "best_macro_f1": progress.best_f1,
             "epochs_since_best": progress.stale, "ranks": ranks,
             # Where, in words (saved_position); each rank's part of the epoch is in its own entry.
             "within_epoch": {"epoch": within[0], "batches": so_far.batches} if within is not None else None,
             "config": config.to_dict(), "num_classes": len(classes), "model_name": config.model,
             "classes": list(classes), "history": list(progress.history),
             "step": step.to_dict() if step is not None else None}
    if progress.improved and within is None:  # best before last: a kill in between only repeats this epoch
        save_checkpoint(out / BEST, state)
    save_checkpoint(out / LAST, state)


@dataclass(frozen=True)
class Resumed:
    """What a resumed run continues from: the progress, the part of the epoch in progress trained (None
    at an epoch's end) and this rank's training feeder state (None in a format-1 checkpoint)."""

    progress: Progress
    within: EpochSoFar | None
    feeder_state: dict | None
    where: str  # in words, for the console

    def train_from(self, epoch: int) -> EpochSoFar | None:
        """The part of ``epoch`` already trained: the checkpoint's for its epoch, nothing for later ones."""
        return self.within if epoch == self.progress.epoch else None


def restore(out: Path, config: FitConfig, num_classes: int, model, optimizer, scheduler,
            announce: bool = True, step: StepConfig | None = None, rank: int = 0, world_size: int = 1) -> Resumed:
    """Load OUT/last.pt into the model, optimizer, schedule and this ``rank``'s global RNGs; where it stood.

    The schedule was built for ``config.epochs``: a run resumed with more epochs than it planned
    has its schedule stretched to them (``restore_schedule``), and ``announce`` says so, as it
    says where ``step`` differs from the step the run was trained with. The feeder state is the
    caller's to load (``load_feed_state``).
    """
    from training.schedule import restore_schedule

    state = load_checkpoint(out / LAST, config.model, num_classes)
    entry = _rank_entry(state, out / LAST, rank, world_size)
    done, planned = state["epoch"] + 1, state["config"].get("epochs", config.epochs)
    within = state.get("within_epoch")
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
                     if k not in ("resume", "epochs", "out", "checkpoint_every") and config.to_dict().get(k) != v)
    if changed and announce:
        print(f"warning: resuming with changed settings: {', '.join(changed)}", file=sys.stderr)
    if step is not None and state.get("step") and announce:
        for difference in step.differences(StepConfig(**state["step"])):
            print(f"warning: the training step differs from the checkpoint's: {difference}", file=sys.stderr)
    if config.epochs != planned and announce:
        change = "extended" if config.epochs > planned else "shortened"
        print(f"schedule {change} from {planned} to {config.epochs} epochs: lr {optimizer.param_groups[0]['lr']:.2e} "
              f"at update {state['updates']}")
    set_rng_states(entry["rng"])
    so_far = EpochSoFar.from_dict(entry["so_far"]) if within else None
    progress = Progress(done, state["updates"] - (len(so_far.lrs) if so_far else 0), state["best_macro_f1"],
                        state["epochs_since_best"], tuple(state["history"]))
    return Resumed(progress, so_far, entry.get("feeder"),
                   saved_position(out / LAST) or f"epoch {done}")


def _rank_entry(state: dict, path: Path, rank: int, world_size: int) -> dict:
    """This rank's RNG and feeder state in a checkpoint; a clear error for a newer format or another rank count."""
    version = state.get("format", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {version!r}, newer than this feedbench reads "
                              f"({CHECKPOINT_FORMAT}): resume it with the version that wrote it")
    ranks = state.get("ranks")
    if not ranks:  # format 1: rank 0's RNG, no feeder state; it resumes at an epoch's start
        return {"rng": state["rng"], "feeder": None}
    if len(ranks) != world_size:
        raise CheckpointError(f"checkpoint {path} was written by a run of {len(ranks)} rank(s); this one has "
                              f"{world_size}: resume with --nproc-per-node (x nodes) = {len(ranks)}")
    return ranks[rank]


def load_feed_state(train_feed, state: dict | None, path: Path) -> None:
    """Bring the training feed to where the checkpoint's stood (a no-op for a format-1 checkpoint); a
    ``CheckpointError`` naming what differs where the feed is not the one the checkpoint was made with."""
    from feeding.state import FeederStateError

    if state is None:
        return
    try:
        train_feed.load_state_dict(state)
    except FeederStateError as err:
        raise CheckpointError(f"checkpoint {path} cannot resume this training feed: {err}") from err
