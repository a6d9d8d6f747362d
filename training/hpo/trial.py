"""One trial: the values a search drew, turned into a ``training.fit`` run (its FitConfig and its
training spec, written to the trial's directory), trained with ``training.fit``'s own loop, its
validation macro-F1 reported to the pruner after every epoch.

A trial's run is exactly what its command line (``fit_command``) runs: the feed, the step
switches and every drawn value are explicit there, the spec a file, floats written in full.
"""
from __future__ import annotations

import shlex
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from feeding.io import write_atomic
from feeding.ops import ColorJitter, HorizontalFlip, Normalize, RandomResizedCrop, Rotate
from feeding.spec import AugSpec, eval_spec
from feeding.spec_file import SpecFile, shown_name, spec_record
from training.config import FitConfig
from training.hpo.space import SearchSpace, SearchSpaceError, Range

FIT_SETTINGS = ("model", "optimizer", "lr", "weight_decay", "scheduler", "warmup_epochs", "loss", "label_smoothing",
                "focal_gamma")  # drawn values that are FitConfig fields of the same name
SPEC_FILE = "spec.yaml"


# ---------------------------------------------------------------- augmentation strength through the spec


def base_spec(size) -> SpecFile:
    """The training spec a search varies when no --spec is given: crop, flip, rotate and jitter at the
    output size (the cheap order: the crop shrinks the photo first), and the eval spec at that size."""
    train = AugSpec((RandomResizedCrop(size, scale=(0.5, 1.0)), HorizontalFlip(0.5), Rotate(10.0),
                     ColorJitter(0.2, 0.2, 0.2), Normalize()))
    return SpecFile(train, eval_spec(size), "hpo base spec")


STRENGTHS = {  # search parameter -> (the op it sets, how)
    "rotation": (Rotate, lambda op, v: replace(op, degrees=v)),
    "crop_scale": (RandomResizedCrop, lambda op, v: replace(op, scale=(v, op.scale[1]))),
    "jitter": (ColorJitter, lambda op, v: replace(op, brightness=v, contrast=v, saturation=v)),
}


def check_spec_fits(space: SearchSpace, spec: SpecFile) -> None:
    """Each augmentation parameter searched has exactly one op to set in the spec's train section (and a
    crop scale stays below the crop's upper bound): a SearchSpaceError before any trial runs."""
    for name, (op_type, _) in STRENGTHS.items():
        if name not in space.params:
            continue
        found = [op for op in spec.train.ops if type(op) is op_type]
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise SearchSpaceError(f"{space.name}: {name} sets the spec's {op_type.__name__}, and the train section "
                                   f"of {spec.name} has {what}; give it exactly one, or drop {name} from the search")
        if name == "crop_scale":
            top = highest(space.params[name])
            if top > found[0].scale[1]:
                raise SearchSpaceError(f"{space.name}: crop_scale goes up to {top:g}, above the upper scale "
                                       f"{found[0].scale[1]:g} of {spec.name}'s RandomResizedCrop")


def highest(param) -> float:
    return param.high if isinstance(param, Range) else max(param.options)


def strengthened(spec: SpecFile, values: dict, name: str) -> SpecFile:
    """``spec`` with its train section's ops set to the drawn augmentation strengths."""
    ops = list(spec.train.ops)
    for key, (op_type, setter) in STRENGTHS.items():
        if key in values:
            ops = [setter(op, values[key]) if type(op) is op_type else op for op in ops]
    return SpecFile(AugSpec(tuple(ops)), spec.eval, name)


def write_spec(path: Path, spec: SpecFile) -> None:
    """The spec as a YAML file ``training.fit --spec`` reads back to an equal spec (floats in full)."""
    import yaml

    document = {"train": spec_record(spec.train), "eval": spec_record(spec.eval)}
    write_atomic(path, yaml.safe_dump(document, sort_keys=False).encode())


