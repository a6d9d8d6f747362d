"""Measure what a feeder delivers: warm-up, timed repeats, summary.

The run's first batch waits for the workers to start: it is warm-up, timed
and reported on its own. Later epochs' first batches stay in the timed
windows: the refill at each epoch boundary is a cost training pays every
epoch. (Leaving them out would also inflate the rate: while the first batch
is awaited the other workers finish theirs, which then arrive at once.)

The warm-up is at least the feeder's ``pipeline_depth``: the batches its workers
make ahead (workers x prefetch). Those are ready before timing starts, and a
window served from them measures a queue, not a pipeline: 32 workers x 2 batches
on a 16-core host once "delivered" 36,000 img/s that way.

A timed window also holds at least ``pipeline_depth`` batches (a shorter request
is lengthened, and the measurement says so): a pipeline that hands over several
batches at once (Ray Data delivers a block of batches) alternates bursts and
waits, and a window shorter than its read-ahead can time a burst alone. Short
windows of the ray pipeline once reported 296,985 img/s.

``measure`` is the public entry point: it times a user's own feeder or loader
(a torch DataLoader) by these rules, as ``feedbench run`` does.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from bench.stats import Summary, summarize
from feeding import checks
from feeding.device import synchronizer


@dataclass(frozen=True)
class FeedMeasurement:
    """Steady-state images/sec over ``repeats`` windows of ``batches`` batches each."""

    images_per_sec: Summary
    first_batch_s: Summary  # start of an epoch to its first batch (the first one: worker start-up)
    images: int  # images in the timed windows
    batches: int
    epochs: int  # epochs touched, warm-up included
    windows: tuple[float, ...] = field(default=())  # images/sec of each window
    seconds: float = 0.0  # the timed windows' seconds, summed
    window_batches: int = 0  # batches per window: the request, or the feeder's read-ahead where longer
    main_thread_cpu_s: float = 0.0  # with cpu=True: the consuming thread's CPU seconds over the timed batches
    process_cpu_s: float = 0.0  # with cpu=True: the process tree's (workers included) over the same
    notes: tuple[str, ...] = ()  # how the measurement departed from the request (callers print them)

    @property
    def overall_images_per_sec(self) -> float:
        """Timed images over timed seconds: for a pipeline that delivers in bursts (Ray Data hands
        over a block of several batches at once), short windows alternate between a burst and a
        wait, and their median is either; the total is neither."""
        return self.images / self.seconds if self.seconds else self.images_per_sec.median


class LoaderShapeError(ValueError):
    """A loader that does not yield (images, labels) batches."""


class EpochIterable:
    """Gives a plain iterable (a DataLoader) the ``epoch``/``batch_size`` that measure_feeder reads.

    Each ``iter()`` is one pass over the wrapped loader, i.e. one epoch. Batches
    must be ``(images, labels)`` pairs; anything else raises LoaderShapeError.
    """

    def __init__(self, loader: Iterable, name: str = "loader") -> None:
        self.loader = loader
        self.name = name
        self.epoch = 0
        self.batch_size = getattr(loader, "batch_size", None)
        # A DataLoader's workers each make prefetch_factor batches ahead (prefetch_factor is None without workers).
        self.pipeline_depth = (getattr(loader, "num_workers", 0) or 0) * (getattr(loader, "prefetch_factor", 0) or 0)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple]:
        self.epoch += 1
        for batch in self.loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise LoaderShapeError(
                    f"{self.name} yielded a {type(batch).__name__}; expected (images, labels) batches")
            yield batch[0], batch[1]


def process_tree_cpu_s() -> float:
    """CPU seconds of this process (all its threads) and of its live child processes (worker
    processes: ``resource`` counts children only once they have ended). Linux /proc; elsewhere
    this process alone."""
    total = time.process_time()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return total
    tick = os.sysconf("SC_CLK_TCK")
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as fh:
                children = fh.read().split()
        except OSError:
            continue
        for pid in children:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended in between
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _timed_batches(feeder, sync: Callable[[], None], cpu: bool) -> Iterator[tuple[int, float, bool, float, float]]:
    """Endless (images, seconds, is_first_of_epoch, main-thread CPU s, process-tree CPU s) over
    successive epochs; the CPU figures are 0 unless ``cpu``."""
    def clocks() -> tuple[float, float, float]:
        now = time.perf_counter()
        return (now, time.thread_time(), process_tree_cpu_s()) if cpu else (now, 0.0, 0.0)

    while True:
        start = clocks()
        first = True
        delivered = 0
        for images, _ in feeder:
            sync()
            now = clocks()
            delivered += 1
            yield len(images), now[0] - start[0], first, now[1] - start[1], now[2] - start[2]
            first = False
            start = clocks()
        if delivered == 0:
            raise ValueError("the feeder delivered no batch in an epoch: too few images for the batch size?")


def measure_feeder(
    feeder, batches: int = 10, repeats: int = 3, warmup: int = 2, sync: Callable[[], None] = lambda: None,
    whole_epochs: bool = False, cpu: bool = False,
) -> FeedMeasurement:
    """Time ``repeats`` windows of ``batches`` steady-state batches after ``warmup`` batches.

    Both are raised to the feeder's ``pipeline_depth`` where shorter (see the module
    docstring); the result's ``window_batches`` and ``notes`` say so.

    ``sync`` waits for queued device work (``torch.cuda.synchronize``) so that
    GPU batches are timed when they are ready, not when they are queued.

    ``whole_epochs``: each window starts at an epoch's first batch and ends at
    an epoch's end, once it holds at least ``batches`` batches. Workers drain at
    each epoch's end, so on a short data set (the sample's epochs are 6 batches)
    a window's rate depends on how many epoch ends it happens to span: up to
    ±25% between windows of one feeder. Whole epochs make every window pay the
    same, and rows comparable.

    ``cpu``: also account the CPU time of the timed batches: the calling thread's (receiving and
    preparing each batch) and the process tree's (workers included), in ``main_thread_cpu_s``
    and ``process_cpu_s``.
    """
    if batches < 1 or repeats < 1 or warmup < 0:
        raise ValueError("need batches >= 1, repeats >= 1, warmup >= 0")
    depth = getattr(feeder, "pipeline_depth", 0)
    warmup = max(warmup, depth)
    requested, batches = batches, max(batches, depth)
    notes = () if batches == requested else (
        f"timed windows lengthened from {requested} to {batches} batches: the feeder makes {depth} batches "
        "ahead, and a shorter window can time a burst of them",)
    start_epoch = feeder.epoch
    stream = _timed_batches(feeder, sync, cpu)
    first_batches: list[float] = []
    windows: list[float] = []
    seen = 0
    count, elapsed = 0, 0.0
    images_total = 0
    timed_images = timed_batches = 0
    timed_seconds = main_cpu = process_cpu = 0.0
    started = not whole_epochs  # whole epochs: the first window waits for an epoch's first batch
    for n_images, seconds, first, main_s, process_s in stream:
        if first:
            first_batches.append(seconds)
        seen += 1
        if seen <= warmup + 1:  # the run's first batch (start-up) is always warm-up
            continue
        if whole_epochs and first and count >= batches:  # an epoch ends the window: this batch opens the next
            windows.append(images_total / elapsed)
            count, elapsed, images_total = 0, 0.0, 0
            if len(windows) == repeats:
                break
        started = started or first
        if not started:
            continue
        count += 1
        elapsed += seconds
        images_total += n_images
        timed_images += n_images
        timed_batches += 1
        timed_seconds += seconds
        main_cpu += main_s
        process_cpu += process_s
        if not whole_epochs and count == batches:
            windows.append(images_total / elapsed)
            count, elapsed, images_total = 0, 0.0, 0
            if len(windows) == repeats:
                break
    stream.close()
    return FeedMeasurement(
        images_per_sec=summarize(windows),
        first_batch_s=summarize(first_batches),
        images=timed_images,
        batches=timed_batches,
        epochs=feeder.epoch - start_epoch,
        windows=tuple(windows),
        seconds=timed_seconds,
        window_batches=batches,
        notes=notes,
        main_thread_cpu_s=main_cpu,
        process_cpu_s=process_cpu,
    )


def as_feeder(feeder_or_loader, name: str = "loader"):
    """What ``measure_feeder`` times: a feeder as it is (it has ``epoch`` and ``batch_size``), or a plain
    iterable of (images, labels) such as a torch DataLoader wrapped in ``EpochIterable``."""
    if hasattr(feeder_or_loader, "epoch") and hasattr(feeder_or_loader, "batch_size"):
        return feeder_or_loader
    if not isinstance(feeder_or_loader, Iterable):
        raise TypeError(f"cannot time a {type(feeder_or_loader).__name__}: expected a feedbench Feeder or an "
                        "iterable of (images, labels) batches such as a torch DataLoader")
    return EpochIterable(feeder_or_loader, name)


def device_sync(device: str | torch.device | None) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work: torch.cuda.synchronize for a CUDA device, else nothing."""
    if device is None:
        return lambda: None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    if device.type == "cuda":
        checks.available_device("device", str(device))
    return synchronizer(device)


