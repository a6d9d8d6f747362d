"""``feedbench tune``: pick pipeline, workers, batch and image shape from feed against consumption.

The question before a long GPU run: will the loader keep up with the model,
and which settings make the most of both? Predicted training rate is
min(feed, consume); on the CPU the loader's workers and the model share the
cores, so the model gets the threads the workers leave free.

The search is not a grid. Per pipeline it climbs the worker ladder (0, 1, 2,
4, ...) while the feed improves, drops pipelines that fall far behind the
leader, measures every shape only for the pipelines left, and measures each
model-side point (shape, batch, threads) once, whichever pipeline asks.
``--exhaustive`` measures the whole grid, to check the pick against the true best.

The pick (``rank``): first the shape, the largest of the user's at which the best
candidate keeps the model fed (else the one with the best predicted rate); then,
at that shape, the highest predicted rate, ties within 1% going to the faster
feed, then to fewer workers.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from training.models import model_threads
from feeding.errors import BadFile, FeedError, MissingDependencyError
from feeding.backends import PIPELINES
from feeding.feeder import FeedConfig
from feeding.spec import Shape, train_spec

WAIT_TOLERANCE = 0.05  # a model that waits less than 5% of the time is not held back by its input
CLIMB_GAIN = 1.05  # keep adding workers while the feed improves by at least 5%
PRUNE_RATIO = 0.6  # drop a pipeline whose best feed is below 60% of the leader's
TIE_TOLERANCE = 0.01  # predicted rates within 1% are a tie: within the noise of the measurements behind them
DALI_GPU_RESERVE = 2 * 2**30  # GPU memory left to DALI's pools when it decodes on the same GPU (bytes)
MIN_MEASURE_S = 20.0  # below this budget nothing meaningful can be measured


@dataclass(frozen=True)
class TuneConfig:
    """One tuning run; validated when built."""

    data: str | None = None
    model: str = "resnet18"
    device: str = "cpu"
    sizes: tuple[Shape, ...] = ((224, 224), (192, 192), (160, 160), (128, 128))
    budget_s: float = 300.0
    # Ray only where a cluster answers (the CLI default asks RAY_ADDRESS): a local Ray start is no tuning.
    pipelines: tuple[str, ...] = tuple(p for p in PIPELINES if p != "ray")
    workers_max: int = field(default_factory=lambda: 2 * (os.cpu_count() or 1))
    batches: tuple[int, ...] | None = None  # default: (32,) on the CPU, (64, 128, 256) on a GPU
    feed_batches: int = 4  # batches per timed window on the feed side
    consume_steps: int = 2
    e2e_batches: int = 8
    e2e_min_s: float = 3.0  # and at least this long: 8 batches at GPU rates is a fraction of a second
    exhaustive: bool = False
    isolate: bool = False  # each measurement in a fresh interpreter (slower; no state carried over)
    out: str = "results"
    seed: int = 0
    ranks: int = 1  # training processes on this host (torchrun --nproc-per-node): they share its cores
    on_bad: str = "skip"  # a bad listing row or unreadable file: "skip" (left out, reported) or "fail"

    @property
    def cores(self) -> int:
        """The cores one rank can count on: this host's, split between its ranks."""
        return max(1, (os.cpu_count() or 1) // self.ranks)

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("--sizes needs at least one size")
        unknown = [p for p in self.pipelines if p not in PIPELINES]
        if unknown:
            raise ValueError(f"unknown pipeline(s) {unknown}; choose from {', '.join(PIPELINES)}")
        if self.budget_s < MIN_MEASURE_S:
            raise ValueError(f"--budget-s {self.budget_s:g} is too small to measure anything; give at least "
                             f"{MIN_MEASURE_S:g} s (300 s gives a full search on 2 cores)")
        if self.batches is None:
            # On the CPU a step's cost per image hardly depends on the batch; on a GPU it does.
            object.__setattr__(self, "batches", (32,) if self.device == "cpu" else (64, 128, 256))
        if self.ranks < 1:
            raise ValueError(f"--ranks must be >= 1, got {self.ranks}")
        if self.ranks > (os.cpu_count() or 1):
            raise ValueError(f"--ranks {self.ranks} is more than this host's {os.cpu_count()} cores")
        # A rank's workers beyond twice its share of the cores only take cores from the other ranks.
        object.__setattr__(self, "workers_max", min(self.workers_max, 2 * self.cores))
        if self.workers_max < 1 or not self.batches or any(b < 1 for b in self.batches):
            raise ValueError("--workers-max and every batch size must be >= 1")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"--device must be cpu or cuda[:N], got {self.device!r}")
        if self.e2e_batches < 1 or self.e2e_min_s < 0:
            raise ValueError(f"--e2e-batches must be >= 1 and --e2e-min-s >= 0, got {self.e2e_batches} "
                             f"and {self.e2e_min_s:g}")
        if self.on_bad not in ("skip", "fail"):
            raise ValueError(f"--on-bad must be skip or fail, got {self.on_bad!r}")

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"


@dataclass(frozen=True)
class Candidate:
    pipeline: str
    workers: int
    batch: int
    size: Shape


@dataclass(frozen=True)
class Prediction:
    candidate: Candidate
    feed_ips: float  # what the loader delivers alone, img/s
    consume_ips: float  # what the model consumes with the threads left to it, img/s
    predicted_ips: float
    model_threads: int | None

    @property
    def bottleneck(self) -> str:
        """'input' when the loader holds the model back, else 'model'."""
        return "input" if wait_fraction(self.predicted_ips, self.consume_ips) > WAIT_TOLERANCE else "model"


class BudgetExceeded(Exception):
    """The tuning budget is spent; the search stops with what it has."""


def worker_ladder(workers_max: int, on_cpu: bool, pipeline: str = "pil") -> list[int]:
    """0 (load in the training process; only worth it on the CPU), then 1, 2, 4, ... up to the max.

    DALI always runs its own threads beside training, so it has no 0.
    """
    ladder = [0] if on_cpu and pipeline != "dali" else []
    w = 1
    while w <= workers_max:
        ladder.append(w)
        w *= 2
    if ladder[-1] != workers_max:
        ladder.append(workers_max)
    return ladder


