"""``--pipeline best``: the tuner's recommendation, read and checked, the feed and the training
step it fills in, and whether its predicted rate (img/s) held in the run.

A recommendation is used only where it was made: this machine, this data set, this model and
device, and with the step it measured (its ``"step"``: ``training.step.StepConfig.to_dict()``);
anything else is a ``RecommendationError`` that names the differences. Never guesses. Its
prediction is compared with the run only where the run's feed and step are the recommended ones.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

from feeding.errors import FeedError
from training.config import DEFAULT_BATCH, DEFAULT_SIZE, DEFAULT_WORKERS, FitConfig
from training.step import StepConfig

PREDICTION_TOLERANCE = 0.15  # measured img/s within ±15% of the predicted rate: it held
RECOMMENDED_STEP_SETTINGS = ("amp", "channels_last", "cudnn_benchmark", "loss_every")  # unset flags take these
# The flag that sets each feed or step setting whose change alters the rate. lr and weight_decay
# are left out: they change what is learnt, not how fast.
RATE_FLAGS = {"pipeline": "--pipeline", "workers": "--workers", "batch": "--batch", "size": "--size",
              "optimizer": "--opt", "accum_steps": "--accum-steps", "amp": "--amp", "channels_last": "--channels-last",
              "cudnn_benchmark": "--cudnn-benchmark", "loss_every": "--loss-every"}


class RecommendationError(FeedError):
    """``--pipeline best`` cannot use the recommendation on file (missing, or made elsewhere)."""


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


def resolve_step(config: FitConfig, recommendation: dict | None, device) -> StepConfig:
    """The run's training step. optimizer, lr, weight_decay and accum_steps are the run's own;
    amp, channels_last, cudnn_benchmark and loss_every are ``config``'s where set, else the
    recommendation's step (``recommendation``: checked by ``load_recommendation``, or None), else
    ``device``'s defaults (``StepConfig.for_device``)."""
    recommended = recommendation["step"] if recommendation is not None else {}
    chosen = {name: getattr(config, name) if getattr(config, name) is not None else recommended.get(name)
              for name in RECOMMENDED_STEP_SETTINGS}
    return StepConfig.for_device(str(device), optimizer=config.optimizer, lr=config.lr,
                                 weight_decay=config.weight_decay, accum_steps=config.accum_steps, **chosen)


def difference_note(flag: str, mine, theirs) -> str:
    """'note: --loss-every 4 differs from the recommendation's 1: ...'; a switch as its flag, '--no-amp'."""
    if isinstance(mine, bool):
        yours, recommended = switch(flag, mine), switch(flag, theirs)
    else:
        yours, recommended = f"{flag} {shown_value(mine)}", shown_value(theirs)
    return f"note: {yours} differs from the recommendation's {recommended}: its prediction does not apply"


def switch(flag: str, on: bool) -> str:
    return flag if on else f"--no-{flag[2:]}"


def shown_value(value) -> str:
    """A value as typed on the command line: a size as HxW."""
    return "x".join(str(side) for side in value) if isinstance(value, (list, tuple)) else str(value)


def prediction_notes(config: FitConfig, step: StepConfig, recommendation: dict | None) -> list[str]:
    """One 'note: ...' for each feed or step setting of this run that differs from the recommendation's
    (each one makes its prediction not apply); empty without a recommendation, or where none differs."""
    if recommendation is None:
        return []
    mine = {"pipeline": config.pipeline, "workers": config.workers, "batch": config.batch, "size": list(config.size),
            **step.to_dict()}
    theirs = {**{key: recommendation[key] for key in ("pipeline", "workers", "batch")},
              "size": list(recommendation["size"]), **StepConfig(**recommendation["step"]).to_dict()}
    notes = [difference_note(flag, mine[key], theirs[key]) for key, flag in RATE_FLAGS.items()
             if mine[key] != theirs[key]]
    return notes + spec_notes(config, recommendation)


def spec_notes(config: FitConfig, recommendation: dict) -> list[str]:
    """A note where the run's training augmentation is not the one the tuner's feeds ran (its cost is
    part of the predicted rate); none for a recommendation that does not record it."""
    from feeding.spec_file import spec_record

    recorded = recommendation.get("spec", {}).get("train")
    if recorded is None or recorded == spec_record(config.train_augmentation):
        return []
    theirs = f"--spec {recommendation['spec_file']}" if recommendation.get("spec_file") else "the benchmark spec"
    mine = f"--spec {config.spec.name}" if config.spec is not None else "the benchmark spec"
    return [f"note: the augmentation ({mine}) differs from the recommendation's ({theirs}): its prediction "
            "does not apply"]


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
        check_complete(record, path, hint)  # before the keys: a partial record has no pick to read
        for key in ("pipeline", "workers", "batch", "size"):
            record[key]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RecommendationError(f"--pipeline best: unreadable recommendation {path} ({err!r}); {hint}") from err
    check_recorded_step(record, path, hint)
    differences = recommendation_mismatches(record, samples, config)
    if differences:
        listed = "\n  ".join(differences)
        raise RecommendationError(
            f"--pipeline best: {path} was made for other conditions:\n  {listed}\n{hint}")
    return record


def check_complete(record, path: Path, hint: str) -> None:
    """``RecommendationError`` for the partial record of an interrupted tuning run: it recommends nothing."""
    if isinstance(record, dict) and record.get("partial"):
        phase = (record.get("interrupted") or {}).get("phase", "run")
        raise RecommendationError(f"--pipeline best: {path} is a partial tuning record (interrupted during the "
                                  f"{phase}): it recommends nothing; {hint}")


def check_recorded_step(record: dict, path: Path, hint: str) -> None:
    """``RecommendationError`` unless ``record`` says which training step its prediction measured."""
    if "step" not in record:
        raise RecommendationError(f"--pipeline best: {path} does not say which training step its prediction "
                                  f"measured (no \"step\": made before tune recorded it); {hint}")
    try:
        StepConfig(**record["step"])
    except (ValueError, TypeError) as err:
        raise RecommendationError(f"--pipeline best: {path} has an unreadable \"step\" ({err}); {hint}") from err


def applicable_predicted_rate(config: FitConfig, step: StepConfig, recommendation: dict | None) -> float | None:
    """The recommendation's predicted img/s, if this run uses exactly the recommended feed and step."""
    if recommendation is None or prediction_notes(config, step, recommendation):
        return None
    return recommendation.get("predicted_ips")


def predicted_rate_verdict(measured: list[float], predicted: float | None) -> str:
    """Whether the measured img/s per epoch came within ``PREDICTION_TOLERANCE`` of the predicted rate."""
    if predicted is None:
        return "no applicable prediction (no recommendation, or the feed or the step differs from it)"
    # The first epoch pays one-off costs (worker start-up, allocator warm-up); leave it out if we can.
    steady = statistics.median(measured[1:] if len(measured) > 1 else measured)
    error = steady / predicted - 1
    held = "held" if abs(error) <= PREDICTION_TOLERANCE else "did not hold"
    return (f"prediction {held}: measured {steady:.1f} img/s (median over epochs) vs predicted "
            f"{predicted:.1f} img/s ({100 * error:+.1f}%; tolerance ±{100 * PREDICTION_TOLERANCE:.0f}%)")
