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
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.consume import model_threads
from feeding.errors import FeedError, MissingDependencyError
from feeding.feeder import PIPELINES, FeedConfig
from feeding.spec import Shape, parse_size, train_spec

WAIT_TOLERANCE = 0.05  # a model that waits less than 5% of the time is not held back by its input
CLIMB_GAIN = 1.05  # keep adding workers while the feed improves by at least 5%
PRUNE_RATIO = 0.6  # drop a pipeline whose best feed is below 60% of the leader's
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


def verdict(feed_ips: float, consume_ips: float, predicted_ips: float, on_cpu: bool) -> tuple[str, str]:
    """(bottleneck, sentence) with what would change the verdict."""
    wait = wait_fraction(predicted_ips, consume_ips)
    if wait > WAIT_TOLERANCE:
        advice = ("more workers, a smaller shape, the DALI pipeline (GPU decode), or more cores"
                  if not on_cpu else "more cores for the workers, a smaller shape, or a cheaper pipeline")
        return "input", f"input-bound: the model waits {100 * wait:.0f}% of the time; would change with {advice}"
    headroom = feed_ips / consume_ips
    if wait > 0.005:
        advice_wait = f" (the model still waits {100 * wait:.0f}% of the time: loading takes turns with training)"
    else:
        advice_wait = ""
    advice = ("a larger batch or a bigger model would use the spare feed"
              if headroom > 1.2 else "the feed is just keeping up: a faster model would make it input-bound")
    return "model", f"model-bound: {headroom:.1f}x feed headroom{advice_wait}; {advice}"


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

    def remaining_s(self) -> float:
        return self.config.budget_s - (time.perf_counter() - self.started)

    def _check_budget(self) -> None:
        if self.remaining_s() <= 0:
            raise BudgetExceeded(f"the {self.config.budget_s:g} s budget is spent")

    def feed_rate(self, pipeline: str, workers: int, size: Shape, batch: int) -> float:
        key = (pipeline, workers, size, batch)
        if key not in self.feed:
            self._check_budget()
            self.feed[key] = self._measure_feed(pipeline, workers, size, batch)
            self.log.append({"side": "feed", "pipeline": pipeline, "workers": workers, "size": list(size),
                             "batch": batch, "images_per_sec": self.feed[key]})
            self.progress.update(1)
        return self.feed[key]

    def _measure_feed(self, pipeline: str, workers: int, size: Shape, batch: int) -> float:
        config = FeedConfig(pipeline=pipeline, batch_size=batch, workers=workers, spec=train_spec(size),
                            seed=self.config.seed, decode_device=self._decode_device(pipeline))
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


def feed_point(samples, config: FeedConfig, batches: int) -> float:
    """Img/s of one feeder configuration over its timed windows (module level: it may run in a
    fresh process). The total, not the windows' median: the ray pipeline's windows of a few
    batches alternate between bursts and waits (bench.measure.FeedMeasurement)."""
    from bench.measure import measure_feeder
    from feeding.factory import create_feeder

    with create_feeder(samples, config) as feeder:
        return measure_feeder(feeder, batches, repeats=2, warmup=1).overall_images_per_sec


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


def search(measurer: Measurer) -> list[Prediction]:
    """The tuner's search; returns every prediction it made, best first."""
    cfg = measurer.config
    ref_size = cfg.sizes[0]
    ref_batch = max(measurer.fitting_batches(ref_size))
    best_workers: dict[str, tuple[int, float]] = {}
    leader = 0.0
    for pipeline in cfg.pipelines:
        best_workers[pipeline] = climb_workers(measurer, pipeline, ref_size, ref_batch, leader)
        leader = max(leader, best_workers[pipeline][1])
    survivors = [p for p, (_, ips) in best_workers.items() if ips >= PRUNE_RATIO * leader]
    predictions: list[Prediction] = []
    for size in cfg.sizes:  # largest first
        for pipeline in survivors:
            w = best_workers[pipeline][0]
            fewer = [0, 1] if cfg.on_cpu and pipeline != "dali" else [1] if cfg.on_cpu else []
            for workers in sorted({w, *fewer}):  # fewer workers leave the model more cores
                for batch in measurer.fitting_batches(size):
                    predictions.append(measurer.prediction(Candidate(pipeline, workers, batch, size)))
        if rank(predictions)[0].bottleneck == "model":
            break  # the feed keeps up at this shape: a smaller one cannot rank higher (see rank)
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


