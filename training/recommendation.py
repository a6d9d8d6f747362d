"""``--pipeline best``: the tuner's recommendation, read and checked, the feed it fills in, and
whether its predicted rate (img/s) held in the run.

A recommendation is used only where it was made: this machine, this data set, this model and
device; anything else is a ``RecommendationError`` that names the differences. Never guesses.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

from feeding.errors import FeedError
from training.config import DEFAULT_BATCH, DEFAULT_SIZE, DEFAULT_WORKERS, FitConfig

PREDICTION_TOLERANCE = 0.15  # measured img/s within ±15% of the predicted rate: it held


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


def applicable_predicted_rate(config: FitConfig, recommendation: dict | None) -> float | None:
    """The recommendation's predicted img/s, if this run uses exactly the recommended feed."""
    if recommendation is None:
        return None
    feed = {"pipeline": config.pipeline, "workers": config.workers, "batch": config.batch, "size": list(config.size)}
    same = all(recommendation.get(key) == value for key, value in feed.items())
    return recommendation.get("predicted_ips") if same else None


def predicted_rate_verdict(measured: list[float], predicted: float | None) -> str:
    """Whether the measured img/s per epoch came within ``PREDICTION_TOLERANCE`` of the predicted rate."""
    if predicted is None:
        return "no applicable prediction (no recommendation, or the feed differs from it)"
    # The first epoch pays one-off costs (worker start-up, allocator warm-up); leave it out if we can.
    steady = statistics.median(measured[1:] if len(measured) > 1 else measured)
    error = steady / predicted - 1
    held = "held" if abs(error) <= PREDICTION_TOLERANCE else "did not hold"
    return (f"prediction {held}: measured {steady:.1f} img/s (median over epochs) vs predicted "
            f"{predicted:.1f} img/s ({100 * error:+.1f}%; tolerance ±{100 * PREDICTION_TOLERANCE:.0f}%)")
