"""One tuning run: search (or the full grid), measure the pick at every shape and end to end, and
return the record that the reports, ``recommendation.json`` and ``training.fit --pipeline best`` read.

``ray_nodes`` adds, where a pipeline that needs a cluster was measured, how many of the
cluster's CPU nodes would feed the pick's consumption (bench.ray_scale).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import replace

from bench.tune import measure
from bench.tune.config import TuneConfig
from bench.tune.forecast import Prediction, explain_bottleneck
from bench.tune.search import SearchLog, dropped_pipelines, exhaustive, grid_check, rank, search
from feeding.backends import capabilities
from feeding.errors import FeedError


def tune(config: TuneConfig) -> dict:
    """Search, check the pick end to end, and return the recommendation record."""
    from tqdm import tqdm

    from bench.provenance import provenance
    from feeding.io import display_path
    from feeding.sample import resolve_data
    from feeding.sources import dataset_fingerprint, discover
    from feeding.spec_file import spec_provenance
    from training.models import build_model

    samples = discover(resolve_data(config.data), on_bad=config.on_bad)
    build_model(config.model, len(samples.classes))  # an unknown model fails now, not after the feed sweep
    started = time.perf_counter()
    with tqdm(desc="tune: measurements", unit="point", file=sys.stderr) as progress:
        measurer = measure.Measurer(config, samples, progress)
        log = SearchLog()
        try:
            predictions = exhaustive(measurer) if config.exhaustive else search(measurer, log)
            interrupted = None
        except (measure.BudgetExceeded, KeyboardInterrupt) as stop:
            interrupted = str(stop) or "interrupted"
            predictions = rank(measurer.measured_predictions())
    search_s = time.perf_counter() - started
    if not predictions:
        raise FeedError(f"nothing was measured before the budget ran out ({interrupted}); raise --budget-s")
    profile_started = time.perf_counter()
    profile = measure.shape_profile(measurer, predictions[0].setup)
    profile_s = time.perf_counter() - profile_started
    checks_made = check_candidates(config, samples, predictions, measurer)
    best, check = pick_measured(checks_made)
    ray_scale = ray_nodes(measurer.feed, best, config.ranks)
    bottleneck, sentence = explain_bottleneck(best, [*predictions, *profile])
    stage = measure.loader_stage(config, samples, best) if bottleneck == "input" else "(not the bottleneck)"
    return {
        "pipeline": best.setup.pipeline,
        "workers": best.setup.workers,
        "batch": best.setup.batch,
        "size": list(best.setup.size),
        # What the measured feeds ran at the pick's shape; a --spec file fixes the shape (no shape searched).
        **spec_provenance(train=config.spec_at(best.setup.size), spec_file=config.spec.name if config.spec else None),
        "shape_fixed_by_spec": config.spec is not None,
        "feed_ips": best.feed_ips,
        "consume_ips": best.consume_ips,
        "predicted_ips": best.predicted_ips,
        "ranks": config.ranks,
        "job_predicted_ips": best.predicted_ips * config.ranks,  # every rank at the per-rank prediction
        "measured_ips": check["measured_ips"],
        "data_wait_fraction": check["data_wait_fraction"],
        "prediction_error": check["measured_ips"] / best.predicted_ips - 1,
        "bottleneck": BOTTLENECK_WORDS[bottleneck].format(stage=stage),
        "bottleneck_stage": bottleneck,
        "stages": dict(best.stages),
        "feed_ceiling_ips": feed_ceiling(measurer, best.setup),
        "step": config.step.to_dict(),
        "checked": [{**made.row(), "end_to_end": made_check} for made, made_check in checks_made],
        "loader_bottleneck_stage": stage,
        "verdict": sentence,
        "model": config.model,
        "device": config.device,
        "decode_device": check["decode_device"],
        "model_threads": best.model_threads,
        "dataset": dataset_fingerprint(samples),
        "search": {"mode": "exhaustive" if config.exhaustive else "climb", "seconds": search_s,
                   "interrupted": interrupted, "measurements": measurer.log,
                   "ranked": [p.row() for p in predictions],
                   "dropped": dropped_pipelines(config.pipelines, predictions, log)},
        "shape_profile": {"seconds": profile_s, "rows": [p.row() for p in profile]},
        "on_bad": config.on_bad,
        "skipped": [{"path": display_path(path), "reason": measurer.skipped[path].reason}
                    for path in sorted(measurer.skipped)],
        "end_to_end": check,
        "ray_scale": ray_scale,
        **provenance(),
    }


BOTTLENECK_WORDS = {
    "input": "input (the loader's workers; their slowest stage: {stage})",
    "host": "host (the training process: receiving, copying and launching each step)",
    "model": "model (forward+backward on the device)",
}


def check_candidates(config: TuneConfig, samples, ranked: list[Prediction],
                     measurer) -> list[tuple[Prediction, dict]]:
    """The ``config.checked`` best predicted setups at the pick's shape, each measured end to end
    with the real loop: [(the prediction with its measured rate, the check's record)]. The pick is
    the fastest measured: predictions prune and explain, the measurement decides."""
    shape = ranked[0].setup.size
    candidates = [p for p in ranked if p.setup.size == shape][: config.checked]
    made = []
    for prediction in candidates:
        check, skipped = measure.check_end_to_end(config, samples, prediction)
        measurer.note_skipped(skipped)
        made.append((replace(prediction, measured_ips=check["measured_ips"]), check))
    return made


# End-to-end rates within 5% are a tie: a few seconds' measurement on a shared host moves that much
# (1.5 s checks on this 2-core host repeat within about that). A tie goes to the ranking's first, the setup with
# the faster predicted rate and feed: the one with headroom when the host gets busier.
MEASURED_TIE = 0.05


def pick_measured(checks_made: list[tuple[Prediction, dict]]) -> tuple[Prediction, dict]:
    """The fastest measured setup; rates within MEASURED_TIE of it are a tie, which goes to the
    first in the ranking (the faster feed, then fewer workers: ``search.rank``)."""
    fastest = max(made.measured_ips for made, _ in checks_made)
    return next(pair for pair in checks_made if pair[0].measured_ips >= fastest * (1 - MEASURED_TIE))


def feed_ceiling(measurer, pick) -> float:
    """The most img/s any measured loader delivered to the device at the pick's shape and batch:
    what this host sustains for any model (a model faster than this waits for its input)."""
    return max(point.ips for (_, _, size, batch), point in measurer.feed.items()
               if size == pick.size and batch == pick.batch)


def ray_nodes(feeds: dict, best: Prediction, ranks: int) -> dict | None:
    """How many Ray CPU nodes would feed the pick's consumption (all ``ranks``), from the feeds of the
    pipeline that runs on the cluster, at the pick's shape (its batch where measured); None where no
    such pipeline was measured. ``feeds``: img/s by (pipeline, workers, size, batch).

    The cluster is the one RAY_ADDRESS names, where ray was measured; its typical CPU node
    sets what one node feeds (bench.ray_scale).
    """
    from bench.ray_scale import cluster_nodes, cpu_node_size, scale_report
    from feeding.backends.ray_cluster import address_from_env

    pick = best.setup
    at_shape = {(batch, max(1, workers)): point.ips for (name, workers, size, batch), point in feeds.items()
                if capabilities(name).needs_cluster and size == pick.size}
    batch = pick.batch if any(b == pick.batch for b, _ in at_shape) else max((b for b, _ in at_shape), default=None)
    ray_feeds = {actors: ips for (b, actors), ips in at_shape.items() if b == batch}
    if not ray_feeds:
        return None
    consume = best.consume_ips * ranks
    try:
        node_cpus = cpu_node_size(cluster_nodes(address_from_env()))
    except (FeedError, ConnectionError, ValueError) as error:
        return {"error": f"the Ray cluster's nodes could not be read: {error}", "consume_img_s": consume}
    return {**scale_report(ray_feeds, consume, node_cpus), "batch": batch, "size": list(pick.size)}


def compare_with_tuner(config: TuneConfig, exhaustive_record: dict) -> dict:
    """Run the tuner's search too (same machine, same run), and rate its pick against the grid's best
    (``grid_check``)."""
    tuned = tune(replace(config, exhaustive=False, budget_s=math.inf))  # no budget: the search runs to its end
    tuner_pick = Prediction.from_row(tuned)  # the record's headline fields are a row's
    grid = [Prediction.from_row(row) for row in exhaustive_record["search"]["ranked"]]
    # search against search: both runs also do the same end-to-end check
    return grid_check(tuner_pick, tuned["search"]["seconds"], grid, exhaustive_record["search"]["seconds"])