def _delivery_device(feeder) -> str | None:
    """The device a feedbench feeder delivers to (DALI's GPU decode), None when it is not known."""
    config = getattr(feeder, "config", None)
    return getattr(config, "decode_device", None)


def measure(
    feeder_or_loader, batches: int = 10, repeats: int = 3, warmup: int = 2,
    device: str | torch.device | None = None,
) -> FeedMeasurement:
    """Time a feeder or loader of your own as ``feedbench run`` times its feeders.

    ``feeder_or_loader``: a feedbench Feeder, anything with ``epoch`` and
    ``batch_size`` that iterates one epoch per ``iter()``, or a plain iterable of
    (images, labels) such as a torch DataLoader. The same rules as feedbench: the
    first batch and ``warmup`` more (at least the read-ahead, ``pipeline_depth``,
    or a DataLoader's workers x prefetch_factor) are not timed, then ``repeats``
    windows of ``batches`` batches (lengthened to the read-ahead where shorter).

    ``device``: where the batches arrive; for a CUDA device each batch is timed
    when its queued work is done (``torch.cuda.synchronize``). None: a feedbench
    feeder's own ``decode_device``, else no sync. Returns img/s per window (the
    summary, and ``overall_images_per_sec``) and the first-batch seconds.
    """
    timed = as_feeder(feeder_or_loader)
    sync = device_sync(device if device is not None else _delivery_device(feeder_or_loader))
    return measure_feeder(timed, batches, repeats, warmup, sync=sync)


def measure_feed_to_device(feeder, device, batches: int = 10, repeats: int = 3, warmup: int = 2,
                           channels_last: bool = False) -> FeedMeasurement:
    """The feed as the trainer sees it: ``feeder``'s batches through the device step (pin, copy,
    normalize on the device: ``feeding.device.DeviceFeeder``) into a consumer that does nothing,
    in this process, with the CPU time of the timed batches accounted (``cpu=True``).

    ``device``: "cpu", a CUDA device, or a ``feeding.sim.SimAccelerator`` (the copy into its
    memory is the host's part). The windows are at least the read-ahead long and run on across
    epoch ends (the host feeders keep their workers streaming), so an epoch shorter than the
    read-ahead is not timed as one burst.
    """
    from feeding.device import DeviceFeeder

    delivered = DeviceFeeder(feeder, device, channels_last=channels_last)
    sync = device_sync(device) if isinstance(device, (str, torch.device)) else (lambda: None)
    return measure_feeder(delivered, batches, repeats, warmup, sync=sync, cpu=True)