# ---------------------------------------------------------------- the trial's run


@dataclass(frozen=True)
class TrialPlan:
    """What every trial shares: ``base`` (the feed, the step switches, the epochs, the split: all
    explicit), the spec it varies, the K folds (None: the person-level split) and the data set."""

    base: FitConfig
    spec: SpecFile
    samples: object
    folds: int | None = None


def trial_config(plan: TrialPlan, values: dict, trial_dir: Path) -> FitConfig:
    """The FitConfig of the trial drawn as ``values``, its spec written to ``trial_dir``/spec.yaml."""
    spec_path = trial_dir / SPEC_FILE
    spec = strengthened(plan.spec, values, shown_name(spec_path))
    write_spec(spec_path, spec)
    fields = {key: values[key] for key in FIT_SETTINGS if key in values}
    return replace(plan.base, **fields, spec=spec, size=None, out=str(trial_dir))


def fit_command(config: FitConfig, folds: int | None, out: str) -> str:
    """The ``training.fit`` command line that trains ``config`` (a trial's) again, into ``out``; its spec
    is the file the trial wrote."""
    c = config
    args = ["--pipeline", c.pipeline, "--batch", c.batch, "--workers", c.workers,
            "--spec", Path(c.out) / SPEC_FILE,
            "--model", c.model, "--epochs", c.epochs, "--lr", repr(c.lr), "--weight-decay", repr(c.weight_decay),
            "--opt", c.optimizer, "--sched", c.scheduler, "--warmup-epochs", repr(c.warmup_epochs),
            "--loss", c.loss, "--label-smoothing", repr(c.label_smoothing), "--focal-gamma", repr(c.focal_gamma),
            *step_switches(c), "--accum-steps", c.accum_steps,
            *(["--folds", folds] if folds else ["--val-fraction", repr(c.val_fraction)]),
            *(["--balanced"] if c.balanced else []), *(["--data", c.data] if c.data else []),
            "--seed", c.seed, "--device", c.device, "--on-bad", c.on_bad, "--logger", ",".join(c.loggers),
            "--out", out]
    return shlex.join(["python", "-m", "training.fit", *map(str, args)])


def step_switches(config: FitConfig) -> list:
    """The step's settings as flags, each explicit (the recommendation they came from may change)."""
    switches = [f"--{name}" if getattr(config, key) else f"--no-{name}"
                for key, name in (("amp", "amp"), ("channels_last", "channels-last"),
                                  ("cudnn_benchmark", "cudnn-benchmark")) if getattr(config, key) is not None]
    return switches + (["--loss-every", config.loss_every] if config.loss_every is not None else [])


def train_trial(plan: TrialPlan, config: FitConfig, report) -> float:
    """Train the trial; its score: the best validation macro-F1 (with K folds, their mean).
    ``report(step, macro_f1)`` after every epoch (step: fold * epochs + epoch), which may raise to prune."""
    from feeding.sources import person_folds
    from training.trainer import fit_run

    if not plan.folds:
        return fit_run(config, samples=plan.samples, on_epoch=report)["best_macro_f1"]
    scores = []
    for k, split in enumerate(person_folds(plan.samples, plan.folds, config.seed)):
        print(f"== fold {k + 1}/{plan.folds}")
        fold = replace(config, out=str(Path(config.out) / f"fold{k}"))
        offset = k * config.epochs
        scores.append(fit_run(fold, split=split, samples=plan.samples,
                              on_epoch=lambda epoch, f1: report(offset + epoch, f1))["best_macro_f1"])
    return statistics.mean(scores)


def drop_checkpoints(trial_dir: Path) -> None:
    """A trial keeps its summary, logs and plots, not its weights: the best command retrains, and eight
    trials of a resnet18 would leave ~700 MB of checkpoints behind."""
    for checkpoint in trial_dir.glob("**/*.pt"):
        checkpoint.unlink(missing_ok=True)
