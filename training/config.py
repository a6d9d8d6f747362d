"""What one training run does: a frozen, validated config, and the `--pipeline best` resolution.

argparse only builds a ``FitConfig`` (``training.fit.get_args_parser``); library code never sees
a Namespace. ``batch``, ``workers`` and ``size`` may be left ``None``: ``resolve_feed`` fills them
from the tuner's recommendation (``--pipeline best``) or from the defaults below, and an explicit
value always wins.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from feeding import checks
from feeding.errors import FeedError
from feeding.backends import PIPELINES
from feeding.spec import Shape

BEST = "best"  # --pipeline best: what feedbench tune recommended
FIT_PIPELINES = (*PIPELINES, BEST)
OPTIMIZERS = ("adamw", "sgd", "adamp")
SCHEDULERS = ("cosine", "step", "plateau")
LOSSES = ("ce", "focal", "weighted_ce")
DEFAULT_BATCH = 32
DEFAULT_WORKERS = 2
DEFAULT_SIZE: Shape = (224, 224)
DEFAULT_RECOMMENDATION = "results/recommendation.json"
DEFAULT_OUT = "runs/fit"  # without --out: this, or the next free runs/fit-2, runs/fit-3, ...
ON_BAD = ("skip", "fail")


class RecommendationError(FeedError):
    """``--pipeline best`` cannot use the recommendation on file (missing, or made elsewhere)."""


@dataclass(frozen=True)
class FitConfig:
    """One training run. Rates are per optimizer step; ``size`` is (height, width) in pixels."""

    pipeline: str = "best"
    data: str | None = None  # None: the embedded sample data set
    model: str = "resnet18"  # timm name or "package.module:factory"
    pretrained_file: str | None = None  # local weights for a timm model (never downloaded)
    epochs: int = 10
    batch: int | None = None
    workers: int | None = None
    size: Shape | None = None
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0  # linear warm-up, stepped per optimizer update
    loss: str = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    amp: bool = False  # bfloat16 autocast; CUDA only
    accum_steps: int = 1
    freeze_backbone: bool = False
    val_fraction: float = 0.2
    folds: int | None = None  # K: one model per person-grouped, class-stratified fold, in OUT/fold{k}
    balanced: bool = False  # oversample the training images to equal class frequencies
    seed: int = 0
    out: str | None = None  # None: DEFAULT_OUT, or the next free one (training.checkpoint.choose_run_dir)
    early_stop_patience: int | None = None  # epochs without a better validation macro-F1
    resume: bool = False
    device: str = "cpu"
    recommendation: str = DEFAULT_RECOMMENDATION
    on_bad: str = "skip"  # a file or listing row that cannot be used: left out and reported, or an error

    def __post_init__(self) -> None:
        for name, choices in (("pipeline", FIT_PIPELINES), ("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS),
                              ("loss", LOSSES), ("on_bad", ON_BAD)):
            checks.choice(name, getattr(self, name), choices)
        if self.out is not None and (not isinstance(self.out, str) or not self.out.strip()):
            raise ValueError(f"out must be a directory path or None, got {self.out!r}")
        checks.count("folds", self.folds, minimum=2, allow_none=True)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must be a timm model name or 'package.module:factory'")
        checks.available_device("device", self.device)
        for name in ("epochs", "accum_steps"):
            checks.count(name, getattr(self, name))
        for name in ("batch", "early_stop_patience"):
            checks.count(name, getattr(self, name), allow_none=True)
        checks.count("workers", self.workers, minimum=0, allow_none=True)
        if self.size is not None:
            object.__setattr__(self, "size", checks.size("size", self.size))
        for name in ("weight_decay", "warmup_epochs", "focal_gamma"):
            checks.number(name, getattr(self, name), minimum=0)
        checks.number("label_smoothing", self.label_smoothing, minimum=0, maximum=1, open_maximum=True)
        if checks.number("lr", self.lr, minimum=0) == 0:
            raise ValueError("lr must be > 0, got 0")
        if checks.number("val_fraction", self.val_fraction, minimum=0, maximum=1, open_maximum=True) == 0:
            raise ValueError("val_fraction must be within (0, 1), got 0")
        if self.amp and self.device == "cpu":
            raise ValueError("amp (bfloat16 autocast) is for CUDA only; drop --amp on the CPU")
        if self.pretrained_file is not None:
            if ":" in self.model:
                raise ValueError("--pretrained-file needs a timm model name, not a module:factory")
            if not Path(self.pretrained_file).is_file():
                raise ValueError(f"pretrained file {self.pretrained_file} does not exist")

    @property
    def follows_recommendation(self) -> bool:
        """``--pipeline best``: the feed comes from the tuner's recommendation."""
        return self.pipeline == BEST

    @property
    def is_resolved(self) -> bool:
        return not self.follows_recommendation and None not in (self.batch, self.workers, self.size)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["size"] = list(self.size) if self.size else None
        return record


