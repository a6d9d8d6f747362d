"""The search for the best setup, the order that ranks setups, and the check against the full grid.

The search is not a grid. Per pipeline it climbs the worker ladder (0, 1, 2,
4, ...) while the feed improves, drops pipelines that fall far behind the
leader, measures every shape only for the pipelines left, and measures each
model-side point (shape, batch, threads) once, whichever pipeline asks.
``exhaustive`` measures the whole grid, to check the pick against the true best.

The pick (``rank``): first the shape, the largest of the user's at which the best
setup keeps the model fed (else the one with the best predicted rate); then,
at that shape, the highest predicted rate, ties within 1% going to the faster
feed, then to fewer workers.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from bench.tune.forecast import Prediction, Setup, by_area, workers_phrase
from bench.tune.measure import Measurer
from feeding.backends import capabilities
from feeding.checks import Shape
from feeding.errors import MissingDependencyError

CLIMB_GAIN = 1.05  # keep adding workers while the feed improves by at least 5%
PRUNE_RATIO = 0.6  # drop a pipeline whose best feed is below 60% of the leader's
TIE_TOLERANCE = 0.01  # predicted rates within 1% are a tie: within the noise of the measurements behind them


@dataclass
class SearchLog:
    """What the search learnt besides its predictions, kept when the budget stops it half-way."""

    climbs: dict[str, tuple[int, float]] = field(default_factory=dict)  # pipeline: (workers, feed img/s)
    unavailable: dict[str, str] = field(default_factory=dict)  # pipeline: why it could not be measured


def climb_workers(measurer: Measurer, pipeline: str, size: Shape, batch: int, leader_ips: float) -> tuple[int, float]:
    """(workers, feed img/s) with the best feed for ``pipeline``: climb its worker ladder while it pays."""
    best_w, best_ips = -1, 0.0
    for w in capabilities(pipeline).worker_ladder(measurer.config.workers_max, measurer.config.on_cpu):
        ips = measurer.feed_rate(pipeline, w, size, batch).ips
        paid = best_w < 0 or ips >= best_ips * CLIMB_GAIN
        if ips > best_ips:  # the best measured, even where the gain is too small to climb on
            best_w, best_ips = w, ips
        if not paid and w > 1:
            break
        if w >= 1 and leader_ips and best_ips < PRUNE_RATIO * leader_ips and w >= 2:
            break  # far behind the leader: stop spending budget on it
    return best_w, best_ips


def pruned_pipelines(climbs: dict[str, tuple[int, float]]) -> dict[str, str]:
    """The climbed pipelines whose best feed is below PRUNE_RATIO of the leader's, each with why (pure)."""
    if not climbs:
        return {}
    leader = max(climbs, key=lambda name: (climbs[name][1], name))
    leader_workers, leader_ips = climbs[leader]
    return {name: f"best feed {ips:.0f} img/s with {workers_phrase(name, w)}, below {100 * PRUNE_RATIO:.0f}% of "
                  f"the leader's {leader_ips:.0f} ({leader}, {workers_phrase(leader, leader_workers)})"
            for name, (w, ips) in climbs.items() if ips < PRUNE_RATIO * leader_ips}


def search(measurer: Measurer, log: SearchLog) -> list[Prediction]:
    """The tuner's search; returns every prediction it made, best first, and fills ``log``."""
    cfg = measurer.config
    sizes = sorted(cfg.sizes, key=by_area, reverse=True)  # largest first: see the stop below
    ref_batch = max(measurer.fitting_batches(sizes[0]))
    leader = 0.0
    for name in cfg.pipelines:
        try:
            log.climbs[name] = climb_workers(measurer, name, sizes[0], ref_batch, leader)
        except MissingDependencyError as error:  # the others can still be tuned; the report says why not this one
            log.unavailable[name] = str(error)
            continue
        leader = max(leader, log.climbs[name][1])
    if not log.climbs:
        raise MissingDependencyError("no pipeline could be measured: " + "; ".join(
            f"{name}: {why}" for name, why in log.unavailable.items()))
    pruned = pruned_pipelines(log.climbs)
    survivors = [name for name in log.climbs if name not in pruned]
    predictions: list[Prediction] = []
    for size in sizes:
        for name in survivors:
            for batch in measurer.fitting_batches(size):
                for workers in _workers_to_try(name, log.climbs[name][0], cfg.on_cpu, measurer.measured_workers(
                        name, size, batch)):
                    predictions.append(measurer.prediction(Setup(name, workers, batch, size)))
        if rank(predictions)[0].bottleneck == "model":
            break  # the feed keeps up at this shape: no smaller one can be picked (see pick_shape)
    return rank(predictions)


