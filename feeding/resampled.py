"""A feeder whose samples are drawn anew each epoch (class-balanced sampling, say).

The backends fix their samples when built (worker processes and threads hold them for their
lifetime) and offer no sampler hook, so an epoch over a resampled ``Samples`` is fed by a feeder
of its own: ``ResampledFeeder`` builds one per epoch and closes the previous one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from feeding.factory import create_feeder
from feeding.feeder import Batch, FeedConfig, Feeder
from feeding.sources import Samples


class ResampledFeeder(Feeder):
    """A Feeder over ``samples.subset(draw(epoch))``: each epoch its own draw, its own inner feeder.

    The draw must keep the number of images, so that ``len()`` is the same every epoch.
    Every rank of a distributed run makes the same draw and then feeds its shard of it
    (``config.shard_id``), as it would of fixed samples.
    """

    def __init__(self, samples: Samples, config: FeedConfig, draw: Callable[[int], np.ndarray]) -> None:
        super().__init__(samples, config)
        self._draw = draw
        self._inner: tuple[int, Feeder] | None = None
        self._length = len(self._feeder_for(0))

    def _feeder_for(self, epoch: int) -> Feeder:
        if self._inner is None or self._inner[0] != epoch:
            self.close()
            index = self._draw(epoch)
            if len(index) != len(self.samples):
                raise ValueError(f"a resampled epoch must keep {len(self.samples)} images, got {len(index)}")
            inner = create_feeder(self.samples.subset(index), self.config)
            self.notes.extend(note for note in inner.notes if note not in self.notes)
            self._inner = (epoch, inner)
        return self._inner[1]

    def __len__(self) -> int:
        return self._length

    @property
    def num_samples(self) -> int:
        return self._feeder_for(self.epoch).num_samples

    @property
    def pipeline_depth(self) -> int:
        return self._feeder_for(self.epoch).pipeline_depth

    def _epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        feeder = self._feeder_for(epoch)
        feeder.start_at(epoch, start)  # the epoch's augmentation and order streams, as without resampling
        try:
            yield from feeder
        finally:
            self._record_skips(feeder.skipped)

    def close(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner[1].close()
