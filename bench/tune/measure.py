"""What the tuner measures: feed and consume points (each once, inside the time budget), the pick at
every shape, the pick end to end (the real feeder feeding the real training step) and its slowest stage.

``feed_point`` and ``consume_point`` are module-level so that ``--isolate`` can run
them in a fresh interpreter (bench.isolate).
"""
from __future__ import annotations

import time
from collections.abc import Iterator

from bench.interrupt import CtrlC
from bench.tune.config import TuneConfig
from bench.tune.forecast import ConsumePoint, FeedPoint, Prediction, Setup, consume_threads, forecast
from feeding.backends import capabilities
from feeding.checks import Shape
from feeding.errors import BadFile
from feeding.feeder import FeedConfig


class BudgetExceeded(Exception):
    """The tuning budget is spent; the search stops with what it has."""


class Measurer:
    """Runs feed and consume measurements once each, inside the time budget; keeps a log of them.

    ``ctrl_c``: the run's ``CtrlC``, checked before every new measurement (None: a Ctrl-C is only
    Python's own KeyboardInterrupt)."""

    def __init__(self, config: TuneConfig, samples, progress, ctrl_c: CtrlC | None = None) -> None:
        self.config = config
        self.samples = samples
        self.progress = progress
        self.ctrl_c = ctrl_c or CtrlC()
        self.started = time.perf_counter()
        self.feed: dict[tuple[str, int, Shape, int], FeedPoint] = {}  # by (pipeline, workers, size, batch)
        self.consume: dict[tuple[Shape, int, int], ConsumePoint] = {}  # by (size, batch, threads)
        self.largest: dict[Shape, int] = {}
        self.log: list[dict] = []
        self.skipped: dict[str, BadFile] = {}  # by path: every feeder of the run left out the same files

    def remaining_s(self) -> float:
        return self.config.budget_s - (time.perf_counter() - self.started)

    def check_budget(self) -> None:
        """BudgetExceeded once the budget is spent (called before every new measurement); first, the
        KeyboardInterrupt of a Ctrl-C that Python swallowed during the last one (``CtrlC``)."""
        self.ctrl_c.check()
        if self.remaining_s() <= 0:
            raise BudgetExceeded(f"the {self.config.budget_s:g} s budget is spent")

    def feed_rate(self, pipeline: str, workers: int, size: Shape, batch: int) -> FeedPoint:
        """What the loader delivers to the device, with a consumer that does nothing (img/s), and
        the CPU it takes."""
        key = (pipeline, workers, size, batch)
        if key not in self.feed:
            self.check_budget()
            self.feed[key], skipped = self._run(feed_point, self.samples, self._feed_config(*key),
                                                self.config.feed_batches, self.config.device,
                                                self.threads_for(workers), self.config.step.channels_last)
            self.note_skipped(skipped)
            self.log.append({"side": "feed", "pipeline": pipeline, "workers": workers, "size": list(size),
                             "batch": batch, "images_per_sec": self.feed[key].ips,
                             "host_ms_per_batch": 1000 * self.feed[key].host_s_per_batch,
                             "loader_cpu_ms_per_image": 1000 * self.feed[key].loader_cpu_s_per_image})
            self.progress.update(1)
        return self.feed[key]

    def note_skipped(self, skipped) -> None:
        for record in skipped:
            self.skipped.setdefault(record.path, record)

    def _feed_config(self, pipeline: str, workers: int, size: Shape, batch: int) -> FeedConfig:
        return FeedConfig(pipeline=pipeline, batch_size=batch, workers=workers, spec=self.config.spec_at(size),
                          seed=self.config.seed, decode_device=capabilities(pipeline).decode_device(self.config.device),
                          on_bad=self.config.on_bad)

    def _run(self, func, *args):
        if not self.config.isolate:
            return func(*args)
        from bench.isolate import in_fresh_process

        return in_fresh_process(func, *args)

    def consume_rate(self, size: Shape, batch: int, threads: int) -> ConsumePoint:
        """The model side: img/s of the training step (the one training.fit runs), and the host's
        share of it; ``threads`` 0 means 'leave torch's setting' (a GPU, the simulated device)."""
        key = (size, batch, threads)
        if key not in self.consume:
            self.check_budget()
            config = self.consume_config(size, batch, threads)
            self.consume[key] = self._run(consume_point, config)
            self.log.append({"side": "consume", "size": list(size), "batch": batch, "threads": threads,
                             "images_per_sec": self.consume[key].ips,
                             "host_ms_per_step": 1000 * self.consume[key].host_s_per_step})
            self.progress.update(1)
        return self.consume[key]

    def consume_config(self, size: Shape, batch: int, threads: int):
        return self.consume_config_for(self.config, len(self.samples.classes), size, batch, threads)

    @staticmethod
    def consume_config_for(config: TuneConfig, classes: int, size: Shape, batch: int, threads: int):
        """The model side the tuner measures: the run's model, device and step (``config.step``)."""
        from bench.consume import ConsumeConfig

        return ConsumeConfig(model=config.model, device=config.device, batch_size=batch, size=size,
                             num_classes=classes, warmup=1, steps=config.consume_steps, threads=threads or None,
                             step=config.step)

    def fitting_batches(self, size: Shape) -> tuple[int, ...]:
        """The candidate batches that fit on the GPU at ``size`` (all of them on the CPU)."""
        if self.config.on_cpu or self.config.simulated:  # no device memory to run out of
            return self.config.batches
        if size not in self.largest:
            self.check_budget()
            from bench.capacity import largest_batch

            probe = self.consume_config(size, 16, 0)
            fit = largest_batch(probe, start=16, limit=max(self.config.batches),
                                reserve_bytes=self.config.gpu_reserve_bytes)
            self.largest[size] = fit.batch
            self.log.append({"side": "largest_batch", "size": list(size), "batch": fit.batch, "largest": fit.largest,
                             "margin_applied": fit.margin_applied, "sentence": fit.sentence, "probes": fit.probes})
        fitting = tuple(b for b in self.config.batches if b <= self.largest[size])
        return fitting or (self.largest[size],)

    def measured_workers(self, pipeline: str, size: Shape, batch: int) -> set[int]:
        """The worker counts whose feed of ``pipeline`` at ``size`` and ``batch`` is measured already."""
        return {w for (name, w, s, b) in self.feed if (name, s, b) == (pipeline, size, batch)}

    def threads_for(self, workers: int) -> int:
        """The model's torch threads beside ``workers`` loader workers (0 on a GPU: torch's own)."""
        return consume_threads(workers, self.config.cores, self.config.device)

    def prediction(self, setup: Setup) -> Prediction:
        """The setup's feed and consumption, measured where not yet, and the forecast from them."""
        feed = self.feed_rate(setup.pipeline, setup.workers, setup.size, setup.batch)
        threads = self.threads_for(setup.workers)
        consume = self.consume_rate(setup.size, setup.batch, threads)
        return forecast(feed, consume, setup, self.config.cores, self.config.on_cpu, threads)

    def measured_predictions(self) -> list[Prediction]:
        """Predictions for the feed points whose model side was measured too (after an early stop).

        Only cached measurements are used, so no budget check can fire here.
        """
        return [self.prediction(Setup(pipeline, workers, batch, size))
                for pipeline, workers, size, batch in list(self.feed)
                if (size, batch, self.threads_for(workers)) in self.consume]


