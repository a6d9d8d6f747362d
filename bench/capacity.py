"""The largest training batch that fits the device, and the peak memory a step takes.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` (absolute: model, optimizer state, batch,
activations); on the CPU, the growth of the process's peak resident set (``VmHWM`` in
``/proc/self/status``, reset via ``/proc/self/clear_refs``) over the resident size before the
step, i.e. activations, gradients and optimizer state but not the weights and batch already
resident. Memory that malloc kept from earlier work is handed back first (glibc
``malloc_trim``), or its reuse would hide the growth. ``None`` where the reset is impossible
(not Linux). ``resource.getrusage`` is not used: its peak cannot be reset.
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch

from bench.consume import ConsumeConfig, synthetic_batch
from feeding.device import synchronizer
from training.step import step_settings

_MIB = 2**20


class PeakMemory:
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


def probe_step(step, config: ConsumeConfig, batch_size: int) -> int | None:
    """One training step (``step``: a training.step.TrainStep) on a fresh synthetic batch of
    ``batch_size``; its peak memory in bytes.

    On CUDA the peak is what the caching allocator held (reserved), since that is what other users
    of the GPU (e.g. DALI's memory pool) cannot have. Tests replace this function to simulate OOM.
    """
    device = step.device
    if device.type == "cuda":
        torch.cuda.empty_cache()  # earlier probes' cached blocks would inflate "reserved"
    step.model.zero_grad(set_to_none=True)  # the step's own gradients count towards its peak
    peak = PeakMemory(device)
    images, labels = synthetic_batch(config, batch_size)
    step.run(images, labels)
    step.update()
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

    def __init__(self, step, config: ConsumeConfig, capacity: int, predict: bool) -> None:
        self.step, self.model, self.config = step, step.model, config
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
            peak = probe_step(self.step, self.config, batch)
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


@dataclass(frozen=True)
class BatchFit:
    """What ``largest_batch`` found: the batch to use, the largest that ran, and why they differ."""

    batch: int  # the batch to train with
    largest: int  # the largest batch that fitted
    margin_applied: bool  # True when a probe failed (out of memory, or a peak over the capacity)
    probes: list[dict]  # one entry per probe: {"batch", "fits", "reason"}

    @property
    def sentence(self) -> str:
        if not self.margin_applied:
            return f"batch {self.batch}: every probe up to it fitted (no margin needed)"
        first_failure = next(p for p in self.probes if not p["fits"])
        return (f"batch {self.batch}: {self.largest} fitted, {first_failure['batch']} did not "
                f"({first_failure['reason']}), so a margin was kept")


def largest_batch(
    config: ConsumeConfig,
    start: int = 16,
    limit: int = 4096,
    margin: float = 0.9,
    reserve_bytes: int = 0,
    ram_budget_bytes: int | None = None,
    predict: bool | None = None,
) -> BatchFit:
    """The largest training batch that fits, and one log entry per probe.

    Doubling from ``start`` up to ``limit``, then bisection between the last fit and the first
    failure. A step that runs out of memory (``torch.cuda.OutOfMemoryError``, ``MemoryError``, or a
    ``RuntimeError`` saying so) is recovered from and logged as ``{"batch", "fits": False, "reason"}``.
    A step whose peak exceeds the capacity does not fit either; the capacity is, on CUDA, the GPU's
    total memory, on CPU ``ram_budget_bytes`` (default: half the RAM available now), in both cases
    less ``reserve_bytes`` (e.g. DALI's GPU memory pool, or the loader workers' RAM).

    ``margin`` applies only where a probe failed: the batch just below a failure runs close to
    the memory's edge (fragmentation, another process's allocation can tip it over), so the batch
    returned is ``margin`` x the largest that fitted. Where nothing failed (the ``limit`` fitted),
    the largest is returned as it is.

    ``predict`` (default: on for CPU, off for CUDA) runs steps only until two fit, then predicts
    the rest from the second one's bytes/image: cheap where a large training step takes minutes.
    Without it, every probe runs a real step; on CPU a probe predicted over the budget is still not
    run, so the search never allocates beyond the RAM budget.
    """
    from bench.consume import training_step

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
    with step_settings(config.step, device, config.threads):
        step = training_step(config)
        predict = device.type == "cpu" if predict is None else predict
        prober = _Prober(step, config, capacity, predict)
        try:
            largest, log = _search(prober, start, limit)
        finally:
            del prober, step
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if largest == 0:
        reason = log[-1]["reason"]
        raise RuntimeError(f"not even a batch of 1 fits in {capacity} bytes on {config.device}: {reason}")
    failed = any(not entry["fits"] for entry in log)
    return BatchFit(max(1, math.floor(largest * margin)) if failed else largest, largest, failed, log)
