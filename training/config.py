"""What one training run does: a frozen config, validated when built (``feeding.checks``).

argparse only builds a ``FitConfig`` (``training.fit.get_args_parser``); library code never sees
a Namespace. ``batch``, ``workers`` and ``size`` may be left ``None``:
``training.recommendation.resolve_feed`` fills them from the tuner's recommendation
(``--pipeline best``) or from the defaults below, and an explicit value always wins. So may the
step's ``amp``, ``channels_last``, ``cudnn_benchmark`` and ``loss_every``:
``training.recommendation.resolve_step`` takes them from the recommendation's step, else the
device's defaults (``training.step.StepConfig.for_device``). ``spec``, the ``--spec`` file, gives
the training feed's augmentation (its train section) and the validation feed's (its eval section),
and fixes ``size``; without it, the benchmark spec and ``eval_spec`` at ``size``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from feeding import checks
from feeding.backends import PIPELINES
from feeding.spec import AugSpec, Shape
from feeding.spec_file import SpecFile, train_and_eval
from training.step import OPTIMIZERS

BEST = "best"  # --pipeline best: what feedbench tune recommended
FIT_PIPELINES = (*PIPELINES, BEST)
SCHEDULERS = ("cosine", "step", "plateau")
LOSSES = ("ce", "focal", "weighted_ce")
DEFAULT_BATCH = 32
DEFAULT_WORKERS = 2
DEFAULT_SIZE: Shape = (224, 224)
DEFAULT_RECOMMENDATION = "results/recommendation.json"
DEFAULT_OUT = "runs/fit"  # without --out: this, or the next free runs/fit-2, runs/fit-3, ...
ON_BAD = ("skip", "fail")
STEP_SWITCHES = ("amp", "channels_last", "cudnn_benchmark")  # on, off, or None: as recommended
LOGGERS = ("tensorboard", "wandb")  # training.loggers; wandb needs the extra feedbench[wandb]


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
    # The step's settings; None: the recommendation's (--pipeline best), else the device's default.
    amp: bool | None = None  # bfloat16 autocast; CUDA only
    channels_last: bool | None = None
    cudnn_benchmark: bool | None = None
    loss_every: int | None = None  # read the loss back every N batches (each read waits for the device)
    accum_steps: int = 1
    freeze_backbone: bool = False
    val_fraction: float = 0.2
    folds: int | None = None  # K: one model per person-grouped, class-stratified fold, in OUT/fold{k}
    balanced: bool = False  # oversample the training images to equal class frequencies
    seed: int = 0
    out: str | None = None  # None: DEFAULT_OUT, or the next free one (training.runs.choose_run_dir)
    early_stop_patience: int | None = None  # epochs without a better validation macro-F1
    resume: bool = False
    checkpoint_every: int | None = None  # a step checkpoint (OUT/last.pt) every N optimizer updates
    device: str = "cpu"
    recommendation: str = DEFAULT_RECOMMENDATION
    on_bad: str = "skip"  # a file or listing row that cannot be used: left out and reported, or an error
    spec: SpecFile | None = None  # the --spec file; None: the benchmark spec at ``size``
    loggers: tuple[str, ...] = ("tensorboard",)  # where the scalars, lr, image grid and confusion matrix go

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
        for name in ("batch", "early_stop_patience", "loss_every", "checkpoint_every"):
            checks.count(name, getattr(self, name), allow_none=True)
        checks.count("workers", self.workers, minimum=0, allow_none=True)
        self._check_size()
        self._check_loggers()
        for name in ("weight_decay", "warmup_epochs", "focal_gamma"):
            checks.number(name, getattr(self, name), minimum=0)
        checks.number("label_smoothing", self.label_smoothing, minimum=0, maximum=1, open_maximum=True)
        checks.positive("lr", self.lr)
        checks.positive("val_fraction", self.val_fraction, maximum=1, open_maximum=True)
        for name in STEP_SWITCHES:
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True, False or None, got {getattr(self, name)!r}")
        if self.amp and self.device == "cpu":
            raise ValueError("amp (bfloat16 autocast) is for CUDA only; drop --amp on the CPU")
        if self.cudnn_benchmark and self.device == "cpu":
            raise ValueError("cudnn_benchmark (cuDNN's autotuner) is for CUDA only; drop --cudnn-benchmark on the CPU")
        if self.pretrained_file is not None:
            if ":" in self.model:
                raise ValueError("--pretrained-file needs a timm model name, not a module:factory")
            if not Path(self.pretrained_file).is_file():
                raise ValueError(f"pretrained file {self.pretrained_file} does not exist")

    def _check_size(self) -> None:
        """``size``: the spec's output size where a spec is given (another size is an error), else as given."""
        if self.spec is not None and not isinstance(self.spec, SpecFile):
            raise TypeError(f"spec must be a SpecFile (feeding.spec_file.load_spec_file), got {self.spec!r}")
        size = checks.size("size", self.size) if self.size is not None else None
        if self.spec is not None:
            fixed = self.spec.train.output_size
            if size is not None and size != fixed:
                raise ValueError(f"size {size[0]}x{size[1]}: the spec {self.spec.name} fixes it at "
                                 f"{fixed[0]}x{fixed[1]}; drop --size (or --spec)")
            size = fixed
        object.__setattr__(self, "size", size)

    def _check_loggers(self) -> None:
        loggers = tuple(self.loggers) if isinstance(self.loggers, (tuple, list)) else None
        if not loggers:
            raise ValueError(f"loggers must be a non-empty list of {', '.join(LOGGERS)}, got {self.loggers!r}")
        for name in loggers:
            checks.choice("logger", name, LOGGERS)
        if len(set(loggers)) != len(loggers):
            raise ValueError(f"loggers {', '.join(loggers)}: each at most once")
        object.__setattr__(self, "loggers", loggers)

    @property
    def train_augmentation(self) -> AugSpec:
        """The training feed's spec: the spec file's train section, else the benchmark spec at ``size``."""
        return train_and_eval(self.spec, self.size)[0]

    @property
    def eval_augmentation(self) -> AugSpec:
        """The validation feed's spec: the spec file's eval section, else ``eval_spec`` at ``size``."""
        return train_and_eval(self.spec, self.size)[1]

    @property
    def follows_recommendation(self) -> bool:
        """``--pipeline best``: the feed comes from the tuner's recommendation."""
        return self.pipeline == BEST

    def to_dict(self) -> dict:
        """JSON types; the spec as its sections' records and the file's name apart, so that a resumed
        run compares what it trains with (``spec``) apart from what the file is called (``spec_file``)."""
        record = asdict(self)
        record["size"] = list(self.size) if self.size else None
        record["loggers"] = list(self.loggers)
        record["spec"] = self.spec.record() if self.spec is not None else None
        record["spec_file"] = self.spec.name if self.spec is not None else None
        return record