def predict(feed_ips: float, consume_by_threads: dict[int, float], workers: int, cores: int, on_cpu: bool) -> tuple[float, float, int | None]:
    """(predicted img/s, consume img/s used, model threads) for one candidate (pure).

    On a GPU: min(feed, consume). On the CPU with workers: the model takes the
    cores the workers leave; where workers and model together ask for more
    cores than there are, the feed keeps only its share. With no workers the
    training process loads and trains in turn: the times add up.
    """
    if not on_cpu:
        consume = consume_by_threads[0]
        return min(feed_ips, consume), consume, None
    if workers == 0:
        consume = consume_by_threads[cores]
        return 1.0 / (1.0 / feed_ips + 1.0 / consume), consume, cores
    threads = model_threads(cores, workers)
    consume = consume_by_threads[threads]
    loader_cores = min(workers, cores)
    feed_share = feed_ips * min(1.0, (cores - threads) / loader_cores) if cores > threads else feed_ips / (threads + 1)
    return min(feed_share, consume), consume, threads


def wait_fraction(predicted_ips: float, consume_ips: float) -> float:
    """The share of time the model would wait for data (pure)."""
    return max(0.0, 1 - predicted_ips / consume_ips)


def verdict(pick: Prediction, measured: list[Prediction]) -> tuple[str, str]:
    """(bottleneck, sentence) for the pick (pure): what bounds it, and the measured alternatives that
    bear on it (``measured``: every prediction made; the pick's own setup at other shapes and batches).

    Only measured alternatives are cited: advice to try a batch or a shape that was
    never measured would be a guess.
    """
    wait = wait_fraction(pick.predicted_ips, pick.consume_ips)
    cited = "; ".join(_alternative(p, pick) for p in _alternatives(pick, measured))
    if wait > WAIT_TOLERANCE:
        cause = ("with no workers, loading and training take turns" if pick.candidate.workers == 0
                 else f"the loader delivers {pick.predicted_ips:.0f} of the {pick.consume_ips:.0f} img/s "
                      "the model could take")
        return "input", (f"input-bound: the model waits {100 * wait:.0f}% of the time ({cause})"
                         + (f"; {cited}" if cited else ""))
    headroom = pick.feed_ips / pick.consume_ips
    why_waits = "loading takes turns with training" if pick.candidate.workers == 0 else "the loader lags a little"
    still_waits = f" (the model still waits {100 * wait:.0f}% of the time: {why_waits})" if wait > 0.005 else ""
    if headroom <= 1.2:
        tail = "the feed is just keeping up: a faster model would make it input-bound"
    else:
        tail = cited or "no other shape or batch was measured with this setup"
    return "model", f"model-bound: {headroom:.1f}x feed headroom{still_waits}; {tail}"


def _alternatives(pick: Prediction, measured: list[Prediction]) -> list[Prediction]:
    """The pick's pipeline and workers at its nearest larger and smaller shapes (the same batch
    where measured), then at its shape with every other measured batch (pure)."""
    c = pick.candidate
    same_setup = {p.candidate: p for p in measured
                  if (p.candidate.pipeline, p.candidate.workers) == (c.pipeline, c.workers) and p.candidate != c}
    batches = [p for p in same_setup.values() if p.candidate.size == c.size]
    by_size: dict[Shape, Prediction] = {}
    for p in sorted(same_setup.values(), key=lambda p: (p.candidate.batch != c.batch, p.candidate.batch)):
        if p.candidate.size != c.size:
            by_size.setdefault(p.candidate.size, p)
    larger = [s for s in by_size if area(s) > area(c.size)]
    smaller = [s for s in by_size if area(s) < area(c.size)]
    if pick.bottleneck == "input":  # the largest smaller shape that keeps up, else the smallest measured
        keeping_up = [s for s in smaller if by_size[s].bottleneck == "model"]
        nearest = [max(keeping_up, key=_by_area)] if keeping_up else [min(smaller, key=_by_area)] if smaller else []
    else:
        nearest = ([min(larger, key=_by_area)] if larger else []) + ([max(smaller, key=_by_area)] if smaller else [])
    return [by_size[s] for s in nearest] + sorted(batches, key=lambda p: p.candidate.batch)


def _alternative(p: Prediction, pick: Prediction) -> str:
    """'at 192x192 the feed also keeps up: predicted 310 img/s' or 'batch 128 measured: ...'."""
    c, fed = p.candidate, p.bottleneck == "model"
    if fed:
        state = "also keeps up" if pick.bottleneck == "model" else "keeps up"
    else:
        state = f"falls behind (the model waits {100 * wait_fraction(p.predicted_ips, p.consume_ips):.0f}%)"
    if c.size == pick.candidate.size:
        return f"batch {c.batch} measured: the feed {state}, predicted {p.predicted_ips:.0f} img/s"
    batch = f", batch {c.batch}" if c.batch != pick.candidate.batch else ""
    return f"at {c.size[0]}x{c.size[1]}{batch} the feed {state}: predicted {p.predicted_ips:.0f} img/s"


# ---------------------------------------------------------------- measurements, cached and budgeted