def measurement_device(device: str):
    """What the device step targets for ``device``: the name, or a new simulated accelerator."""
    from feeding.sim import SimAccelerator, SimSpec, is_sim

    return SimAccelerator(SimSpec.parse(device)) if is_sim(device) else device


def feed_point(samples, config: FeedConfig, batches: int, device: str = "cpu", threads: int | None = None,
               channels_last: bool = False) -> tuple[FeedPoint, tuple[BadFile, ...]]:
    """(one loader setup's feed to ``device`` with a consumer that does nothing, the files it left out);
    module level: it may run in a fresh process. The rate is the total over the timed windows, not
    their median: the ray pipeline's windows alternate between bursts and waits."""
    from bench.measure import measure_feed_to_device
    from feeding.factory import create_feeder

    from training.step import StepConfig, step_settings

    target = measurement_device(device)
    try:  # with the training process's torch threads: its copies share the cores with the workers
        with step_settings(StepConfig(), torch_device(device), threads), create_feeder(samples, config) as feeder:
            measured = measure_feed_to_device(feeder, target, batches, repeats=2, warmup=1,
                                              channels_last=channels_last)
            skipped = tuple(feeder.skipped)
    finally:
        if not isinstance(target, str):
            target.close()
    per_batch = measured.main_thread_cpu_s / max(1, measured.batches)
    loader = max(0.0, measured.process_cpu_s - measured.main_thread_cpu_s) / max(1, measured.images)
    return FeedPoint(measured.overall_images_per_sec, per_batch, loader), skipped


def consume_point(config) -> ConsumePoint:
    """The model side of one configuration (module level, as feed_point)."""
    from bench.consume import measure_consumption

    measured = measure_consumption(config)
    return ConsumePoint(measured.images_per_sec.median, measured.host_ms_per_step / 1000, measured.cpu_s_per_image)


