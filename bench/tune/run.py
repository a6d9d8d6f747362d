"""One tuning run: search (or the full grid), measure the pick at every shape and end to end, and
return the record that the reports, ``recommendation.json`` and ``training.fit --pipeline best`` read.

A Ctrl-C stops the run in whichever phase it is (``SoFar.phase``): ``TuneInterrupted`` carries the
partial record (``partial_record``) of what the run had measured until then. A partial record
recommends nothing: it has no pick, and ``training.fit --pipeline best`` refuses it.

``ray_nodes`` adds, where a pipeline that needs a cluster was measured, how many of the
cluster's CPU nodes would feed the pick's consumption (bench.ray_scale).
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from bench.tune import measure
from bench.tune.config import TuneConfig
from bench.tune.forecast import Prediction, explain_bottleneck
from bench.tune.search import SearchLog, dropped_pipelines, exhaustive, grid_check, rank, search
from feeding.backends import capabilities
from feeding.errors import FeedError


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C once a tuning run had begun measuring; ``record``: its partial record (``partial_record``)."""

    def __init__(self, record: dict) -> None:
        super().__init__(record["interrupted"]["note"])
        self.record = record


@dataclass
class SoFar:
    """What a tuning run has measured, kept as each phase goes: what a Ctrl-C leaves to report."""

    measurer: measure.Measurer
    log: SearchLog = field(default_factory=SearchLog)
    phase: str = "search"
    search_stop: str | None = None  # why the search ended early: the budget spent
    search_s: float | None = None  # None: the search is still running (a Ctrl-C stops it there)
    predictions: list[Prediction] = field(default_factory=list)  # the search's, ranked
    profile: list[Prediction] = field(default_factory=list)
    profile_s: float = 0.0
    checks: list[tuple[Prediction, dict]] = field(default_factory=list)

    def enter(self, phase: str) -> None:
        self.measurer.ctrl_c.check()
        self.phase = phase
        self.measurer.progress.set_postfix_str(phase)  # the bar says where the run is, and so where a Ctrl-C stops


def tune(config: TuneConfig, ctrl_c: measure.CtrlC | None = None) -> dict:
    """Search, check the pick end to end, and return the recommendation record; with ``--exhaustive``,
    the grid's record with the tuner checked against it (``exhaustive_check``).

    A Ctrl-C once measuring has begun raises ``TuneInterrupted`` with the partial record, and so does
    an error that follows one (a worker it stopped); before that, it propagates as it came (nothing
    was measured). ``ctrl_c``: the watch of an enclosing run (the exhaustive check's search is one
    run with the grid's); None: this run's own.
    """
    from tqdm import tqdm

    from feeding.sample import resolve_data
    from feeding.sources import discover
    from training.models import build_model

    samples = discover(resolve_data(config.data), on_bad=config.on_bad)
    build_model(config.model, len(samples.classes))  # an unknown model fails now, not after the feed sweep
    ctrl_c = ctrl_c or measure.CtrlC()
    so_far = None
    try:
        # The Ctrl-C reaches the loader's workers too: one it stopped as it started fails the measurement in
        # hand ("a data-loading worker died") where this process's own KeyboardInterrupt was swallowed.
        with (ctrl_c.installed(), ctrl_c.errors_are_interrupts(),
              tqdm(desc="tune: measurements", unit="point", file=sys.stderr) as progress):
            so_far = SoFar(measure.Measurer(config, samples, progress, ctrl_c))
            record = measured_record(config, samples, so_far)
            if config.exhaustive:
                progress.close()  # the tuner's search shows a bar of its own
                so_far.phase = "exhaustive check (the tuner's search)"
                record["exhaustive_check"] = compare_with_tuner(config, record, ctrl_c)
        return record
    except KeyboardInterrupt as stop:
        if so_far is None:
            raise
        tuner = stop.record if isinstance(stop, TuneInterrupted) else None  # the comparison's own search
        raise TuneInterrupted(partial_record(config, samples, so_far, tuner)) from None


def measured_record(config: TuneConfig, samples, so_far: SoFar) -> dict:
    """The run's phases in turn, each keeping what it measures in ``so_far``; the complete record."""
    from feeding.spec_file import spec_provenance

    measurer = so_far.measurer
    so_far.enter("exhaustive grid" if config.exhaustive else "search")
    try:
        so_far.predictions = exhaustive(measurer) if config.exhaustive else search(measurer, so_far.log)
    except measure.BudgetExceeded as stop:  # the search ends with what it has; the run goes on
        so_far.search_stop = str(stop)
        so_far.predictions = rank(measurer.measured_predictions())
    so_far.search_s = time.perf_counter() - measurer.started
    if not so_far.predictions:
        raise FeedError(f"nothing was measured before the budget ran out ({so_far.search_stop}); raise --budget-s")
    so_far.enter("shape profile")
    started = time.perf_counter()
    for row in measure.shape_profile(measurer, so_far.predictions[0].setup):
        so_far.profile.append(row)
    so_far.profile_s = time.perf_counter() - started
    so_far.enter("end-to-end check")
    for made in check_candidates(config, samples, so_far.predictions, measurer):
        so_far.checks.append(made)
    so_far.enter("loader stage breakdown")
    best, check = pick_measured(so_far.checks)
    ray_scale = ray_nodes(measurer.feed, best, config.ranks)
    bottleneck, sentence = explain_bottleneck(best, [*so_far.predictions, *so_far.profile])
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
        "job_predicted_ips": best.predicted_ips * config.ranks,  # every rank at the per-rank prediction
        "measured_ips": check["measured_ips"],
        "data_wait_fraction": check["data_wait_fraction"],
        "prediction_error": check["measured_ips"] / best.predicted_ips - 1,
        "bottleneck": BOTTLENECK_WORDS[bottleneck].format(stage=stage),
        "bottleneck_stage": bottleneck,
        "stages": dict(best.stages),
        "feed_ceiling_ips": feed_ceiling(measurer, best.setup),
        "loader_bottleneck_stage": stage,
        "verdict": sentence,
        "decode_device": check["decode_device"],
        "model_threads": best.model_threads,
        "end_to_end": check,
        "ray_scale": ray_scale,
        **measured_parts(config, samples, so_far),
    }