class Measurer:
    """Runs feed and consume measurements once each, inside the time budget."""

    def __init__(self, config: TuneConfig, samples, progress) -> None:
        self.config = config
        self.samples = samples
        self.progress = progress
        self.started = time.perf_counter()
        self.feed: dict[tuple[str, int, Shape, int], float] = {}
        self.consume: dict[tuple[Shape, int, int], float] = {}
        self.largest: dict[Shape, int] = {}
        self.log: list[dict] = []
        self.skipped: dict[str, BadFile] = {}  # by path: every feeder of the run left out the same files

    def remaining_s(self) -> float:
        return self.config.budget_s - (time.perf_counter() - self.started)

    def _check_budget(self) -> None:
        if self.remaining_s() <= 0:
            raise BudgetExceeded(f"the {self.config.budget_s:g} s budget is spent")

    def feed_rate(self, pipeline: str, workers: int, size: Shape, batch: int) -> float:
        key = (pipeline, workers, size, batch)
        if key not in self.feed:
            self._check_budget()
            self.feed[key], skipped = self._measure_feed(pipeline, workers, size, batch)
            self.note_skipped(skipped)
            self.log.append({"side": "feed", "pipeline": pipeline, "workers": workers, "size": list(size),
                             "batch": batch, "images_per_sec": self.feed[key]})
            self.progress.update(1)
        return self.feed[key]

    def note_skipped(self, skipped) -> None:
        for record in skipped:
            self.skipped.setdefault(record.path, record)

    def _measure_feed(self, pipeline: str, workers: int, size: Shape, batch: int) -> tuple[float, tuple]:
        config = FeedConfig(pipeline=pipeline, batch_size=batch, workers=workers, spec=train_spec(size),
                            seed=self.config.seed, decode_device=self._decode_device(pipeline),
                            on_bad=self.config.on_bad)
        return self._run(feed_point, self.samples, config, self.config.feed_batches)

    def _decode_device(self, pipeline: str) -> str:
        """DALI decodes on the training GPU ("mixed") when there is one; the others on the CPU."""
        return self.config.device if pipeline == "dali" and not self.config.on_cpu else "cpu"

    def _run(self, func, *args):
        if not self.config.isolate:
            return func(*args)
        from bench.isolate import in_fresh_process

        return in_fresh_process(func, *args)

    def consume_rate(self, size: Shape, batch: int, threads: int) -> float:
        """Model img/s; ``threads`` 0 means 'leave torch's setting' (the GPU case)."""
        key = (size, batch, threads)
        if key not in self.consume:
            self._check_budget()
            from bench.consume import ConsumeConfig

            config = ConsumeConfig(model=self.config.model, device=self.config.device, batch_size=batch,
                                   size=size, warmup=1, steps=self.config.consume_steps,
                                   threads=threads or None)
            self.consume[key] = self._run(consume_point, config)
            self.log.append({"side": "consume", "size": list(size), "batch": batch, "threads": threads,
                             "images_per_sec": self.consume[key]})
            self.progress.update(1)
        return self.consume[key]

    def fitting_batches(self, size: Shape) -> tuple[int, ...]:
        """The candidate batches that fit on the GPU at ``size`` (all of them on the CPU)."""
        if self.config.on_cpu:
            return self.config.batches
        if size not in self.largest:
            self._check_budget()
            from bench.consume import ConsumeConfig, largest_batch

            probe = ConsumeConfig(model=self.config.model, device=self.config.device, size=size, warmup=0, steps=1)
            reserve = DALI_GPU_RESERVE if "dali" in self.config.pipelines else 0
            self.largest[size], log = largest_batch(probe, start=16, limit=max(self.config.batches),
                                                    reserve_bytes=reserve)
            self.log.append({"side": "largest_batch", "size": list(size), "batch": self.largest[size], "probes": log})
        fitting = tuple(b for b in self.config.batches if b <= self.largest[size])
        return fitting or (self.largest[size],)

    def prediction(self, candidate: Candidate) -> Prediction:
        cores = self.config.cores
        feed = self.feed_rate(candidate.pipeline, candidate.workers, candidate.size, candidate.batch)
        if self.config.on_cpu:
            threads = cores if candidate.workers == 0 else model_threads(cores, candidate.workers)
            consume = {threads: self.consume_rate(candidate.size, candidate.batch, threads)}
        else:
            consume = {0: self.consume_rate(candidate.size, candidate.batch, 0)}
        predicted, consume_ips, threads = predict(feed, consume, candidate.workers, cores, self.config.on_cpu)
        return Prediction(candidate, feed, consume_ips, predicted, threads)


def feed_point(samples, config: FeedConfig, batches: int) -> tuple[float, tuple[BadFile, ...]]:
    """(img/s of one feeder configuration over its timed windows, the files it left out); module
    level: it may run in a fresh process. The total, not the windows' median: the ray pipeline's
    windows of a few batches alternate between bursts and waits (bench.measure.FeedMeasurement)."""
    from bench.measure import measure_feeder
    from feeding.factory import create_feeder

    with create_feeder(samples, config) as feeder:
        ips = measure_feeder(feeder, batches, repeats=2, warmup=1).overall_images_per_sec
        return ips, tuple(feeder.skipped)


def consume_point(config) -> float:
    """Median img/s of one model-side configuration (module level, as feed_point)."""
    from bench.consume import measure_consumption

    return measure_consumption(config).images_per_sec.median


# ---------------------------------------------------------------- the search


def climb_workers(measurer: Measurer, pipeline: str, size: Shape, batch: int, leader_ips: float) -> tuple[int, float]:
    """The worker count with the best feed for ``pipeline``: climb the ladder while it pays."""
    best_w, best_ips = -1, 0.0
    for w in worker_ladder(measurer.config.workers_max, measurer.config.on_cpu, pipeline):
        ips = measurer.feed_rate(pipeline, w, size, batch)
        if best_w >= 0 and ips < best_ips * CLIMB_GAIN and w > 1:
            break
        if ips > best_ips:
            best_w, best_ips = w, ips
        if w >= 1 and leader_ips and best_ips < PRUNE_RATIO * leader_ips and w >= 2:
            break  # far behind the leader: stop spending budget on it
    return best_w, best_ips


@dataclass
class SearchLog:
    """What the search learnt besides its predictions, kept when the budget stops it half-way."""

    climbs: dict[str, tuple[int, float]] = field(default_factory=dict)  # pipeline: (workers, feed img/s)
    unavailable: dict[str, str] = field(default_factory=dict)  # pipeline: why it could not be measured


def workers_phrase(pipeline: str, workers: int) -> str:
    """'2 workers'; DALI's are threads."""
    unit = "thread" if pipeline == "dali" else "worker"
    return f"{workers} {unit}{'' if workers == 1 else 's'}"


def pruned_pipelines(climbs: dict[str, tuple[int, float]]) -> dict[str, str]:
    """The climbed pipelines whose best feed is below PRUNE_RATIO of the leader's, each with why (pure)."""
    if not climbs:
        return {}
    leader = max(climbs, key=lambda p: (climbs[p][1], p))
    leader_workers, leader_ips = climbs[leader]
    return {p: f"best feed {ips:.0f} img/s with {workers_phrase(p, w)}, below {100 * PRUNE_RATIO:.0f}% of the "
               f"leader's {leader_ips:.0f} ({leader}, {workers_phrase(leader, leader_workers)})"
            for p, (w, ips) in climbs.items() if ips < PRUNE_RATIO * leader_ips}


