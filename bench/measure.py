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
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from bench.stats import Summary, summarize


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

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple]:
        self.epoch += 1
        for batch in self.loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise LoaderShapeError(
                    f"{self.name} yielded a {type(batch).__name__}; expected (images, labels) batches")
            yield batch[0], batch[1]


def _timed_batches(feeder, sync: Callable[[], None]) -> Iterator[tuple[int, float, bool]]:
    """Endless (images, seconds, is_first_of_epoch) over successive epochs."""
    while True:
        start = time.perf_counter()
        first = True
        delivered = 0
        for images, _ in feeder:
            sync()
            now = time.perf_counter()
            delivered += 1
            yield len(images), now - start, first
            first = False
            start = time.perf_counter()
        if delivered == 0:
            raise ValueError("the feeder delivered no batch in an epoch: too few images for the batch size?")


def measure_feeder(
    feeder, batches: int = 10, repeats: int = 3, warmup: int = 2, sync: Callable[[], None] = lambda: None,
    whole_epochs: bool = False,
) -> FeedMeasurement:
    """Time ``repeats`` windows of ``batches`` steady-state batches after ``warmup`` batches.

    ``sync`` waits for queued device work (``torch.cuda.synchronize``) so that
    GPU batches are timed when they are ready, not when they are queued.

    ``whole_epochs``: each window starts at an epoch's first batch and ends at
    an epoch's end, once it holds at least ``batches`` batches. Workers drain at
    each epoch's end, so on a short data set (the sample's epochs are 6 batches)
    a window's rate depends on how many epoch ends it happens to span: up to
    ±25% between windows of one feeder. Whole epochs make every window pay the
    same, and rows comparable.
    """
    if batches < 1 or repeats < 1 or warmup < 0:
        raise ValueError("need batches >= 1, repeats >= 1, warmup >= 0")
    warmup = max(warmup, getattr(feeder, "pipeline_depth", 0))
    start_epoch = feeder.epoch
    stream = _timed_batches(feeder, sync)
    first_batches: list[float] = []
    windows: list[float] = []
    seen = 0
    count, elapsed = 0, 0.0
    images_total = 0
    timed_images = timed_batches = 0
    timed_seconds = 0.0
    started = not whole_epochs  # whole epochs: the first window waits for an epoch's first batch
    for n_images, seconds, first in stream:
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
    )
