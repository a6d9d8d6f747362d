"""What one search does: a frozen config, validated when built. ``fit`` is the run every trial
shares (data, feed, epochs per trial, split, seed, device, loggers); the search draws the rest."""
from __future__ import annotations

from dataclasses import dataclass

from feeding import checks
from training.config import FitConfig

PRUNERS = ("median", "hyperband", "none")
DEFAULT_OUT = "runs/hpo"  # without --out: this, or the next free runs/hpo-2, ...
DEFAULT_STUDY = "feedbench-hpo"
STUDY_FILE = "study.db"  # OUT/study.db: the SQLite storage, unless --storage names another


@dataclass(frozen=True)
class HpoConfig:
    """One study. ``trials``: how many trials it ends with in all (complete, pruned or failed; a resumed
    study runs what is left); ``timeout_s``: no new trial starts after this many seconds of this run."""

    fit: FitConfig = FitConfig(epochs=3)
    trials: int = 20
    timeout_s: float | None = None
    search: str | None = None  # a YAML file of ranges (training.hpo.space); None: DEFAULT_SEARCH
    pruner: str = "median"
    folds: int | None = None  # K: each trial trains K person-grouped folds, scored by their mean
    out: str | None = None
    resume: bool = False
    storage: str | None = None  # an SQLite path or an SQLAlchemy URL; None: OUT/study.db
    study_name: str = DEFAULT_STUDY

    def __post_init__(self) -> None:
        if not isinstance(self.fit, FitConfig):
            raise TypeError(f"fit must be a FitConfig, got {self.fit!r}")
        checks.count("trials", self.trials)
        checks.count("folds", self.folds, minimum=2, allow_none=True)
        if self.timeout_s is not None:
            checks.positive("timeout_s", self.timeout_s)
        checks.choice("pruner", self.pruner, PRUNERS)
        for name in ("out", "storage", "search"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
        if not isinstance(self.study_name, str) or not self.study_name.strip():
            raise ValueError(f"study_name must be a non-empty string, got {self.study_name!r}")
        if self.fit.folds is not None:
            raise ValueError("give the folds to HpoConfig.folds, not to its fit config")
        if self.fit.resume or self.fit.checkpoint_every is not None or self.fit.early_stop_patience is not None:
            raise ValueError("a trial's run does not resume, step-checkpoint or stop early (the pruner stops it)")