def search(measurer: Measurer, log: SearchLog) -> list[Prediction]:
    """The tuner's search; returns every prediction it made, best first, and fills ``log``."""
    cfg = measurer.config
    sizes = sorted(cfg.sizes, key=_by_area, reverse=True)  # largest first: see the stop below
    ref_batch = max(measurer.fitting_batches(sizes[0]))
    leader = 0.0
    for pipeline in cfg.pipelines:
        try:
            log.climbs[pipeline] = climb_workers(measurer, pipeline, sizes[0], ref_batch, leader)
        except MissingDependencyError as error:  # the others can still be tuned; the report says why not this one
            log.unavailable[pipeline] = str(error)
            continue
        leader = max(leader, log.climbs[pipeline][1])
    if not log.climbs:
        raise MissingDependencyError("no pipeline could be measured: " + "; ".join(
            f"{p}: {why}" for p, why in log.unavailable.items()))
    pruned = pruned_pipelines(log.climbs)
    survivors = [p for p in log.climbs if p not in pruned]
    predictions: list[Prediction] = []
    for size in sizes:
        for pipeline in survivors:
            w = log.climbs[pipeline][0]
            fewer = [0, 1] if cfg.on_cpu and pipeline != "dali" else [1] if cfg.on_cpu else []
            for workers in sorted({w, *fewer}):  # fewer workers leave the model more cores
                for batch in measurer.fitting_batches(size):
                    predictions.append(measurer.prediction(Candidate(pipeline, workers, batch, size)))
        if rank(predictions)[0].bottleneck == "model":
            break  # the feed keeps up at this shape: no smaller one can be picked (see pick_shape)
    return rank(predictions)


def exhaustive(measurer: Measurer) -> list[Prediction]:
    cfg = measurer.config
    predictions = [
        measurer.prediction(Candidate(p, w, b, s))
        for p in cfg.pipelines
        for w in range(0 if cfg.on_cpu and p != "dali" else 1, cfg.workers_max + 1)
        for s in cfg.sizes
        for b in measurer.fitting_batches(s)
    ]
    return rank(predictions)


def area(size: Shape) -> int:
    """Pixels per image at ``size``."""
    return size[0] * size[1]


def _by_area(size: Shape) -> tuple:
    """Order shapes by area, and two of the same area (256x192, 192x256) always the same way."""
    return area(size), size


def _order_key(p: Prediction) -> tuple:
    """A total order, best first: the rate, then the tie-breaks, then names, so that equal rates
    come out the same whatever the input order."""
    c = p.candidate
    return (-p.predicted_ips, -p.feed_ips, c.workers, c.pipeline, -c.batch, tuple(-s for s in c.size))


def _pick_by_rate(predictions: list[Prediction]) -> Prediction:
    """The best by predicted img/s; rates within TIE_TOLERANCE of the best are a tie, which goes
    to the faster feed (also within the tolerance: more headroom), then to fewer workers (fewer cores)."""
    top = max(p.predicted_ips for p in predictions)
    tied = [p for p in predictions if p.predicted_ips >= top * (1 - TIE_TOLERANCE)]
    fastest_feed = max(p.feed_ips for p in tied)
    tied = [p for p in tied if p.feed_ips >= fastest_feed * (1 - TIE_TOLERANCE)]
    return min(tied, key=lambda p: (p.candidate.workers, _order_key(p)))


def rank_by_rate(predictions: list[Prediction]) -> list[Prediction]:
    """Best first by predicted img/s, ties broken as in ``_pick_by_rate`` (pure)."""
    remaining = sorted(predictions, key=_order_key)  # fastest first: the contenders are a prefix
    ranked = []
    while remaining:
        floor = remaining[0].predicted_ips * (1 - TIE_TOLERANCE)
        contenders = list(itertools.takewhile(lambda p: p.predicted_ips >= floor, remaining))
        chosen = _pick_by_rate(contenders)
        ranked.append(chosen)
        remaining.remove(chosen)
    return ranked


def pick_shape(predictions: list[Prediction]) -> Shape:
    """The largest shape at which the best candidate keeps the model fed (is model-bound); where
    no shape is, the shape of the best predicted rate (pure; ``predictions`` not empty).

    A smaller shape always trains faster, so speed alone would always pick the
    smallest; the shapes a user lists are the ones they accept, and the largest
    one the feed keeps up with costs the model nothing.
    """
    best_at = {size: _pick_by_rate([p for p in predictions if p.candidate.size == size])
               for size in {p.candidate.size for p in predictions}}
    fed = [size for size, best in best_at.items() if best.bottleneck == "model"]
    if fed:
        return max(fed, key=_by_area)
    return _pick_by_rate(list(best_at.values())).candidate.size


def rank(predictions: list[Prediction]) -> list[Prediction]:
    """Best first (pure, the same whatever the input order): the candidates at ``pick_shape``
    by predicted img/s (ties within 1% to the faster feed, then fewer workers), then the other
    shapes' candidates in the same order."""
    if not predictions:
        return []
    shape = pick_shape(predictions)
    return (rank_by_rate([p for p in predictions if p.candidate.size == shape])
            + rank_by_rate([p for p in predictions if p.candidate.size != shape]))


def dropped_pipelines(pipelines: tuple[str, ...], ranked: list[Prediction], log: SearchLog) -> list[dict]:
    """Why each pipeline other than the pick's lost (pure): [{pipeline, reason}], in ``pipelines`` order."""
    pick = ranked[0]
    shape = pick.candidate.size
    pruned = pruned_pipelines(log.climbs)
    out = []
    for name in pipelines:
        if name == pick.candidate.pipeline:
            continue
        best = next((p for p in ranked if p.candidate.pipeline == name and p.candidate.size == shape), None)
        if name in log.unavailable:
            reason = f"not measured: {log.unavailable[name]}"
        elif name in pruned:
            reason = f"pruned during the climb: {pruned[name]}"
        elif best is not None:
            tie = (f" (within {100 * TIE_TOLERANCE:.0f}%: a tie, which goes to the faster feed, then fewer workers)"
                   if best.predicted_ips >= pick.predicted_ips * (1 - TIE_TOLERANCE) else "")
            reason = (f"ranked lower: best predicted {best.predicted_ips:.1f} img/s with "
                      f"{workers_phrase(name, best.candidate.workers)} at {shape[0]}x{shape[1]} against the "
                      f"pick's {pick.predicted_ips:.1f}{tie}")
        else:
            reason = f"not measured at {shape[0]}x{shape[1]} before the search stopped"
        out.append({"pipeline": name, "reason": reason})
    return out


