"""Measure what the model consumes: training steps per second on synthetic batches.

The feed side (``bench.measure``) says how many images/sec a pipeline delivers;
this side says how many images/sec one training step (forward, cross-entropy,
backward, optimizer step) can take, with the batch already on the device so no
data wait is counted. As in timm's ``benchmark.py``: warm-up steps, then timed
steps, read with a timer that synchronizes the device (chosen once).

Choices, fixed for every measurement:

* optimizer: SGD, momentum 0.9 (the ResNet recipe and timm's benchmark default);
  it keeps one extra buffer per parameter (AdamW would keep two);
* mixed precision: bfloat16 autocast (no loss scaling needed), on by default on CUDA;
* memory: on CUDA, ``torch.cuda.max_memory_allocated`` (absolute: model, optimizer
  state, batch, activations); on CPU, the growth of the process's peak resident set
  (``VmHWM`` in ``/proc/self/status``, reset via ``/proc/self/clear_refs``) over the
  resident size before the steps, i.e. activations, gradients and optimizer state but
  not the weights and batch already resident. Memory that malloc kept from earlier work
  is handed back first (glibc ``malloc_trim``), or its reuse would hide the growth.
  ``None`` where the reset is impossible (not Linux). ``resource.getrusage`` is not
  used: its peak cannot be reset, so it misses any step smaller than earlier work.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from bench.stats import Summary, summarize
from feeding import checks
from feeding.checks import Shape
from feeding.device import synchronizer
from training.models import build_model

_MIB = 2**20
MOMENTUM = 0.9
LEARNING_RATE = 0.01


@dataclass(frozen=True)
class ConsumeConfig:
    """What to train on which device, and how long to time it.

    ``model`` is a timm name (built untrained, never downloaded) or ``"package.module:factory"``.
    ``size`` is (height, width) in pixels. ``threads`` sets torch's intra-op CPU threads for the
    measurement only (None: leave as is). ``channels_last`` and ``amp`` (bfloat16 autocast)
    default to on for CUDA and off for CPU; ``resolved()`` fills them in.
    """

    model: str = "resnet18"
    device: str = "cpu"
    batch_size: int = 64
    size: Shape = (224, 224)
    num_classes: int = 18
    warmup: int = 2
    steps: int = 5
    threads: int | None = None
    channels_last: bool | None = None
    amp: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must be a timm model name or 'package.module:factory', got an empty name")
        checks.available_device("device", self.device)
        for name in ("batch_size", "num_classes", "steps"):
            checks.count(name, getattr(self, name))
        checks.count("threads", self.threads, allow_none=True)
        checks.count("warmup", self.warmup, minimum=0)
        object.__setattr__(self, "size", checks.size("size", self.size))
        for name in ("channels_last", "amp"):
            if getattr(self, name) not in (None, True, False):
                value = getattr(self, name)
                raise ValueError(f"{name} must be True, False or None (device default), got {value!r}")

    def resolved(self) -> ConsumeConfig:
        """The same config with the device defaults for ``channels_last`` and ``amp`` filled in."""
        on_cuda = self.device != "cpu"
        return replace(
            self,
            channels_last=on_cuda if self.channels_last is None else self.channels_last,
            amp=on_cuda if self.amp is None else self.amp,
        )


@dataclass(frozen=True)
class ConsumeMeasurement:
    """Training throughput over the timed steps (images/sec and ms per step) and peak memory (bytes)."""

    images_per_sec: Summary  # batch_size / seconds, one value per timed step
    step_ms: Summary
    peak_memory_bytes: int | None  # see the module docstring: absolute on CUDA, RSS growth on CPU
    batch_size: int
    size: Shape
    device: str
    model: str
    threads: int  # torch intra-op threads in effect during the steps
    channels_last: bool
    amp: bool
    optimizer: str = f"SGD(momentum={MOMENTUM})"

    def to_dict(self) -> dict:
        return asdict(self)


# --- one training step -------------------------------------------------------------------------


def prepare_model(model: torch.nn.Module, config: ConsumeConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model on the device in training mode, and its optimizer (config must be resolved)."""
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(torch.device(config.device), memory_format=memory_format)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    return model, optimizer