def rank(predictions: list[Prediction]) -> list[Prediction]:
    """Best first: the largest shape at which the model is the bottleneck, by predicted img/s.

    A smaller shape always trains faster, so speed alone would always pick the
    smallest; the shapes a user lists are the ones they accept, and the largest
    one the feed keeps up with costs no throughput to the loader.
    """
    def key(p: Prediction):
        model_bound = p.bottleneck == "model"
        area = p.candidate.size[0] * p.candidate.size[1]
        return (model_bound, area if model_bound else 0, p.predicted_ips)

    return sorted(predictions, key=key, reverse=True)


# ---------------------------------------------------------------- the run: search, check, report


def dataset_fingerprint(samples) -> dict:
    """Enough to tell whether a recommendation was made on this data set."""
    base = Path(samples.root)
    base = base.parent if base.is_file() else base
    relative = sorted(os.path.relpath(p, base) for p in samples.paths.tolist())  # the same on any machine
    digest = hashlib.sha256("\n".join(relative).encode()).hexdigest()[:16]
    from bench.provenance import display_path

    return {"root": display_path(samples.root), "images": len(samples), "layout": samples.layout,
            "paths_sha256": digest}


def tune(config: TuneConfig) -> dict:
    """Search, check the pick end to end, and return the recommendation record."""
    from tqdm import tqdm

    from bench.cli import resolve_data
    from bench.provenance import provenance
    from feeding.sources import discover

    samples = discover(resolve_data(config.data))
    from bench.consume import build_model

    build_model(config.model, len(samples.classes))  # an unknown model fails now, not after the feed sweep
    started = time.perf_counter()
    with tqdm(desc="tune: measurements", unit="point", file=sys.stderr) as progress:
        measurer = Measurer(config, samples, progress)
        try:
            predictions = exhaustive(measurer) if config.exhaustive else search(measurer)
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
    check = check_end_to_end(config, samples, best)
    ray_scale = ray_nodes(measurer.feed, best, config.ranks)
    bottleneck, sentence = verdict(best.feed_ips, best.consume_ips, best.predicted_ips, config.on_cpu)
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
                   "ranked": [_prediction_row(p) for p in predictions]},
        "shape_profile": {"seconds": profile_s, "rows": profile},
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


def shape_profile(measurer: Measurer, pick: Candidate) -> list[dict]:
    """The pick's pipeline, workers and batch at every candidate shape, for the report.

    Measured after the search (and timed apart from it): the search stops at
    the largest shape the feed keeps up with, the report shows all of them.
    """
    rows = []
    for size in measurer.config.sizes:
        try:
            batches = measurer.fitting_batches(size)
            batch = pick.batch if pick.batch in batches else max(batches)
            rows.append(_prediction_row(measurer.prediction(Candidate(pick.pipeline, pick.workers, batch, size))))
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


def check_end_to_end(config: TuneConfig, samples, best: Prediction) -> dict:
    """The real feeder feeding the real training step: measured img/s and the data-wait fraction.

    Waiting is the time from asking for a batch to having it on the device;
    training is the step itself (synchronized on CUDA). The first batches of
    the epoch (worker start-up) and one warm-up step are not counted.
    """
    import torch

    from bench.consume import ConsumeConfig, build_model, prepare_model, synchronizer
    from feeding.device import DeviceFeeder
    from feeding.factory import create_feeder

    c = best.candidate
    consume = ConsumeConfig(model=config.model, device=config.device, batch_size=c.batch, size=c.size,
                            num_classes=len(samples.classes), threads=best.model_threads).resolved()
    decode_device = config.device if c.pipeline == "dali" and not config.on_cpu else "cpu"
    feed = FeedConfig(pipeline=c.pipeline, batch_size=c.batch, workers=c.workers, spec=train_spec(c.size),
                      seed=config.seed, drop_last=True, decode_device=decode_device)
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
    finally:
        torch.set_num_threads(previous_threads)
    total = sum(waits) + sum(steps)
    return {"measured_ips": images / total, "data_wait_fraction": sum(waits) / total,
            "batches": len(steps), "wait_s": sum(waits), "train_s": sum(steps),
            "model_threads": best.model_threads, "decode_device": decode_device}


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
    feed = FeedConfig(pipeline=c.pipeline, batch_size=c.batch, workers=max(1, c.workers), spec=train_spec(c.size))
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

    from bench.io import write_atomic

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


def markdown(record: dict, command: str) -> str:
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
        e = record["exhaustive_check"]
        lines += ["", "## Against the exhaustive grid", "",
                  f"The tuner's pick predicts {e['tuned_ips']:.1f} img/s; the grid's best {e['best_ips']:.1f} img/s "
                  f"({100 * e['ratio']:.1f}%), in {e['tuned_s']:.0f} s against {e['exhaustive_s']:.0f} s "
                  f"({100 * e['time_ratio']:.0f}% of the time)."]
    lines += ["", f"![feed and consumption]({run_tag(record)}.png)", ""]
    return "\n".join(lines)


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


