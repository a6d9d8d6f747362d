"""The search space of ``training.hpo``: which settings a trial draws, over which ranges, read from
a YAML file (``--search FILE``) or the default below, and validated before any trial runs.

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}   # a range: low, high, and log or step
    loss: [ce, focal, weighted_ce]               # a list: one of them
    optimizer: adamw                             # a single value: fixed, not searched

Every name is a setting of ``PARAMETERS``; ``label_smoothing`` is drawn only for the cross-entropy
losses and ``focal_gamma`` only for focal loss (the two do not combine), so a trial never asks for
a combination ``training.fit`` refuses. ``rotation``, ``crop_scale`` and ``jitter`` set the strength
of the training spec's Rotate, RandomResizedCrop and ColorJitter (``training.hpo.trial``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from feeding import checks
from training.config import LOSSES, SCHEDULERS
from training.step import OPTIMIZERS


class SearchSpaceError(ValueError):
    """A search file or range that cannot be searched, said in one line naming the parameter."""


@dataclass(frozen=True)
class Setting:
    """One parameter a search may set: a number within [minimum, maximum] or one of ``choices``."""

    kind: str  # "float" or "choice"
    minimum: float | None = None
    maximum: float | None = None
    open_maximum: bool = False
    choices: tuple[str, ...] | None = None  # None for a choice: any name (the model, checked by timm)


PARAMETERS: dict[str, Setting] = {
    "model": Setting("choice"),  # timm model name or package.module:factory
    "optimizer": Setting("choice", choices=OPTIMIZERS),  # timm optimizer
    "lr": Setting("float", minimum=0.0),  # peak learning rate
    "weight_decay": Setting("float", minimum=0.0),  # the optimizer's weight decay
    "scheduler": Setting("choice", choices=SCHEDULERS),  # lr schedule
    "warmup_epochs": Setting("float", minimum=0.0),  # epochs of linear warm-up
    "loss": Setting("choice", choices=LOSSES),  # training loss
    "label_smoothing": Setting("float", 0.0, 1.0, open_maximum=True),  # label smoothing (ce and weighted_ce only)
    "focal_gamma": Setting("float", minimum=0.0),  # focal loss exponent (focal only)
    "rotation": Setting("float", 0.0, 180.0),  # the spec's Rotate: degrees either way
    "crop_scale": Setting("float", 0.0, 1.0),  # the spec's RandomResizedCrop: smallest area fraction
    "jitter": Setting("float", 0.0, 1.0),  # the spec's ColorJitter: brightness, contrast and saturation
}
STRICTLY_POSITIVE = ("lr", "crop_scale")  # zero is no learning rate, and no crop
CONDITIONS = {"label_smoothing": ("ce", "weighted_ce"), "focal_gamma": ("focal",)}  # drawn for these losses
SUGGEST_ORDER = tuple(PARAMETERS)  # the loss before the settings that depend on it

# Searched when no --search file is given: the competition recipe's knobs, with the model fixed (--model).
DEFAULT_SEARCH = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"low": 1e-5, "high": 0.1, "log": True},
    "optimizer": ["adamw", "adamp"],
    "loss": ["ce", "focal", "weighted_ce"],
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "focal_gamma": {"low": 1.0, "high": 3.0},
    "rotation": {"low": 0.0, "high": 30.0},
    "crop_scale": {"low": 0.3, "high": 1.0},
    "jitter": {"low": 0.0, "high": 0.4},
}


@dataclass(frozen=True)
class Range:
    """A number drawn from [low, high]: uniformly, on a log scale, or on a grid of ``step``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def record(self):
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}

    def shown(self) -> str:
        scale = ", log" if self.log else f", step {self.step:g}" if self.step else ""
        return f"[{self.low:g}, {self.high:g}{scale}]"


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (a single option: the value is fixed)."""

    options: tuple

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, self.options) if len(self.options) > 1 else self.options[0]

    def record(self):
        return list(self.options)

    def shown(self) -> str:
        return " | ".join(map(str, self.options))


@dataclass(frozen=True)
class SearchSpace:
    """What each trial draws: a ``Range`` or ``Choice`` per parameter. ``name``: where it came from."""

    params: dict
    name: str = "default search"

    def suggest(self, trial) -> dict:
        """A trial's values, drawn in ``SUGGEST_ORDER``; a conditional setting only where it applies."""
        values = {}
        for name in SUGGEST_ORDER:
            if name in self.params and applies(name, values):
                values[name] = self.params[name].suggest(trial, name)
        return values

    def record(self) -> dict:
        """JSON-safe, in a fixed order: two spaces are the same search where their records are equal."""
        return {name: self.params[name].record() for name in SUGGEST_ORDER if name in self.params}

    def searched(self) -> list[str]:
        """The parameters with more than one value."""
        return [name for name, p in self.params.items() if not (isinstance(p, Choice) and len(p.options) == 1)]

    def lines(self) -> list[str]:
        return [f"{name}: {self.params[name].shown()}" for name in SUGGEST_ORDER if name in self.params]


