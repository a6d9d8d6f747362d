"""A simulated accelerator, ``sim:R``: a device that trains at R img/s at 224x224, on any machine.

It answers "would this host feed a GPU that trains at R img/s?" without one, by measurement
(DS-Analyzer's what-if), and it lets tests reach the input-bound and balanced regimes on a
2-core machine. Like CUDA it is asynchronous to the host: the host enqueues a step and goes on
until it synchronizes (reads the loss back); the step runs on the device's own thread, which
waits out its time (``time.sleep``: no GIL, no core). The host side does its real work: each
batch is copied into the device's memory (a real copy, as a pinned host-to-device copy reads
the batch), and each step costs a launch (Python work that holds the GIL, as kernel launches
do). So everything the training process does on the CPU stays in the measurement; only the
device's arithmetic is replaced by a wait. Other shapes cost in proportion to their pixels.
"""
from __future__ import annotations

import math
import queue
import re
import threading
import time
from dataclasses import dataclass

import torch

REFERENCE_PIXELS = 224 * 224  # R is the rate at this shape
DEFAULT_LAUNCH_S = 1e-4  # host time to launch one step's kernels (holds the GIL), seconds
_SIM = re.compile(r"sim:(.*)")


def is_sim(device) -> bool:
    return isinstance(device, str) and device.startswith("sim:")


@dataclass(frozen=True)
class SimSpec:
    """``sim:R``: ``rate`` img/s at 224x224; ``launch_s`` seconds of host work per step."""

    rate: float
    launch_s: float = DEFAULT_LAUNCH_S

    def __post_init__(self) -> None:
        if not (isinstance(self.rate, (int, float)) and math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"sim:R needs a rate R > 0 in img/s at 224x224, got {self.rate!r}")
        if self.launch_s < 0:
            raise ValueError(f"launch_s must be >= 0, got {self.launch_s}")

    @classmethod
    def parse(cls, device: str) -> "SimSpec":
        """``"sim:1500"`` -> SimSpec(1500.0); a one-line ValueError for ``sim:0``, ``sim:abc``."""
        match = _SIM.fullmatch(device or "")
        if match is None:
            raise ValueError(f"a simulated device is sim:R (R: img/s at 224x224, e.g. sim:1500), got {device!r}")
        try:
            rate = float(match.group(1))
        except ValueError:
            raise ValueError(f"{device!r}: R must be a number of img/s at 224x224 (e.g. sim:1500)") from None
        return cls(rate)

    def step_seconds(self, images: int, size: tuple[int, int]) -> float:
        """Device seconds for one training step on ``images`` images of ``size`` (height, width)."""
        return images / self.rate * (size[0] * size[1]) / REFERENCE_PIXELS


class SimAccelerator:
    """The device: a thread that runs enqueued steps (waits), in order, one at a time."""

    def __init__(self, spec: SimSpec) -> None:
        self.spec = spec
        self._steps: queue.SimpleQueue = queue.SimpleQueue()
        self._done = threading.Condition()
        self._enqueued = self._finished = 0
        self.busy_s = 0.0  # device seconds run so far
        self._thread = threading.Thread(target=self._run, name="sim-device", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (seconds := self._steps.get()) is not None:
            time.sleep(seconds)
            with self._done:
                self._finished += 1
                self.busy_s += seconds
                self._done.notify_all()

    def launch(self, images: int, size: tuple[int, int]) -> int:
        """Enqueue one step (after the host's launch work); returns its ticket for ``wait``."""
        _busy_wait(self.spec.launch_s)
        self._enqueued += 1
        self._steps.put(self.spec.step_seconds(images, size))
        return self._enqueued

    def wait(self, ticket: int | None = None) -> None:
        """Block until step ``ticket`` (default: every enqueued step) has run: a synchronization."""
        target = self._enqueued if ticket is None else ticket
        with self._done:
            self._done.wait_for(lambda: self._finished >= target)

    synchronize = wait

    def copy_in(self, tensor: torch.Tensor, staging: dict) -> torch.Tensor:
        """The batch in device memory: a real copy into a reused buffer of the same layout, as
        ``pin_memory`` copies a batch before the host-to-device transfer reads it."""
        key = (tuple(tensor.shape), tensor.stride(), tensor.dtype)
        buffer = staging.get(key)
        if buffer is None:
            buffer = staging[key] = torch.empty_like(tensor)
        buffer.copy_(tensor)
        return buffer

    def close(self) -> None:
        self._steps.put(None)
        self._thread.join(timeout=5)


def _busy_wait(seconds: float) -> None:
    """Hold the GIL and a core for ``seconds``, as the Python of kernel launches does."""
    if seconds <= 0:
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class SimLoss:
    """A step's loss on the simulated device: ``item()`` synchronizes, as a CUDA loss's does."""

    def __init__(self, device: SimAccelerator, ticket: int) -> None:
        self.device, self.ticket = device, ticket

    def item(self) -> float:
        self.device.wait(self.ticket)
        return 0.0