def resolve_feed(config: FitConfig, recommendation: dict | None) -> FitConfig:
    """``config`` with pipeline, batch, workers and size filled in: explicit values, else the
    recommendation (for ``best``, already checked by ``load_recommendation``), else the defaults."""
    source = recommendation if config.follows_recommendation else {}
    return replace(
        config,
        pipeline=source["pipeline"] if config.follows_recommendation else config.pipeline,
        batch=config.batch if config.batch is not None else source.get("batch", DEFAULT_BATCH),
        workers=config.workers if config.workers is not None else source.get("workers", DEFAULT_WORKERS),
        size=config.size if config.size is not None else tuple(source.get("size", DEFAULT_SIZE)),
    )


def tune_command(config: FitConfig) -> str:
    data = f" --data {config.data}" if config.data else ""  # tune defaults to the same sample data set
    return f"feedbench tune{data} --model {config.model} --device {config.device}"


def recommendation_mismatches(record: dict, samples, config: FitConfig) -> list[str]:
    """What differs between where the recommendation was made and this run (empty: it applies)."""
    from feeding.machine import machine_info
    from feeding.sources import dataset_fingerprint

    differences = []
    here, there = machine_info(), record.get("machine", {})
    for key in ("cpu", "cores"):
        if there.get(key) != here[key]:
            differences.append(f"machine {key}: recommendation {there.get(key)!r}, here {here[key]!r}")
    fingerprint, recorded = dataset_fingerprint(samples), record.get("dataset", {})
    for key in ("images", "paths_sha256"):
        if recorded.get(key) != fingerprint[key]:
            differences.append(f"dataset {key}: recommendation {recorded.get(key)!r} "
                               f"({recorded.get('root')}), here {fingerprint[key]!r} ({fingerprint['root']})")
    for key in ("model", "device"):
        if record.get(key) != getattr(config, key):
            differences.append(f"{key}: recommendation {record.get(key)!r}, here {getattr(config, key)!r}")
    return differences


def load_recommendation(config: FitConfig, samples) -> dict:
    """The recommendation for ``--pipeline best``; ``RecommendationError`` unless it was made here,
    on this data set, for this model and device. Never guesses."""
    path = Path(config.recommendation)
    hint = f"run `{tune_command(config)}` (or pick --pipeline pil|albumentations|dali)"
    if not path.is_file():
        raise RecommendationError(f"--pipeline best: no recommendation at {path}; {hint}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        for key in ("pipeline", "workers", "batch", "size"):
            record[key]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RecommendationError(f"--pipeline best: unreadable recommendation {path} ({err!r}); {hint}") from err
    differences = recommendation_mismatches(record, samples, config)
    if differences:
        listed = "\n  ".join(differences)
        raise RecommendationError(
            f"--pipeline best: {path} was made for other conditions:\n  {listed}\n{hint}")
    return record
