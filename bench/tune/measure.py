"""What the tuner measures: feed and consume points (each once, inside the time budget), the pick at
every shape, the pick end to end (the real feeder feeding the real training step) and its slowest stage.

``feed_point`` and ``consume_point`` are module-level so that ``--isolate`` can run
them in a fresh interpreter (bench.isolate).
"""
from __future__ import annotations

import time

from bench.tune.config import TuneConfig
from bench.tune.forecast import Prediction, Setup, consume_threads, forecast
from feeding.backends import capabilities
from feeding.checks import Shape
from feeding.errors import BadFile, FeedError
from feeding.feeder import FeedConfig
from feeding.spec import train_spec


class BudgetExceeded(Exception):
    """The tuning budget is spent; the search stops with what it has."""


class Measurer:
    """Runs feed and consume measurements once each, inside the time budget; keeps a log of them."""

    def __init__(self, config: TuneConfig, samples, progress) -> None:
        self.config = config
        self.samples = samples
        self.progress = progress
        self.started = time.perf_counter()
        self.feed: dict[tuple[str, int, Shape, int], float] = {}  # (pipeline, workers, size, batch): img/s
        self.consume: dict[tuple[Shape, int, int], float] = {}  # (size, batch, threads): img/s
        self.largest: dict[Shape, int] = {}
        self.log: list[dict] = []
        self.skipped: dict[str, BadFile] = {}  # by path: every feeder of the run left out the same files

    def remaining_s(self) -> float:
        return self.config.budget_s - (time.perf_counter() - self.started)

    def check_budget(self) -> None:
        """BudgetExceeded once the budget is spent (called before every new measurement)."""
        if self.remaining_s() <= 0:
            raise BudgetExceeded(f"the {self.config.budget_s:g} s budget is spent")

    def feed_rate(self, pipeline: str, workers: int, size: Shape, batch: int) -> float:
        """What the loader delivers alone, img/s."""
        key = (pipeline, workers, size, batch)
        if key not in self.feed:
            self.check_budget()
            self.feed[key], skipped = self._run(feed_point, self.samples, self._feed_config(*key),
                                                self.config.feed_batches)
            self.note_skipped(skipped)
            self.log.append({"side": "feed", "pipeline": pipeline, "workers": workers, "size": list(size),
                             "batch": batch, "images_per_sec": self.feed[key]})
            self.progress.update(1)
        return self.feed[key]

    def note_skipped(self, skipped) -> None:
        for record in skipped:
            self.skipped.setdefault(record.path, record)

    def _feed_config(self, pipeline: str, workers: int, size: Shape, batch: int) -> FeedConfig:
        return FeedConfig(pipeline=pipeline, batch_size=batch, workers=workers, spec=train_spec(size),
                          seed=self.config.seed, decode_device=capabilities(pipeline).decode_device(self.config.device),
                          on_bad=self.config.on_bad)

    def _run(self, func, *args):
        if not self.config.isolate:
            return func(*args)
        from bench.isolate import in_fresh_process

        return in_fresh_process(func, *args)

    def consume_rate(self, size: Shape, batch: int, threads: int) -> float:
        """Model img/s; ``threads`` 0 means 'leave torch's setting' (the GPU case)."""
        key = (size, batch, threads)
        if key not in self.consume:
            self.check_budget()
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
            self.check_budget()
            from bench.consume import ConsumeConfig, largest_batch

            probe = ConsumeConfig(model=self.config.model, device=self.config.device, size=size, warmup=0, steps=1)
            self.largest[size], log = largest_batch(probe, start=16, limit=max(self.config.batches),
                                                    reserve_bytes=self.config.gpu_reserve_bytes)
            self.log.append({"side": "largest_batch", "size": list(size), "batch": self.largest[size], "probes": log})
        fitting = tuple(b for b in self.config.batches if b <= self.largest[size])
        return fitting or (self.largest[size],)

    def threads_for(self, workers: int) -> int:
        """The model's torch threads beside ``workers`` loader workers (0 on a GPU: torch's own)."""
        return consume_threads(workers, self.config.cores, self.config.on_cpu)

    def prediction(self, setup: Setup) -> Prediction:
        """The setup's feed and consumption, measured where not yet, and the forecast from them."""
        feed = self.feed_rate(setup.pipeline, setup.workers, setup.size, setup.batch)
        threads = self.threads_for(setup.workers)
        consume = {threads: self.consume_rate(setup.size, setup.batch, threads)}
        predicted, consume_ips, model_threads = forecast(feed, consume, setup.workers, self.config.cores,
                                                         self.config.on_cpu)
        return Prediction(setup, feed, consume_ips, predicted, model_threads)

    def measured_predictions(self) -> list[Prediction]:
        """Predictions for the feed points whose model side was measured too (after an early stop).

        Only cached measurements are used, so no budget check can fire here.
        """
        return [self.prediction(Setup(pipeline, workers, batch, size))
                for pipeline, workers, size, batch in list(self.feed)
                if (size, batch, self.threads_for(workers)) in self.consume]


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