def write_reports(record: dict, out: Path, command: str) -> list[Path]:
    from bench.io import write_atomic, write_json

    tag = run_tag(record)
    written = [write_json(out / f"{tag}.json", record),
               write_atomic(out / f"{tag}.md", markdown(record, command).encode()),
               plot(record, out / f"{tag}.png")]
    if record["search"]["mode"] == "climb":  # what `training.fit --pipeline best` reads
        written.append(write_json(out / "recommendation.json", record))
    return written


# ---------------------------------------------------------------- command line


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedbench tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="data set (default: the embedded sample)")
    parser.add_argument("--model", default="resnet18", help="timm model name or module:factory")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--sizes", default="224,192,160,128", help="candidate shapes, e.g. 224,192 or 256x192")
    parser.add_argument("--budget-s", type=float, default=300.0, help="time for the search (s)")
    parser.add_argument("--pipelines", default=None,
                        help="default: pil,albumentations,dali, and ray when RAY_ADDRESS answers")
    parser.add_argument("--workers-max", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--batches", help="candidate batch sizes (default 32 on the CPU, 64,128,256 on a GPU; "
                        "on a GPU those that do not fit are dropped)")
    parser.add_argument("--e2e-batches", type=int, default=8, help="batches in the end-to-end check (at least)")
    parser.add_argument("--e2e-min-s", type=float, default=3.0, help="seconds of end-to-end check (at least)")
    parser.add_argument("--exhaustive", action="store_true", help="measure the full grid (slow), and compare")
    parser.add_argument("--isolate", action="store_true",
                        help="run each measurement in a fresh process (a few seconds more each)")
    parser.add_argument("--ranks", type=int, default=1,
                        help="training processes on this host (torchrun --nproc-per-node): each rank gets "
                        "its share of the cores for workers and model threads")
    parser.add_argument("--out", default="results")
    return parser


def _pipelines_arg(text: str | None) -> tuple[str, ...]:
    if text is None:
        from bench.ray_scale import ray_candidate

        return ray_candidate(PIPELINES)
    return tuple(p for p in text.split(",") if p)


def config_from_args(args: argparse.Namespace) -> TuneConfig:
    return TuneConfig(
        data=args.data, model=args.model, device=args.device,
        sizes=tuple(parse_size(s) for s in args.sizes.split(",") if s),
        budget_s=args.budget_s, pipelines=_pipelines_arg(args.pipelines),
        workers_max=args.workers_max,
        batches=tuple(int(b) for b in args.batches.split(",") if b) if args.batches else None,
        e2e_batches=args.e2e_batches, e2e_min_s=args.e2e_min_s, exhaustive=args.exhaustive, isolate=args.isolate,
        out=args.out, ranks=args.ranks,
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
    for path in write_reports(record, Path(config.out), command):
        print(f"wrote {path}")
    print(f"recommendation: {record['pipeline']}, {record['workers']} workers, batch {record['batch']}, "
          f"{record['size'][0]}x{record['size'][1]}: predicted {record['predicted_ips']:.1f} img/s, "
          f"measured {record['measured_ips']:.1f} img/s ({100 * record['prediction_error']:+.1f}%), "
          f"data wait {100 * record['data_wait_fraction']:.0f}%")
    print(record["verdict"])
    ray_scale = record.get("ray_scale") or {}
    if "nodes" in ray_scale:
        print(f"Ray: {ray_scale['sentence']}")
    return 0


def compare_with_tuner(config: TuneConfig, exhaustive_record: dict) -> dict:
    """Run the tuner's search too, and rate its pick against the grid's best (same machine, same run)."""
    tuned = tune(replace_config(config, exhaustive=False, budget_s=math.inf))
    tuned_s = tuned["search"]["seconds"]  # search against search: both runs also do the same end-to-end check
    best = exhaustive_record["search"]["ranked"][0]
    pick = {k: tuned[k] for k in ("pipeline", "workers", "batch", "size")}
    same = [r for r in exhaustive_record["search"]["ranked"]
            if {k: r[k] if k != "size" else list(r[k]) for k in pick} == pick]
    tuned_ips = same[0]["predicted_ips"] if same else tuned["predicted_ips"]
    return {"tuned_pick": pick, "tuned_ips": tuned_ips, "best_ips": best["predicted_ips"],
            "ratio": tuned_ips / best["predicted_ips"], "tuned_s": tuned_s,
            "exhaustive_s": exhaustive_record["search"]["seconds"],
            "time_ratio": tuned_s / exhaustive_record["search"]["seconds"]}


def replace_config(config: TuneConfig, **changes) -> TuneConfig:
    # budget inf skips validation's minimum; TuneConfig stays frozen.
    from dataclasses import replace

    return replace(config, **changes)