def shape_profile(measurer: Measurer, pick: Setup) -> Iterator[Prediction]:
    """The pick's pipeline, workers and batch at every candidate shape, for the report, one shape
    at a time (a Ctrl-C keeps those measured); it ends early where the budget is spent.

    Measured after the search (and timed apart from it): the search stops at
    the largest shape the feed keeps up with, the report shows all of them.
    """
    for size in measurer.config.sizes:
        try:
            batches = measurer.fitting_batches(size)
            batch = pick.batch if pick.batch in batches else max(batches)
            row = measurer.prediction(Setup(pick.pipeline, pick.workers, batch, size))
        except BudgetExceeded:
            return
        yield row


def check_end_to_end(config: TuneConfig, samples, best: Prediction) -> tuple[dict, list[BadFile]]:
    """The real loop (``training.engine.run_epoch``, the step ``training.fit`` runs) on the real
    feeder through the device step: measured img/s and the data-wait fraction, and the files that
    feeder left out.

    At least ``e2e_batches`` batches and ``e2e_min_s`` seconds are timed, after warm-up batches
    that outlast the read-ahead (batches the workers made while the first step warmed up would
    otherwise arrive at once). Epochs roll over as in training: their ends count, a run pays them too.
    """
    from bench.consume import training_step
    from feeding.device import DeviceFeeder
    from feeding.factory import create_feeder
    from training.step import step_settings

    c = best.setup
    threads = consume_threads(c.workers, config.cores, config.device)
    consume = Measurer.consume_config_for(config, len(samples.classes), c.size, c.batch, threads).resolved()
    decode_device = capabilities(c.pipeline).decode_device(config.device)
    feed = FeedConfig(pipeline=c.pipeline, batch_size=c.batch, workers=c.workers, spec=config.spec_at(c.size),
                      seed=config.seed, drop_last=True, decode_device=decode_device, on_bad=config.on_bad)
    step_device = torch_device(config.device)
    with step_settings(consume.step, step_device, threads):
        step = training_step(consume)
        target = step.accelerator if config.simulated else config.device
        try:
            with create_feeder(samples, feed) as feeder:
                delivered = DeviceFeeder(feeder, target, channels_last=consume.step.channels_last)
                timing = timed_training(step, delivered, config.e2e_batches, config.e2e_min_s)
                skipped, notes = list(feeder.skipped), list(feeder.notes)
        finally:
            if config.simulated:
                step.accelerator.close()
    return {**timing, "model_threads": threads, "decode_device": decode_device, "notes": notes,
            "step": consume.step.to_dict()}, skipped


def torch_device(device: str):
    """The torch device a step's tensors live on: the simulated accelerator's are host memory."""
    import torch

    from feeding.sim import is_sim

    return torch.device("cpu" if is_sim(device) else device)


def timed_training(step, delivered, batches: int, min_s: float) -> dict:
    """Epochs of ``run_epoch`` until ``batches`` batches and ``min_s`` seconds are timed after the
    warm-up (the first batch and the read-ahead); the measured img/s and data-wait fraction."""
    from training.engine import run_epoch

    warm = 1 + getattr(delivered, "pipeline_depth", 0)
    ends: list[tuple[int, float]] = []  # (images, when the batch was done)
    wait_s = seconds = 0.0
    epoch = 0
    while len(ends) < warm + batches or (len(ends) > warm and ends[-1][1] - ends[warm][1] < min_s):
        stats = run_epoch(step, delivered, epoch, on_batch_done=lambda n, t: ends.append((n, t)))
        wait_s, seconds, epoch = wait_s + stats.data_wait_s, seconds + stats.seconds, epoch + 1
    timed = ends[warm + 1:]  # each batch's interval from the end of the one before it
    elapsed = timed[-1][1] - ends[warm][1]
    images = sum(n for n, _ in timed)
    return {"measured_ips": images / elapsed, "data_wait_fraction": wait_s / seconds if seconds else 0.0,
            "batches": len(timed), "seconds": elapsed, "epochs": epoch}


def loader_stage(config: TuneConfig, samples, best: Prediction) -> str:
    """The stage that bounds the picked loader, where its workers have stage timers (bench.stages)."""
    c = best.setup
    if not capabilities(c.pipeline).stage_timers:
        return f"{c.pipeline} (not broken down)"
    from bench.stages import measure_stages
    from feeding.factory import create_feeder

    feed = FeedConfig(pipeline=c.pipeline, batch_size=c.batch, workers=max(1, c.workers),
                      spec=config.spec_at(c.size), on_bad=config.on_bad)
    with create_feeder(samples, feed) as feeder:
        _, breakdown = measure_stages(feeder, config.feed_batches, 1, 1, device=config.device, differential=False)
    return breakdown.bottleneck