def shape_profile(measurer: Measurer, pick: Setup) -> list[Prediction]:
    """The pick's pipeline, workers and batch at every candidate shape, for the report.

    Measured after the search (and timed apart from it): the search stops at
    the largest shape the feed keeps up with, the report shows all of them.
    """
    rows = []
    for size in measurer.config.sizes:
        try:
            batches = measurer.fitting_batches(size)
            batch = pick.batch if pick.batch in batches else max(batches)
            rows.append(measurer.prediction(Setup(pick.pipeline, pick.workers, batch, size)))
        except BudgetExceeded:
            break
    return rows


def check_end_to_end(config: TuneConfig, samples, best: Prediction) -> tuple[dict, list[BadFile]]:
    """The real feeder feeding the real training step: measured img/s and the data-wait fraction,
    and the files that feeder left out.

    Waiting is the time from asking for a batch to having it on the device;
    training is the step itself (synchronized on CUDA). The first batches of
    the epoch (worker start-up) and one warm-up step are not counted.
    """
    import torch

    from bench.consume import ConsumeConfig, prepare_model
    from feeding.device import DeviceFeeder, synchronizer
    from feeding.factory import create_feeder
    from training.models import build_model

    c = best.setup
    consume = ConsumeConfig(model=config.model, device=config.device, batch_size=c.batch, size=c.size,
                            num_classes=len(samples.classes), threads=best.model_threads).resolved()
    decode_device = capabilities(c.pipeline).decode_device(config.device)
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
            waits, steps, images = timed_training(device_feeder, model, optimizer, consume.amp, sync,
                                                  config.e2e_batches, config.e2e_min_s)
            skipped, notes = list(feeder.skipped), list(feeder.notes)
    finally:
        torch.set_num_threads(previous_threads)
    total = sum(waits) + sum(steps)
    return {"measured_ips": images / total, "data_wait_fraction": sum(waits) / total,
            "batches": len(steps), "wait_s": sum(waits), "train_s": sum(steps),
            "model_threads": best.model_threads, "decode_device": decode_device, "notes": notes}, skipped


def timed_training(device_feeder, model, optimizer, amp: bool, sync, batches: int,
                   min_s: float = 0.0) -> tuple[list[float], list[float], int]:
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
    """The stage that bounds the picked loader, where its workers have stage timers (bench.stages)."""
    c = best.setup
    if not capabilities(c.pipeline).stage_timers:
        return f"{c.pipeline} (not broken down)"
    from bench.stages import measure_stages
    from feeding.factory import create_feeder

    feed = FeedConfig(pipeline=c.pipeline, batch_size=c.batch, workers=max(1, c.workers), spec=train_spec(c.size),
                      on_bad=config.on_bad)
    with create_feeder(samples, feed) as feeder:
        _, breakdown = measure_stages(feeder, config.feed_batches, 1, 1, device=config.device, differential=False)
    return breakdown.bottleneck