def measured_parts(config: TuneConfig, samples, so_far: SoFar) -> dict:
    """What a record holds of the run's settings and of what it measured, whether complete or partial:
    the search (every measurement, and the ranking from them), the shape profile, the end-to-end
    checks, the files left out, and the provenance."""
    from bench.provenance import provenance
    from feeding.io import display_path
    from feeding.sources import dataset_fingerprint

    measurer = so_far.measurer
    ranked = so_far.predictions or rank(measurer.measured_predictions())  # stopped mid-search: from the cache
    running = so_far.search_s is None
    search_s = time.perf_counter() - measurer.started if running else so_far.search_s
    return {
        "ranks": config.ranks,
        "step": config.step.to_dict(),
        "checked": [{**made.row(), "end_to_end": made_check} for made, made_check in so_far.checks],
        "model": config.model,
        "device": config.device,
        "dataset": dataset_fingerprint(samples),
        "search": {"mode": "exhaustive" if config.exhaustive else "climb", "seconds": search_s,
                   "interrupted": "interrupted (Ctrl-C)" if running else so_far.search_stop,
                   "measurements": measurer.log,
                   "ranked": [p.row() for p in ranked],
                   "dropped": dropped_pipelines(config.pipelines, ranked, so_far.log) if ranked else []},
        "shape_profile": {"seconds": so_far.profile_s, "rows": [p.row() for p in so_far.profile]},
        "on_bad": config.on_bad,
        "skipped": [{"path": display_path(path), "reason": measurer.skipped[path].reason}
                    for path in sorted(measurer.skipped)],
        **provenance(),
    }


def partial_record(config: TuneConfig, samples, so_far: SoFar, tuner: dict | None = None) -> dict:
    """The record of a run interrupted in ``so_far.phase``: what it measured, marked ``partial``, with a
    note of where it stopped and what it kept, and no pick. ``tuner``: the partial record of the
    tuner's search that the exhaustive check had begun (None: not begun, or not an exhaustive run)."""
    from feeding.spec_file import spec_provenance

    parts = measured_parts(config, samples, so_far)
    tuner_search = tuner["search"] if tuner is not None else None
    kept = len(parts["search"]["measurements"]) + (len(tuner_search["measurements"]) if tuner_search else 0)
    checks = len(parts["checked"])
    note = (f"interrupted (Ctrl-C) during the {so_far.phase}: {kept} measurement(s)"
            + (f" and {checks} end-to-end check(s)" if checks else "") + " kept")
    return {
        "partial": True,
        "interrupted": {"phase": so_far.phase, "measurements_kept": kept, "end_to_end_checks_kept": checks,
                        "note": note},
        **spec_provenance(train=config.spec.train if config.spec else None,
                          spec_file=config.spec.name if config.spec else None),
        **parts,
        **({"tuner_search": tuner_search} if config.exhaustive else {}),
    }


BOTTLENECK_WORDS = {
    "input": "input (the loader's workers; their slowest stage: {stage})",
    "host": "host (the training process: receiving, copying and launching each step)",
    "model": "model (forward+backward on the device)",
}


def check_candidates(config: TuneConfig, samples, ranked: list[Prediction],
                     measurer) -> Iterator[tuple[Prediction, dict]]:
    """The ``config.checked`` best predicted setups at the pick's shape, each measured end to end
    with the real loop, one at a time (a Ctrl-C keeps those made): (the prediction with its measured
    rate, the check's record). The pick is the fastest measured: predictions prune and explain, the
    measurement decides."""
    shape = ranked[0].setup.size
    for prediction in [p for p in ranked if p.setup.size == shape][: config.checked]:
        measurer.ctrl_c.check()  # a Ctrl-C swallowed while the last check forked its workers
        check, skipped = measure.check_end_to_end(config, samples, prediction)
        measurer.note_skipped(skipped)
        yield replace(prediction, measured_ips=check["measured_ips"]), check


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


def compare_with_tuner(config: TuneConfig, exhaustive_record: dict, ctrl_c: measure.CtrlC | None = None) -> dict:
    """Run the tuner's search too (same machine, same run: ``ctrl_c``, its watch), and rate its pick
    against the grid's best (``grid_check``)."""
    tuned = tune(replace(config, exhaustive=False, budget_s=math.inf), ctrl_c)  # no budget: the search runs to its end
    tuner_pick = Prediction.from_row(tuned)  # the record's headline fields are a row's
    grid = [Prediction.from_row(row) for row in exhaustive_record["search"]["ranked"]]
    # search against search: both runs also do the same end-to-end check
    return grid_check(tuner_pick, tuned["search"]["seconds"], grid, exhaustive_record["search"]["seconds"])