def _workers_to_try(pipeline: str, climbed: int, on_cpu: bool, measured: set[int]) -> list[int]:
    """The climb's best worker count, every count whose feed is already measured at this shape and
    batch (no new measurement: more setups for the end-to-end checks to choose from), and on the
    CPU the fewest the pipeline runs with and 1: fewer workers leave the model more cores."""
    fewer = {capabilities(pipeline).fewest_workers(on_cpu), 1} if on_cpu else set()
    return sorted({climbed, *fewer, *measured})


def exhaustive(measurer: Measurer) -> list[Prediction]:
    """Every pipeline at every worker count, shape and fitting batch, ranked."""
    cfg = measurer.config
    predictions = [
        measurer.prediction(Setup(name, w, b, s))
        for name in cfg.pipelines
        for w in range(capabilities(name).fewest_workers(cfg.on_cpu), cfg.workers_max + 1)
        for s in cfg.sizes
        for b in measurer.fitting_batches(s)
    ]
    return rank(predictions)


# ---------------------------------------------------------------- the order


def order_key(p: Prediction) -> tuple:
    """A total order, best first: the rate, then the tie-breaks, then names, so that equal rates
    come out the same whatever the input order."""
    c = p.setup
    return (-p.predicted_ips, -p.feed_ips, c.workers, c.pipeline, -c.batch, tuple(-s for s in c.size))


def _pick_by_rate(predictions: list[Prediction]) -> Prediction:
    """The best by predicted img/s; rates within TIE_TOLERANCE of the best are a tie, which goes
    to the faster feed (also within the tolerance: more headroom), then to fewer workers (fewer cores)."""
    top = max(p.predicted_ips for p in predictions)
    tied = [p for p in predictions if p.predicted_ips >= top * (1 - TIE_TOLERANCE)]
    fastest_feed = max(p.feed_ips for p in tied)
    tied = [p for p in tied if p.feed_ips >= fastest_feed * (1 - TIE_TOLERANCE)]
    return min(tied, key=lambda p: (p.setup.workers, order_key(p)))


def rank_by_rate(predictions: list[Prediction]) -> list[Prediction]:
    """Best first by predicted img/s, ties broken as in ``_pick_by_rate`` (pure)."""
    remaining = sorted(predictions, key=order_key)  # fastest first: the contenders are a prefix
    ranked = []
    while remaining:
        floor = remaining[0].predicted_ips * (1 - TIE_TOLERANCE)
        contenders = list(itertools.takewhile(lambda p: p.predicted_ips >= floor, remaining))
        chosen = _pick_by_rate(contenders)
        ranked.append(chosen)
        remaining.remove(chosen)
    return ranked


def pick_shape(predictions: list[Prediction]) -> Shape:
    """The largest shape at which the best setup keeps the model fed (is model-bound); where
    no shape is, the shape of the best predicted rate (pure; ``predictions`` not empty).

    A smaller shape always trains faster, so speed alone would always pick the
    smallest; the shapes a user lists are the ones they accept, and the largest
    one the feed keeps up with costs the model nothing.
    """
    best_at = {size: _pick_by_rate([p for p in predictions if p.setup.size == size])
               for size in {p.setup.size for p in predictions}}
    fed = [size for size, best in best_at.items() if best.bottleneck == "model"]
    if fed:
        return max(fed, key=by_area)
    return _pick_by_rate(list(best_at.values())).setup.size