def grid_check(tuner_pick: Prediction, tuner_s: float, grid: list[Prediction], grid_s: float) -> dict:
    """The tuner's pick against the exhaustive grid's best (pure).

    The grid's best is chosen by a criterion of its own, not by ``rank``'s tie-breaks:
    the highest predicted img/s among the grid's candidates at the shape ``pick_shape``
    takes from the grid. The tuner's pick is rated with the grid's measurement of the same
    setup where the grid has it (like with like), else with the tuner's own.
    """
    shape = pick_shape(grid)
    at_shape = [p for p in grid if p.candidate.size == shape]
    best = min(at_shape, key=_order_key)  # the highest rate; exact ties by the fixed order
    in_grid = next((p for p in grid if p.candidate == tuner_pick.candidate), None)
    tuner_ips = (in_grid or tuner_pick).predicted_ips
    return {
        "headline": "this record's recommendation is the grid ranked by the tuner's rule (the largest shape the "
                    f"feed keeps up with, then predicted img/s; ties within {100 * TIE_TOLERANCE:.0f}% to the "
                    "faster feed, then fewer workers)",
        "tuner_pick": {**_pick_fields(tuner_pick), "predicted_ips": tuner_ips,
                       "rated_by": "the grid's measurement" if in_grid else "the tuner's own measurement"},
        "grid_best": {**_pick_fields(best), "predicted_ips": best.predicted_ips,
                      "criterion": f"the highest predicted img/s among the grid's {len(at_shape)} candidates at "
                                   f"{shape[0]}x{shape[1]}, the shape the tuner's rule takes from the grid"},
        "agree": tuner_pick.candidate == best.candidate,
        "ratio": tuner_ips / best.predicted_ips,
        "tuner_search_s": tuner_s,
        "grid_search_s": grid_s,
        "time_ratio": tuner_s / grid_s,
    }


def _pick_fields(p: Prediction) -> dict:
    c = p.candidate
    return {"pipeline": c.pipeline, "workers": c.workers, "batch": c.batch, "size": list(c.size)}


def _prediction_from_row(row: dict) -> Prediction:
    """The Prediction a record's row (``_prediction_row``) was made from."""
    candidate = Candidate(row["pipeline"], row["workers"], row["batch"], tuple(row["size"]))
    return Prediction(candidate, row["feed_ips"], row["consume_ips"], row["predicted_ips"], row["model_threads"])


# ---------------------------------------------------------------- the run: search, check, report


def tune(config: TuneConfig) -> dict:
    """Search, check the pick end to end, and return the recommendation record."""
    from tqdm import tqdm

    from feeding.sample import resolve_data
    from feeding.sources import dataset_fingerprint
    from bench.provenance import provenance
    from feeding.io import display_path
    from feeding.sources import discover

    samples = discover(resolve_data(config.data), on_bad=config.on_bad)
    from training.models import build_model

    build_model(config.model, len(samples.classes))  # an unknown model fails now, not after the feed sweep
    started = time.perf_counter()
    with tqdm(desc="tune: measurements", unit="point", file=sys.stderr) as progress:
        measurer = Measurer(config, samples, progress)
        log = SearchLog()
        try:
            predictions = exhaustive(measurer) if config.exhaustive else search(measurer, log)
            interrupted = None
        except (BudgetExceeded, KeyboardInterrupt) as stop:
            interrupted = str(stop) or "interrupted"
            predictions = rank(_predict_measured(measurer))
    search_s = time.perf_counter() - started
    if not predictions:
        raise FeedError(f"nothing was measured before the budget ran out ({interrupted}); raise --budget-s")
    best = predictions[0]
    profile_started = time.perf_counter()
    profile = shape_profile(measurer, best.candidate)
    profile_s = time.perf_counter() - profile_started
    check, e2e_skipped = check_end_to_end(config, samples, best)
    measurer.note_skipped(e2e_skipped)
    ray_scale = ray_nodes(measurer.feed, best, config.ranks)
    bottleneck, sentence = verdict(best, [*predictions, *profile])
    stage = loader_stage(config, samples, best)
    info = provenance()
    return {
        "pipeline": best.candidate.pipeline,
        "workers": best.candidate.workers,
        "batch": best.candidate.batch,
        "size": list(best.candidate.size),
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
                   "ranked": [_prediction_row(p) for p in predictions],
                   "dropped": dropped_pipelines(config.pipelines, predictions, log)},
        "shape_profile": {"seconds": profile_s, "rows": [_prediction_row(p) for p in profile]},
        "on_bad": config.on_bad,
        "skipped": [{"path": display_path(path), "reason": measurer.skipped[path].reason}
                    for path in sorted(measurer.skipped)],
        "end_to_end": check,
        "ray_scale": ray_scale,
        **info,
    }


def ray_nodes(feeds: dict[tuple[str, int, Shape, int], float], best: Prediction, ranks: int) -> dict | None:
    """How many Ray CPU nodes would feed the pick's consumption (all ``ranks``), from the ray
    pipeline's feeds at the pick's shape (its batch where measured); None where ray was not measured.

    The cluster is the one RAY_ADDRESS names, where ray was measured; its typical CPU node
    sets what one node feeds (bench.ray_scale).
    """
    from bench.ray_scale import cluster_nodes, cpu_node_size, scale_report
    from feeding.backends.ray_cluster import address_from_env

    pick = best.candidate
    at_shape = {(batch, max(1, workers)): ips for (pipeline, workers, size, batch), ips in feeds.items()
                if pipeline == "ray" and size == pick.size}
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


def shape_profile(measurer: Measurer, pick: Candidate) -> list[Prediction]:
    """The pick's pipeline, workers and batch at every candidate shape, for the report.

    Measured after the search (and timed apart from it): the search stops at
    the largest shape the feed keeps up with, the report shows all of them.
    """
    rows = []
    for size in measurer.config.sizes:
        try:
            batches = measurer.fitting_batches(size)
            batch = pick.batch if pick.batch in batches else max(batches)
            rows.append(measurer.prediction(Candidate(pick.pipeline, pick.workers, batch, size)))
        except BudgetExceeded:
            break
    return rows


def _predict_measured(measurer: Measurer) -> list[Prediction]:
    """Predictions for the feed points whose model side was measured too (after an early stop).

    Only cached measurements are used, so no budget check can fire here.
    """
    out = []
    for pipeline, workers, size, batch in list(measurer.feed):
        if (size, batch, _threads_for(measurer.config, workers)) in measurer.consume:
            out.append(measurer.prediction(Candidate(pipeline, workers, batch, size)))
    return out


def _threads_for(config: TuneConfig, workers: int) -> int:
    cores = config.cores
    if not config.on_cpu:
        return 0
    return cores if workers == 0 else model_threads(cores, workers)


def _prediction_row(p: Prediction) -> dict:
    return {**asdict(p.candidate), "feed_ips": p.feed_ips, "consume_ips": p.consume_ips,
            "predicted_ips": p.predicted_ips, "model_threads": p.model_threads, "bottleneck": p.bottleneck}


