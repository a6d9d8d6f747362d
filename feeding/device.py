"""The device step: uint8 batches to the device, normalized there.

Batches cross the host-to-device link as uint8 (a quarter of float32's bytes)
and become float only on the device. Under CUDA the next batch is copied on a
side stream while the current one is being used, as timm's PrefetchLoader does.

A feeder's batch may already be on the GPU, in its producer's memory (DALI's GPU
decode hands out its own buffers by DLPack). Two things then keep the side stream
from reading what it should not: the batch is fetched with the side stream current,
so the producer's ready event orders the side stream (DLPack waits on the consumer's
current stream); and the producer's tensors are held until an event recorded after
the side stream's reads has completed. Given back sooner, a buffer can be reused by
the producer's own stream while the side stream still reads it; torch's caching
allocator does not own that memory, so ``record_stream`` cannot protect it.
"""
from __future__ import annotations

from collections import deque
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
        self._position: tuple[int, int] | None = None  # (epoch, batches) handed out, while iterating

    def state_dict(self) -> dict:
        """The feeder's state at the last batch handed out here: the CUDA prefetch has taken one more
        from the feeder, which a resumed run must deliver again."""
        return self.feeder.state_dict() if self._position is None else self.feeder.state_at(self._position)

    def load_state_dict(self, state: dict) -> None:
        self.feeder.load_state_dict(state)
        self._position = None

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
        self._position = None

    def _finish(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        images = normalize_uint8(images, self.mean, self.std, self.dtype)
        return images.contiguous(memory_format=self.memory_format), labels

    def __iter__(self) -> Iterator[Batch]:
        next_start = getattr(self.feeder, "next_start", None)  # a Feeder's; a feeder-like stream may lack it
        if next_start is None:
            yield from self._batches()
            return
        epoch, start = next_start()
        for number, batch in enumerate(self._batches(), start + 1):
            self._position = (epoch, number)
            yield batch
        self._position = None  # the epoch is over: the feeder's own state says so

    def _batches(self) -> Iterator[Batch]:
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
        """Batch k+1 is copied and normalized on a side stream while batch k is used on the current one."""
        side = torch.cuda.Stream(device=self.device)
        sources = SourceHold()
        batches = iter(self.feeder)
        pending: Batch | None = None
        try:
            while True:
                with torch.cuda.stream(side):
                    batch = next(batches, None)  # fetched with the side stream current (module docstring)
                    if batch is None:
                        break
                    source = tuple(_pinned(tensor) for tensor in batch)
                    images = source[0].to(self.device, non_blocking=True)  # normalizing makes the images yielded
                    labels = source[1].to(self.device, non_blocking=True, copy=True)  # not the producer's memory
                    ready = self._finish(images, labels)
                sources.hold(source, side)
                if pending is not None:
                    yield pending
                current = torch.cuda.current_stream(self.device)
                current.wait_stream(side)
                for tensor in ready:  # the caching allocator must not reuse these while the current stream reads them
                    tensor.record_stream(current)
                pending = ready
                sources.release_done()
            if pending is not None:
                yield pending
        finally:
            side.synchronize()  # every read queued on the side stream, a batch's that failed half-way too
            sources.release_all()
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # the feeder's epoch ends here, not whenever this frame is collected


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """A host tensor in pinned memory, so its copy to the device is asynchronous; a device tensor as it is."""
    if tensor.device.type == "cpu" and not tensor.is_pinned():
        return tensor.pin_memory()
    return tensor


class SourceHold:
    """Tensors a side stream reads, each held until an event recorded after those reads has completed.

    At most ``limit`` batches are held: beyond that the host waits for the oldest one's reads,
    so a side stream that falls behind (waiting on its producer) cannot pile up the producer's buffers.
    """

    def __init__(self, limit: int = 4) -> None:
        self.limit = limit
        self._held: deque[tuple[object, tuple[torch.Tensor, ...]]] = deque()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, tensors: tuple[torch.Tensor, ...], stream) -> None:
        """Keep ``tensors`` until the work queued so far on ``stream`` has completed."""
        event = torch.cuda.Event()
        event.record(stream)
        self._held.append((event, tensors))
        while len(self._held) > self.limit:
            event, _ = self._held.popleft()
            event.synchronize()

    def release_done(self) -> None:
        """Let go of the batches whose reads have completed (events complete in order on one stream)."""
        while self._held and self._held[0][0].query():
            self._held.popleft()

    def release_all(self) -> None:
        """Wait for every held batch's reads, then let go of them (the end of an epoch, or a consumer that left)."""
        while self._held:
            event, _ = self._held.popleft()
            event.synchronize()
