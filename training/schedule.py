"""Learning-rate schedules stepped per optimizer update, with a linear warm-up.

Every schedule has timm's scheduler interface: ``step_update(num_updates)`` after each optimizer
update (warm-up, cosine and step move here), ``step(epoch, metric)`` after each validation
(reduce-on-plateau moves here), and ``state_dict()``/``load_state_dict()`` for an exact resume.
"""
from __future__ import annotations

import torch

from feeding import checks

WARMUP_START = 0.01  # warm-up starts at lr * WARMUP_START
STEP_DECAYS = 3  # "step": the lr drops 10x after each third of the run
PLATEAU_PATIENCE = 2  # validations without a better macro-F1 before the lr drops 10x
DECAY_FACTOR = 0.1


class WarmupPlateau:
    """torch's ReduceLROnPlateau on validation macro-F1, after a linear warm-up over updates.

    Not timm's PlateauLRScheduler: it is deprecated (a FutureWarning) and checkpoints only the
    best metric, so a resumed run would forget how many epochs it had already waited.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_updates: int, warmup_lr: float,
                 patience: int = PLATEAU_PATIENCE, factor: float = DECAY_FACTOR) -> None:
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.warmup_updates, self.warmup_lr = warmup_updates, warmup_lr
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=factor,
                                                                  patience=patience)
        self.updates = 0
        self.step_update(0)

    def step_update(self, num_updates: int) -> None:
        self.updates = num_updates
        if num_updates > self.warmup_updates:
            return  # warm-up is over: only the plateau moves the lr now
        done = num_updates / self.warmup_updates if self.warmup_updates else 1.0
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.warmup_lr + (base - self.warmup_lr) * done

    def step(self, epoch: int, metric: float | None = None) -> None:
        if metric is not None and self.updates >= self.warmup_updates:  # no decay while warming up
            self.plateau.step(metric)

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict(), "updates": self.updates, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state["plateau"])
        self.updates, self.base_lrs = state["updates"], list(state["base_lrs"])


def create_schedule(name: str, optimizer: torch.optim.Optimizer, epochs: int, updates_per_epoch: int,
                    warmup_epochs: float = 0.0):
    """``cosine`` | ``step`` (timm, counted in updates) | ``plateau`` (``WarmupPlateau``).

    ``updates_per_epoch``: optimizer updates an epoch (batches / accumulation steps, rounded up).
    """
    checks.count("updates_per_epoch", updates_per_epoch)
    lr = optimizer.param_groups[0]["lr"]
    if name == "plateau":
        return WarmupPlateau(optimizer, round(warmup_epochs * updates_per_epoch), lr * WARMUP_START)
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer, sched=name, num_epochs=epochs, decay_epochs=max(1, epochs // STEP_DECAYS),
        decay_rate=DECAY_FACTOR, warmup_epochs=warmup_epochs, warmup_lr=lr * WARMUP_START,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def restore_schedule(scheduler, name: str, state: dict, updates: int) -> None:
    """Bring a resumed run's schedule (built for this run's epochs) to where the run stands.

    timm's cosine and step schedules are functions of the update count and of the horizon their
    state carries (``t_initial``): loading that state would bring the old horizon back, and a run
    resumed with more epochs would train on at the old end's lr (0 for cosine). So they are not
    loaded but stepped to ``updates``, as timm's train.py resumes. The plateau schedule's state
    (validations waited, decays made) is not a function of the update count: it is loaded.
    ``updates``: optimizer updates done.
    """
    if name == "plateau":
        scheduler.load_state_dict(state)
    scheduler.step_update(updates)