def _synthetic_batch(config: ConsumeConfig, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized-like float images and random labels, made on the device (no transfer timed)."""
    device = torch.device(config.device)
    images = torch.randn(batch_size, 3, *config.size, device=device)
    if config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, config.num_classes, (batch_size,), device=device)
    return images, labels


def train_step(model, optimizer, images: torch.Tensor, labels: torch.Tensor, amp: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()


class _PeakMemory:
    """Peak memory in bytes from construction to ``read()`` (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self._baseline = 0
        else:
            self._baseline = _proc_status_bytes("VmRSS") if _reset_rss_peak() else None

    def read(self, reserved: bool = False) -> int | None:
        """Peak bytes; on CUDA ``reserved`` counts what the caching allocator held, not just used."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_reserved if reserved else torch.cuda.max_memory_allocated
            return int(peak(self.device))
        if self._baseline is None:
            return None
        high_water = _proc_status_bytes("VmHWM")
        return None if high_water is None else max(0, high_water - self._baseline)


def _reset_rss_peak() -> bool:
    """Reset this process's peak resident set to its current size (Linux >= 4.0).

    Memory freed earlier but kept by malloc would be reused without raising the resident set, so
    the step's growth would read too low: it is handed back to the system first (glibc only).
    """
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _malloc_trim() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim with
        pass


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


@contextlib.contextmanager
def _measurement_settings(config: ConsumeConfig) -> Iterator[None]:
    """Set torch's CPU threads (and cuDNN autotuning on CUDA) for the measurement, then restore."""
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        if config.device != "cpu":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


# --- throughput --------------------------------------------------------------------------------


def measure_consumption(config: ConsumeConfig, model: torch.nn.Module | None = None) -> ConsumeMeasurement:
    """Images/sec one training step takes, over ``config.steps`` timed steps after ``config.warmup``.

    ``model`` (default: ``build_model(config.model, ...)``) is moved to the device and trained in
    place: its weights change. The peak memory covers warm-up and timed steps.
    """
    config = config.resolved()
    device = torch.device(config.device)
    with _measurement_settings(config):
        if model is None:
            model = build_model(config.model, config.num_classes)
        model, optimizer = prepare_model(model, config)
        images, labels = _synthetic_batch(config, config.batch_size)
        sync = synchronizer(device)
        peak = _PeakMemory(device)
        for _ in range(config.warmup):
            train_step(model, optimizer, images, labels, config.amp)
        sync()
        seconds = []
        for _ in range(config.steps):
            start = time.perf_counter()
            train_step(model, optimizer, images, labels, config.amp)
            sync()
            seconds.append(time.perf_counter() - start)
        threads = torch.get_num_threads()
        peak_bytes = peak.read()
    return ConsumeMeasurement(
        images_per_sec=summarize(config.batch_size / s for s in seconds),
        step_ms=summarize(s * 1000 for s in seconds),
        peak_memory_bytes=peak_bytes,
        batch_size=config.batch_size,
        size=config.size,
        device=config.device,
        model=config.model,
        threads=threads,
        channels_last=config.channels_last,
        amp=config.amp,
    )


# --- largest batch -----------------------------------------------------------------------------


def probe_step(model, optimizer, config: ConsumeConfig, batch_size: int) -> int | None:
    """One training step on a fresh synthetic batch of ``batch_size``; its peak memory in bytes.

    On CUDA the peak is what the caching allocator held (reserved), since that is what other users
    of the GPU (e.g. DALI's memory pool) cannot have. Tests replace this function to simulate OOM.
    """
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # earlier probes' cached blocks would inflate "reserved"
    model.zero_grad(set_to_none=True)  # the step's own gradients count towards its peak
    peak = _PeakMemory(device)
    images, labels = _synthetic_batch(config, batch_size)
    train_step(model, optimizer, images, labels, config.amp)
    synchronizer(device)()
    return peak.read(reserved=True)


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return "out of memory" in text or "DefaultCPUAllocator: can't allocate" in text


def _release(model: torch.nn.Module, device: torch.device) -> None:
    """Give back what a failed step left: partial gradients, unreachable tensors, cached blocks."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Prober:
    """Decides whether a batch fits in ``capacity`` bytes, by running a step or by prediction.

    Predictions scale the bytes/image of the latest (largest) step that fitted, fixed costs included,
    which errs towards "does not fit". With ``predict``, probes are predicted once two steps have
    fitted (the first also pays one-time costs: optimizer state, kernel caches); without it steps
    are run, and on CPU a step predicted over the budget is not run.
    """

    def __init__(self, model, optimizer, config: ConsumeConfig, capacity: int, predict: bool) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config
        self.device = torch.device(config.device)
        self.capacity, self.predict = capacity, predict
        self.bytes_per_image: float | None = None
        self.fitted_steps = 0

    def __call__(self, batch: int) -> tuple[bool, str]:
        if self.bytes_per_image is None:
            return self._run(batch)
        predicted, budget = self.bytes_per_image * batch / _MIB, self.capacity / _MIB
        use_prediction = self.predict and self.fitted_steps >= 2
        if predicted > budget and (use_prediction or self.device.type == "cpu"):
            return False, f"predicted {predicted:.0f} MiB > {budget:.0f} MiB (not run)"
        if use_prediction:
            return True, f"predicted {predicted:.0f} MiB <= {budget:.0f} MiB"
        return self._run(batch)

    def _run(self, batch: int) -> tuple[bool, str]:
        try:
            peak = probe_step(self.model, self.optimizer, self.config, batch)
        except (RuntimeError, MemoryError) as err:
            if not _is_out_of_memory(err):
                raise
            first_line = next(iter(str(err).splitlines()), "")[:160]
            reason = f"out of memory ({type(err).__name__}: {first_line})"
        else:
            reason = None
            if peak is not None and peak > self.capacity:
                reason = f"peak {peak / _MIB:.0f} MiB > {self.capacity / _MIB:.0f} MiB"
        if reason is not None:  # outside the except block, so the traceback's tensors are gone
            _release(self.model, self.device)
            return False, reason
        self.fitted_steps += 1
        if peak is not None:
            self.bytes_per_image = peak / batch
        return True, "ran" if peak is None else f"ran, peak {peak / _MIB:.0f} MiB"


def _search(fits: Callable[[int], tuple[bool, str]], start: int, limit: int) -> tuple[int, list[dict]]:
    """Largest batch in [1, limit] that ``fits``: doubling from ``start``, then bisection.

    Assumes fitting is monotone (what fits, fits when smaller). 0 when not even batch 1 fits.
    """
    log: list[dict] = []

    def probe(batch: int) -> bool:
        ok, reason = fits(batch)
        log.append({"batch": batch, "fits": ok, "reason": reason})
        return ok

    good, bad, batch = 0, None, start
    while bad is None and good < limit:
        if probe(batch):
            good, batch = batch, min(batch * 2, limit)
        else:
            bad = batch
    while bad is not None and bad - good > 1:
        middle = (good + bad) // 2
        if probe(middle):
            good = middle
        else:
            bad = middle
    return good, log


def _available_ram() -> int:
    from feeding.resources import available_ram

    return available_ram() or os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _capacity(device: torch.device, reserve_bytes: int, ram_budget_bytes: int | None) -> int:
    """Bytes a training step may use: the GPU's total, or on CPU the RAM budget; less ``reserve_bytes``."""
    if device.type == "cuda":
        total = torch.cuda.mem_get_info(device)[1]
    else:
        total = _available_ram() // 2 if ram_budget_bytes is None else ram_budget_bytes
    capacity = total - reserve_bytes
    if capacity <= 0:
        raise ValueError(f"reserve_bytes={reserve_bytes} leaves nothing of {total} bytes for the model")
    return capacity


def largest_batch(
    config: ConsumeConfig,
    start: int = 16,
    limit: int = 4096,
    margin: float = 0.9,
    reserve_bytes: int = 0,
    ram_budget_bytes: int | None = None,
    predict: bool | None = None,
) -> tuple[int, list[dict]]:
    """The largest training batch that fits, times ``margin`` (rounded down), and one log entry per probe.

    Doubling from ``start`` up to ``limit``, then bisection between the last fit and the first
    failure. A step that runs out of memory (``torch.cuda.OutOfMemoryError``, ``MemoryError``, or a
    ``RuntimeError`` saying so) is recovered from and logged as ``{"batch", "fits": False, "reason"}``.
    A step whose peak exceeds the capacity does not fit either; the capacity is, on CUDA, the GPU's
    total memory, on CPU ``ram_budget_bytes`` (default: half the RAM available now), in both cases
    less ``reserve_bytes`` (e.g. DALI's GPU memory pool, or the loader workers' RAM).

    ``predict`` (default: on for CPU, off for CUDA) runs steps only until two fit, then predicts
    the rest from the second one's bytes/image: cheap where a large training step takes minutes.
    Without it, every probe runs a real step; on CPU a probe predicted over the budget is still not
    run, so the search never allocates beyond the RAM budget.
    """
    if not 1 <= start <= limit:
        raise ValueError(f"need 1 <= start <= limit, got start={start}, limit={limit}")
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    if reserve_bytes < 0:
        raise ValueError(f"reserve_bytes must be >= 0, got {reserve_bytes}")
    config = config.resolved()
    device = torch.device(config.device)
    if device.type == "cpu" and not _reset_rss_peak():
        raise RuntimeError("largest_batch on CPU needs to measure peak RAM (Linux /proc/self/clear_refs)")
    capacity = _capacity(device, reserve_bytes, ram_budget_bytes)
    with _measurement_settings(config):
        model, optimizer = prepare_model(build_model(config.model, config.num_classes), config)
        predict = device.type == "cpu" if predict is None else predict
        prober = _Prober(model, optimizer, config, capacity, predict)
        try:
            largest, log = _search(prober, start, limit)
        finally:
            del prober, model, optimizer
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if largest == 0:
        reason = log[-1]["reason"]
        raise RuntimeError(f"not even a batch of 1 fits in {capacity} bytes on {config.device}: {reason}")
    return max(1, math.floor(largest * margin)), log
