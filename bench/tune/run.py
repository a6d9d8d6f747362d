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
from feeding.checks import Shape
from feeding.errors import FeedError


def tune(config: TuneConfig) -> dict:
    """Search, check the pick end to end, and return the recommendation record."""
    from tqdm import tqdm

    from bench.provenance import provenance
    from feeding.io import display_path
    from feeding.sample import resolve_data
    from feeding.sources import dataset_fingerprint, discover
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
    best = predictions[0]
    profile_started = time.perf_counter()
    profile = measure.shape_profile(measurer, best.setup)
    profile_s = time.perf_counter() - profile_started
    check, e2e_skipped = measure.check_end_to_end(config, samples, best)
    measurer.note_skipped(e2e_skipped)
    ray_scale = ray_nodes(measurer.feed, best, config.ranks)
    bottleneck, sentence = explain_bottleneck(best, [*predictions, *profile])
    stage = measure.loader_stage(config, samples, best)
    return {
        "pipeline": best.setup.pipeline,
        "workers": best.setup.workers,
        "batch": best.setup.batch,
        "size": list(best.setup.size),
        "feed_ips": best.feed_ips,
        "consume_ips": best.consume_ips,
        "predicted_ips": best.predicted_ips,
        "ranks": config.ranks,
        "job_predicted_ips": best.predicted_ips * config.ranks,  # every rank at the per-rank prediction
        "measured_ips": check["measured_ips"],
        "data_wait_fraction": check["data_wait_fraction"],
        "prediction_error": check["measured_ips"] / best.predicted_ips - 1,
        "bottleneck": f"input ({stage} stage)" if bottleneck == "input" else "model (forward+backward)",
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


def ray_nodes(feeds: dict[tuple[str, int, Shape, int], float], best: Prediction, ranks: int) -> dict | None:
    """How many Ray CPU nodes would feed the pick's consumption (all ``ranks``), from the feeds of the
    pipeline that runs on the cluster, at the pick's shape (its batch where measured); None where no
    such pipeline was measured. ``feeds``: img/s by (pipeline, workers, size, batch).

    The cluster is the one RAY_ADDRESS names, where ray was measured; its typical CPU node
    sets what one node feeds (bench.ray_scale).
    """
    from bench.ray_scale import cluster_nodes, cpu_node_size, scale_report
    from feeding.backends.ray_cluster import address_from_env

    pick = best.setup
    at_shape = {(batch, max(1, workers)): ips for (name, workers, size, batch), ips in feeds.items()
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