def rank(predictions: list[Prediction]) -> list[Prediction]:
    """Best first (pure, the same whatever the input order): the setups at ``pick_shape``
    by predicted img/s (ties within 1% to the faster feed, then fewer workers), then the other
    shapes' setups in the same order."""
    if not predictions:
        return []
    shape = pick_shape(predictions)
    return (rank_by_rate([p for p in predictions if p.setup.size == shape])
            + rank_by_rate([p for p in predictions if p.setup.size != shape]))


# ---------------------------------------------------------------- what lost, and the grid


def dropped_pipelines(pipelines: tuple[str, ...], ranked: list[Prediction], log: SearchLog) -> list[dict]:
    """Why each pipeline other than the pick's lost (pure): [{pipeline, reason}], in ``pipelines`` order."""
    pick = ranked[0]
    shape = pick.setup.size
    pruned = pruned_pipelines(log.climbs)
    best_at_shape: dict[str, Prediction] = {}  # by pipeline: its first in ``ranked`` at the pick's shape
    for p in ranked:
        if p.setup.size == shape:
            best_at_shape.setdefault(p.setup.pipeline, p)
    out = []
    for name in pipelines:
        if name == pick.setup.pipeline:
            continue
        best = best_at_shape.get(name)
        if name in log.unavailable:
            reason = f"not measured: {log.unavailable[name]}"
        elif name in pruned:
            reason = f"pruned during the climb: {pruned[name]}"
        elif best is not None:
            tie = (f" (within {100 * TIE_TOLERANCE:.0f}%: a tie, which goes to the faster feed, then fewer workers)"
                   if best.predicted_ips >= pick.predicted_ips * (1 - TIE_TOLERANCE) else "")
            reason = (f"ranked lower: best predicted {best.predicted_ips:.1f} img/s with "
                      f"{workers_phrase(name, best.setup.workers)} at {shape[0]}x{shape[1]} against the "
                      f"pick's {pick.predicted_ips:.1f}{tie}")
        else:
            reason = f"not measured at {shape[0]}x{shape[1]} before the search stopped"
        out.append({"pipeline": name, "reason": reason})
    return out


def grid_check(tuner_pick: Prediction, tuner_s: float, grid: list[Prediction], grid_s: float) -> dict:
    """The tuner's pick against the exhaustive grid's best (pure; times in seconds).

    The grid's best is chosen by a criterion of its own, not by ``rank``'s tie-breaks:
    the highest predicted img/s among the grid's setups at the shape ``pick_shape``
    takes from the grid. The tuner's pick is rated with the grid's measurement of the same
    setup where the grid has it (like with like), else with the tuner's own.
    """
    shape = pick_shape(grid)
    at_shape = [p for p in grid if p.setup.size == shape]
    best = min(at_shape, key=order_key)  # the highest rate; exact ties by the fixed order
    in_grid = next((p for p in grid if p.setup == tuner_pick.setup), None)
    tuner_ips = (in_grid or tuner_pick).predicted_ips
    return {
        "headline": "this record's recommendation is the grid ranked by the tuner's rule (the largest shape the "
                    f"feed keeps up with, then predicted img/s; ties within {100 * TIE_TOLERANCE:.0f}% to the "
                    "faster feed, then fewer workers)",
        "tuner_pick": {**_setup_fields(tuner_pick.setup), "predicted_ips": tuner_ips,
                       "rated_by": "the grid's measurement" if in_grid else "the tuner's own measurement"},
        "grid_best": {**_setup_fields(best.setup), "predicted_ips": best.predicted_ips,
                      "criterion": f"the highest predicted img/s among the grid's {len(at_shape)} candidates at "
                                   f"{shape[0]}x{shape[1]}, the shape the tuner's rule takes from the grid"},
        "agree": tuner_pick.setup == best.setup,
        "ratio": tuner_ips / best.predicted_ips,
        "tuner_search_s": tuner_s,
        "grid_search_s": grid_s,
        "time_ratio": tuner_s / grid_s,
    }


def _setup_fields(setup: Setup) -> dict:
    return {"pipeline": setup.pipeline, "workers": setup.workers, "batch": setup.batch, "size": list(setup.size)}