def applies(name: str, values: dict) -> bool:
    """Whether ``name`` is drawn given the values drawn before it (label smoothing not for focal loss)."""
    losses = CONDITIONS.get(name)
    return losses is None or values.get("loss", "ce") in losses


# ---------------------------------------------------------------- reading and checking


def load_search_file(path) -> SearchSpace:
    """The search space in the YAML (or JSON) file at ``path``; SearchSpaceError (one line) if unusable."""
    import yaml

    given = str(path)
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SearchSpaceError(f"{given}: no such search file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SearchSpaceError(f"{given}: cannot read it: {error}") from None
    except yaml.YAMLError as error:
        raise SearchSpaceError(f"{given}: YAML syntax error: {' '.join(str(error).split())}") from None
    if not isinstance(document, dict) or not document:
        raise SearchSpaceError(f"{given}: a search file is a mapping of parameter: range, list or value "
                               f"(parameters: {', '.join(PARAMETERS)})")
    return parse_space(document, Path(path).name, given)


def parse_space(document: dict, name: str = "default search", source: str | None = None) -> SearchSpace:
    """``document`` (parameter -> range, list or value) checked against ``PARAMETERS``."""
    where = source or name
    params = {}
    for key, value in document.items():
        if key not in PARAMETERS:
            raise SearchSpaceError(f"{where}: unknown search parameter {key!r}; known: {', '.join(PARAMETERS)}")
        params[key] = parse_parameter(key, value, f"{where}: {key}")
    check_loss_settings(params, where)
    return SearchSpace(params, name)


def parse_parameter(name: str, value, where: str):
    """A ``Range`` (a mapping), or a ``Choice`` (a list, or one value), for the parameter ``name``."""
    setting = PARAMETERS[name]
    if isinstance(value, dict):
        if setting.kind != "float":
            raise SearchSpaceError(f"{where}: a choice, not a range; give a list of "
                                   f"{' | '.join(setting.choices or ('names',))}")
        return parse_range(name, value, where)
    options = tuple(value) if isinstance(value, list) else (value,)
    if not options:
        raise SearchSpaceError(f"{where}: an empty list; give at least one value")
    if len(set(map(repr, options))) != len(options):
        raise SearchSpaceError(f"{where}: {list(options)} lists a value twice")
    for option in options:
        check_value(name, option, where)
    return Choice(tuple(float(o) if setting.kind == "float" else o for o in options))


def parse_range(name: str, value: dict, where: str) -> Range:
    unknown = set(value) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(value):
        raise SearchSpaceError(f"{where}: a range is {{low: L, high: H}} with optional log: true or step: S; "
                               f"got {value}")
    low, high = (check_value(name, value[end], f"{where}.{end}") for end in ("low", "high"))
    log, step = value.get("log", False), value.get("step")
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{where}.log must be true or false, got {log!r}")
    if low >= high:
        raise SearchSpaceError(f"{where}: low must be below high, got [{low:g}, {high:g}]")
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: a log range needs low > 0, got {low:g}")
    if step is not None:
        if log:
            raise SearchSpaceError(f"{where}: a range takes log or step, not both")
        try:
            checks.positive(f"{where}.step", step)
        except ValueError as error:
            raise SearchSpaceError(str(error)) from None
    return Range(float(low), float(high), log, None if step is None else float(step))


def check_value(name: str, value, where: str):
    """``value`` as one of the parameter's values, or SearchSpaceError naming ``where``."""
    setting = PARAMETERS[name]
    if setting.kind == "choice":
        if not isinstance(value, str) or not value.strip():
            raise SearchSpaceError(f"{where}: {value!r} is not a name")
        if setting.choices is not None and value not in setting.choices:
            raise SearchSpaceError(f"{where}: unknown value {value!r}; choose from {', '.join(setting.choices)}")
        return value
    try:
        checks.number(where, value, setting.minimum, setting.maximum, setting.open_maximum)
    except ValueError as error:
        raise SearchSpaceError(str(error)) from None
    if name in STRICTLY_POSITIVE and value <= 0:
        raise SearchSpaceError(f"{where} must be > 0, got {value!r}")
    if not math.isfinite(value):
        raise SearchSpaceError(f"{where} must be finite, got {value!r}")
    return float(value)


def check_loss_settings(params: dict, where: str) -> None:
    """A loss setting searched for losses the search never picks is a mistake, not a no-op."""
    losses = set(params["loss"].options) if isinstance(params.get("loss"), Choice) else {"ce"}
    for name, needs in CONDITIONS.items():
        if name in params and not losses & set(needs):
            raise SearchSpaceError(f"{where}: {name} is searched, but it applies only to loss "
                                   f"{' or '.join(needs)}, which the search never picks")


def check_models(space: SearchSpace) -> None:
    """Every model name the search may pick is one timm knows (or a module:factory): a typo fails now,
    not as N failed trials."""
    import timm

    choice = space.params.get("model")
    for name in choice.options if isinstance(choice, Choice) else ():
        if ":" not in name and not timm.is_model(name):
            raise SearchSpaceError(f"{space.name}: model: unknown timm model {name!r}")


def default_space(model: str) -> SearchSpace:
    return parse_space({**DEFAULT_SEARCH, "model": model})
