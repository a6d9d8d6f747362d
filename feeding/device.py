"""The device step: uint8 batches to the device, normalized there.

Batches cross the host-to-device link as uint8 (a quarter of float32's bytes)
and become float only on the device. Under CUDA the next batch is copied on a
side stream while the current one is being used, as timm's PrefetchLoader does.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from feeding.feeder import Batch, Feeder
from feeding.spec import Normalize


def normalize_uint8(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(images / 255 - mean) / std, folded into one multiply-add: images * (1/(255 std)) - mean/std."""
    scale = 1.0 / (255.0 * std)
    shift = mean / std
    return images.to(dtype).mul_(scale.to(dtype)).sub_(shift.to(dtype))


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for queued device work, so a timer read after it sees finished steps."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class DeviceFeeder:
    """Wraps any Feeder; yields (float images on ``device``, int64 labels on ``device``).

    ``device`` may be a ``feeding.sim.SimAccelerator``: each batch is then copied into the
    simulated device's memory (a real copy, the host's part of a transfer) and stays uint8,
    since normalizing is the device's work there.
    """

    def __init__(
        self,
        feeder: Feeder,
        device=None,
        normalize: Normalize | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        from feeding.sim import SimAccelerator

        self.feeder = feeder
        self.sim = device if isinstance(device, SimAccelerator) else None
        self._staging: dict = {}
        self.device = torch.device("cpu" if device is None or self.sim is not None else device)
        norm = normalize or feeder.config.spec.normalize or Normalize()
        self.mean = torch.tensor(norm.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(norm.std, device=self.device).view(1, 3, 1, 1)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.feeder)

    @property
    def batch_size(self) -> int:
        return self.feeder.batch_size

    @property
    def epoch(self) -> int:
        return self.feeder.epoch

    @property
    def pipeline_depth(self) -> int:
        """The feeder's read-ahead, and the one batch the CUDA prefetch holds."""
        return self.feeder.pipeline_depth + (1 if self.device.type == "cuda" else 0)

    @property
    def skipped(self):
        return self.feeder.skipped

    def set_epoch(self, epoch: int) -> None:
        self.feeder.set_epoch(epoch)

    def _finish(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        images = normalize_uint8(images, self.mean, self.std, self.dtype)
        return images.contiguous(memory_format=self.memory_format), labels

    def __iter__(self) -> Iterator[Batch]:
        if self.device.type == "cuda":
            yield from self._cuda_prefetch()
            return
        if self.sim is not None:
            for images, labels in self.feeder:
                yield self.sim.copy_in(images, self._staging), self.sim.copy_in(labels, self._staging)
            return
        for images, labels in self.feeder:
            yield self._finish(images.to(self.device), labels.to(self.device))

    def _cuda_prefetch(self) -> Iterator[Batch]:
        stream = torch.cuda.Stream(device=self.device)
        pending: Batch | None = None
        for images, labels in self.feeder:
            with torch.cuda.stream(stream):
                if images.device.type == "cpu" and not images.is_pinned():
                    images, labels = images.pin_memory(), labels.pin_memory()
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                ready = self._finish(images, labels)
            if pending is not None:
                yield pending
            torch.cuda.current_stream(self.device).wait_stream(stream)
            for tensor in ready:  # the caching allocator must not reuse these while the main stream reads them
                tensor.record_stream(torch.cuda.current_stream(self.device))
            pending = ready
        if pending is not None:
            yield pending