def check_end_to_end(config: TuneConfig, samples, best: Prediction) -> tuple[dict, list[BadFile]]:
    """The real feeder feeding the real training step: measured img/s and the data-wait fraction,
    and the files that feeder left out.

    Waiting is the time from asking for a batch to having it on the device;
    training is the step itself (synchronized on CUDA). The first batches of
    the epoch (worker start-up) and one warm-up step are not counted.
    """
    import torch

    from bench.consume import ConsumeConfig, prepare_model
    from feeding.device import synchronizer
    from training.models import build_model
    from feeding.device import DeviceFeeder
    from feeding.factory import create_feeder

    c = best.candidate
    consume = ConsumeConfig(model=config.model, device=config.device, batch_size=c.batch, size=c.size,
                            num_classes=len(samples.classes), threads=best.model_threads).resolved()
    decode_device = config.device if c.pipeline == "dali" and not config.on_cpu else "cpu"
    feed = FeedConfig(pipeline=c.pipeline, batch_size=c.batch, workers=c.workers, spec=train_spec(c.size),
                      seed=config.seed, drop_last=True, decode_device=decode_device, on_bad=config.on_bad)
    previous_threads = torch.get_num_threads()
    if best.model_threads:
        torch.set_num_threads(best.model_threads)
    try:
        model, optimizer = prepare_model(build_model(config.model, len(samples.classes)), consume)
        sync = synchronizer(torch.device(config.device))
        with create_feeder(samples, feed) as feeder:
            device_feeder = DeviceFeeder(feeder, config.device, channels_last=consume.channels_last)
            waits, steps, images = _timed_training(device_feeder, model, optimizer, consume.amp, sync,
                                                   config.e2e_batches, config.e2e_min_s)
            skipped, notes = list(feeder.skipped), list(feeder.notes)
    finally:
        torch.set_num_threads(previous_threads)
    total = sum(waits) + sum(steps)
    return {"measured_ips": images / total, "data_wait_fraction": sum(waits) / total,
            "batches": len(steps), "wait_s": sum(waits), "train_s": sum(steps),
            "model_threads": best.model_threads, "decode_device": decode_device, "notes": notes}, skipped


def _timed_training(device_feeder, model, optimizer, amp: bool, sync, batches: int, min_s: float = 0.0):
    """(wait seconds, step seconds, images) for at least ``batches`` steps and ``min_s`` seconds,
    after one warm-up step.

    Epochs roll over as in training, and the stall at each new epoch counts:
    a training run pays it too.
    """
    from bench.consume import train_step

    waits, steps, images, warm = [], [], 0, False

    def enough() -> bool:
        return len(steps) >= batches and sum(waits) + sum(steps) >= min_s

    while not enough():
        delivered = False
        clock = time.perf_counter()
        for batch_images, labels in device_feeder:
            sync()
            got = time.perf_counter()
            train_step(model, optimizer, batch_images, labels, amp)
            sync()
            done = time.perf_counter()
            delivered = True
            if warm:
                waits.append(got - clock)
                steps.append(done - got)
                images += len(labels)
            warm = True
            if enough():
                break
            clock = time.perf_counter()
        if not delivered:
            raise FeedError("the feeder delivered no batch for the end-to-end check (too few images?)")
    return waits, steps, images


def loader_stage(config: TuneConfig, samples, best: Prediction) -> str:
    """The stage that bounds the picked loader (host pipelines have stage timers)."""
    if best.candidate.pipeline == "dali":
        return "dali (not broken down)"
    from bench.stages import measure_stages
    from feeding.factory import create_feeder

    c = best.candidate
    feed = FeedConfig(pipeline=c.pipeline, batch_size=c.batch, workers=max(1, c.workers), spec=train_spec(c.size),
                      on_bad=config.on_bad)
    with create_feeder(samples, feed) as feeder:
        _, breakdown = measure_stages(feeder, config.feed_batches, 1, 1, device=config.device, differential=False)
    return breakdown.bottleneck


# ---------------------------------------------------------------- report


def run_tag(record: dict) -> str:
    """The run's conditions, for file names."""
    data = Path(record["dataset"]["root"]).name or "data"
    mode = record["search"]["mode"]
    return f"tune-{data}-{record['model']}-{record['device'].replace(':', '')}-{record['machine']['cores']}c-{mode}"


def plot(record: dict, path: Path) -> Path:
    """Left: img/s against workers per pipeline. Right: feed and consume per shape, the pick marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feeding.io import write_atomic

    feed = [m for m in record["search"]["measurements"] if m["side"] == "feed"]
    ref_size, ref_batch = feed[0]["size"], feed[0]["batch"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for pipeline in dict.fromkeys(m["pipeline"] for m in feed):
        points = sorted((m["workers"], m["images_per_sec"]) for m in feed
                        if m["pipeline"] == pipeline and m["size"] == ref_size and m["batch"] == ref_batch)
        left.plot(*zip(*points), marker="o", label=pipeline)
    left.set(xlabel="workers (DALI: threads)", ylabel="feed img/s",
             title=f"feed at {ref_size[0]}x{ref_size[1]}, batch {ref_batch}")
    left.legend()
    rows = sorted(record["shape_profile"]["rows"], key=lambda r: r["size"][0])
    sides = [r["size"][0] for r in rows]
    right.plot(sides, [r["feed_ips"] for r in rows], marker="o", label=f"feed ({record['pipeline']}, {record['workers']} workers)")
    right.plot(sides, [r["consume_ips"] for r in rows], marker="s", label=f"consume ({record['model']}, {record['device']})")
    right.scatter([record["size"][0]], [record["predicted_ips"]], s=160, marker="*", color="red", zorder=5,
                  label=f"pick: {record['predicted_ips']:.0f} predicted, {record['measured_ips']:.0f} measured")
    right.set(xlabel="image side (px)", ylabel="img/s", title="feed against consumption", yscale="log")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    write_atomic(path, tmp.read_bytes())
    tmp.unlink()
    return path


def markdown(record: dict, command: str, next_step: str | None = None) -> str:
    """The report; ``next_step``: the training command that uses the recommendation written."""
    m = record["machine"]
    lines = [
        f"# feedbench tune: {record['model']} on {record['device']}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, GPU {m['gpu']}; torch {m['torch']}, "
        f"{m['dali']}, PIL {m['pil']['distribution']} {m['pil']['version']}  ",
        f"Commit: {record['commit']['id']} (dirty: {record['commit']['dirty']}), {record['created']}",
        "",
        "## Recommendation",
        "",
        f"- pipeline **{record['pipeline']}**, workers **{record['workers']}**, batch **{record['batch']}**, "
        f"size **{record['size'][0]}x{record['size'][1]}**"
        + (f", model threads {record['model_threads']}" if record["model_threads"] else ""),
        f"- feed {record['feed_ips']:.1f} img/s, consume {record['consume_ips']:.1f} img/s, "
        f"predicted {record['predicted_ips']:.1f} img/s"
        + (f" per rank; {record['ranks']} ranks sharing {record['machine']['cores']} cores: "
           f"{record['job_predicted_ips']:.1f} img/s for the job" if record.get("ranks", 1) > 1 else ""),
        f"- end to end (real feeder + real training step, {record['end_to_end']['batches']} batches): "
        f"**{record['measured_ips']:.1f} img/s**, data wait {100 * record['data_wait_fraction']:.1f}% "
        f"({100 * record['prediction_error']:+.1f}% against the prediction)",
        f"- bottleneck: {record['bottleneck']}; the loader's slowest stage: {record['loader_bottleneck_stage']}",
        f"- {record['verdict']}",
        *([f"- next: `{next_step}`"] if next_step else []),
        *[f"- note: {note}" for note in record["end_to_end"].get("notes", ())],
        "",
        "## Pipelines not picked",
        "",
        *([f"- {line}" for line in dropped_lines(record)] or ["- none: only the pick's pipeline was tried"]),
        *skipped_lines(record, heading=True),
        "",
        f"## Candidates ({record['search']['mode']} search, {record['search']['seconds']:.0f} s, "
        f"{len(record['search']['measurements'])} measurements"
        + (f"; stopped early: {record['search']['interrupted']}" if record["search"]["interrupted"] else "") + ")",
        "",
        "| pipeline | workers | batch | size | feed img/s | consume img/s | predicted img/s | bound by |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in record["search"]["ranked"][:25]:
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['batch']} | {r['size'][0]}x{r['size'][1]} | "
                     f"{r['feed_ips']:.1f} | {r['consume_ips']:.1f} | {r['predicted_ips']:.1f} | {r['bottleneck']} |")
    lines += ["", f"## The pick at every shape (measured after the search, {record['shape_profile']['seconds']:.0f} s)", "",
              "| size | feed img/s | consume img/s | predicted img/s | bound by |", "|---|---:|---:|---:|---|"]
    for r in record["shape_profile"]["rows"]:
        lines.append(f"| {r['size'][0]}x{r['size'][1]} | {r['feed_ips']:.1f} | {r['consume_ips']:.1f} | "
                     f"{r['predicted_ips']:.1f} | {r['bottleneck']} |")
    lines += _ray_scale_lines(record.get("ray_scale"))
    if record.get("exhaustive_check"):
        lines += ["", "## Against the exhaustive grid", "",
                  *[f"- {line}" for line in grid_check_lines(record["exhaustive_check"])]]
    lines += ["", f"![feed and consumption]({run_tag(record)}.png)", ""]
    return "\n".join(lines)


def dropped_lines(record: dict) -> list[str]:
    """'dali: pruned during the climb: ...', one per pipeline that lost (Markdown and stdout)."""
    return [f"{d['pipeline']}: {d['reason']}" for d in record["search"]["dropped"]]


def skipped_lines(record: dict, heading: bool = False, limit: int = 20) -> list[str]:
    """The files the feeders left out (``--on-bad skip``), the first ``limit`` of them; [] when none."""
    skipped = record["skipped"]
    if not skipped:
        return []
    title = f"{len(skipped)} file(s) or listing row(s) left out (--on-bad {record['on_bad']})"
    shown = [f"{s['path']}: {s['reason']}" for s in skipped[:limit]]
    more = [f"... and {len(skipped) - limit} more (all in the JSON's skipped)"] if len(skipped) > limit else []
    if heading:
        return ["", "## Files left out", "", f"{title}:", "", *[f"- {line}" for line in shown + more]]
    return [f"skipped: {title}", *[f"skipped: {line}" for line in shown + more]]


def grid_check_lines(check: dict) -> list[str]:
    """The exhaustive check in words, the two picks named as in the JSON (Markdown and stdout)."""
    def describe(pick: dict) -> str:
        size = pick["size"]
        return (f"{pick['pipeline']}, {workers_phrase(pick['pipeline'], pick['workers'])}, batch {pick['batch']}, "
                f"{size[0]}x{size[1]}: predicted {pick['predicted_ips']:.1f} img/s")

    tuner, best = check["tuner_pick"], check["grid_best"]
    outcome = ("they agree" if check["agree"] else
               f"they differ: the tuner's pick reaches {100 * check['ratio']:.1f}% of the grid's best")
    return [f"tuner_pick (the climb search, {check['tuner_search_s']:.0f} s): {describe(tuner)} "
            f"(rated by {tuner['rated_by']})",
            f"grid_best ({check['grid_search_s']:.0f} s; {best['criterion']}): {describe(best)}",
            f"{outcome}, in {100 * check['time_ratio']:.0f}% of the grid's time",
            check["headline"]]


def _ray_scale_lines(report: dict | None) -> list[str]:
    if report is None:
        return []
    if "error" in report:
        return ["", "## Ray CPU nodes", "", f"Not computed: {report['error']}"]
    return ["", "## Ray CPU nodes", "",
            f"The ray pipeline fed {report['feed_img_s']:.1f} img/s with {report['actors_measured']} actor(s) at "
            f"{report['size'][0]}x{report['size'][1]}, batch {report['batch']}; a typical CPU node of this cluster "
            f"({report['node_cpus']:g} CPUs, one actor each) would feed {report['feed_per_node_img_s']:.1f} img/s, "
            "assuming the feed grows linearly with actors and nodes.",
            f"**{report['nodes']} CPU node(s)** lift the feed above consumption: {report['sentence']}."]


def recommendation_path(record: dict, out: Path) -> Path | None:
    """Where the recommendation that `training.fit --pipeline best` reads is written; None for
    ``--exhaustive``, whose run checks the tuner rather than recommends."""
    return out / "recommendation.json" if record["search"]["mode"] == "climb" else None


def next_command(recommendation: Path) -> str:
    return f"python -m training.fit --pipeline best --recommendation {shlex.quote(str(recommendation))}"


def write_reports(record: dict, out: Path, command: str) -> list[Path]:
    from feeding.io import write_atomic, write_json

    tag = run_tag(record)
    recommendation = recommendation_path(record, out)
    next_step = next_command(recommendation) if recommendation else None
    written = [write_json(out / f"{tag}.json", record),
               write_atomic(out / f"{tag}.md", markdown(record, command, next_step).encode()),
               plot(record, out / f"{tag}.png")]
    if recommendation:
        written.append(write_json(recommendation, record))
    return written


# ---------------------------------------------------------------- command line


def make_parser() -> argparse.ArgumentParser:
    from feeding.options import FlattenList, HelpFormatter, listed, plain_text, positive_int, size

    d = TuneConfig
    parser = argparse.ArgumentParser(prog="feedbench tune", description=plain_text(__doc__.split("\n\n")[0]),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data", help="data set: an ImageFolder, a CSV manifest or the competition layout "
                        "(none given: the generated sample)")
    parser.add_argument("--model", default=d.model, help="timm model name or module:factory")
    parser.add_argument("--device", default=d.device, help="cpu or cuda[:N]")
    parser.add_argument("--sizes", nargs="+", type=listed(size), action=FlattenList,
                        default=",".join(f"{h}" if h == w else f"{h}x{w}" for h, w in d.sizes),
                        help="candidate shapes (pixels; N or HxW), by commas or spaces: the largest the feed "
                        "keeps up with is picked")
    parser.add_argument("--budget-s", type=float, default=d.budget_s, help="time for the search (seconds)")
    parser.add_argument("--pipelines", nargs="+", type=listed(str), action=FlattenList,
                        help="pipelines to tune, by commas or spaces (none given: pil, albumentations, dali, "
                        "and ray when RAY_ADDRESS answers)")
    parser.add_argument("--workers-max", type=positive_int, default=2 * (os.cpu_count() or 1),
                        help="most loader workers (DALI: threads) tried per rank; capped at twice its cores")
    parser.add_argument("--batches", nargs="+", type=listed(positive_int), action=FlattenList,
                        help="candidate batch sizes, by commas or spaces (none given: 32 on the CPU; "
                        "64,128,256 on a GPU, where those that do not fit are dropped)")
    parser.add_argument("--e2e-batches", type=positive_int, default=d.e2e_batches,
                        help="batches in the end-to-end check (at least)")
    parser.add_argument("--e2e-min-s", type=float, default=d.e2e_min_s,
                        help="seconds of end-to-end check (at least)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="measure the full grid (slow), and compare the tuner's pick with the grid's best")
    parser.add_argument("--isolate", action="store_true",
                        help="run each measurement in a fresh process (a few seconds more each)")
    parser.add_argument("--ranks", type=positive_int, default=d.ranks,
                        help="training processes on this host (torchrun --nproc-per-node): each rank gets "
                        "its share of the cores for workers and model threads")
    parser.add_argument("--on-bad", choices=("skip", "fail"), default=d.on_bad,
                        help="a listing row or image that cannot be read: skip it (and list it in the report) "
                        "or stop with an error naming it")
    parser.add_argument("--out", default=d.out, help="folder for the reports and recommendation.json")
    return parser


def config_from_args(args: argparse.Namespace) -> TuneConfig:
    if args.pipelines is None:
        from bench.ray_scale import ray_candidate

        pipelines = ray_candidate(PIPELINES)
    else:
        pipelines = tuple(dict.fromkeys(args.pipelines))  # a pipeline named twice is tuned once
    return TuneConfig(
        data=args.data, model=args.model, device=args.device, sizes=tuple(dict.fromkeys(args.sizes)),
        budget_s=args.budget_s, pipelines=pipelines, workers_max=args.workers_max,
        batches=tuple(dict.fromkeys(args.batches)) if args.batches else None,
        e2e_batches=args.e2e_batches, e2e_min_s=args.e2e_min_s, exhaustive=args.exhaustive, isolate=args.isolate,
        out=args.out, ranks=args.ranks, on_bad=args.on_bad,
    )


def tune_main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        record = tune(config)
        if config.exhaustive:
            record["exhaustive_check"] = compare_with_tuner(config, record)
    except (FeedError, MissingDependencyError, ValueError) as error:
        print(f"feedbench tune: error: {error}", file=sys.stderr)
        return 2
    from bench.provenance import display_command

    command = display_command("feedbench tune", argv)
    out = Path(config.out)
    for path in write_reports(record, out, command):
        print(f"wrote {path}")
    for line in summary_lines(record, recommendation_path(record, out)):
        print(line)
    return 0


def summary_lines(record: dict, recommendation: Path | None) -> list[str]:
    """What stdout says after the run: the pick, the verdict, what lost and why, what was left out,
    and the command that trains with the pick."""
    lines = [f"recommendation: {record['pipeline']}, {workers_phrase(record['pipeline'], record['workers'])}, "
             f"batch {record['batch']}, "
             f"{record['size'][0]}x{record['size'][1]}: predicted {record['predicted_ips']:.1f} img/s, "
             f"measured {record['measured_ips']:.1f} img/s ({100 * record['prediction_error']:+.1f}%), "
             f"data wait {100 * record['data_wait_fraction']:.0f}%",
             record["verdict"]]
    lines += [f"not picked: {line}" for line in dropped_lines(record)]
    lines += [f"note: {note}" for note in record["end_to_end"].get("notes", ())]
    lines += skipped_lines(record, limit=5)
    if record.get("exhaustive_check"):
        lines += [f"exhaustive check: {line}" for line in grid_check_lines(record["exhaustive_check"])]
    ray_scale = record.get("ray_scale") or {}
    if "nodes" in ray_scale:
        lines.append(f"Ray: {ray_scale['sentence']}")
    if recommendation:
        lines.append(f"next: {next_command(recommendation)}")
    else:
        lines.append("next: --exhaustive writes no recommendation.json; run without it to get one for "
                     "`python -m training.fit --pipeline best`")
    return lines


def compare_with_tuner(config: TuneConfig, exhaustive_record: dict) -> dict:
    """Run the tuner's search too (same machine, same run), and rate its pick against the grid's best
    (``grid_check``)."""
    tuned = tune(replace_config(config, exhaustive=False, budget_s=math.inf))
    tuner_pick = _prediction_from_row(tuned)  # the record's headline fields are a row's
    grid = [_prediction_from_row(row) for row in exhaustive_record["search"]["ranked"]]
    # search against search: both runs also do the same end-to-end check
    return grid_check(tuner_pick, tuned["search"]["seconds"], grid, exhaustive_record["search"]["seconds"])


def replace_config(config: TuneConfig, **changes) -> TuneConfig:
    # budget inf skips validation's minimum; TuneConfig stays frozen.
    from dataclasses import replace

    return replace(config, **changes)
