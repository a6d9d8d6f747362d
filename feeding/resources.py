"""Check shared memory, RAM and GPU memory before a pipeline starts, and say what is short.

Each worker keeps up to ``prefetch_factor`` finished batches in /dev/shm until
the main process takes them; too little shared memory shows up much later as a
bus error deep inside a worker. Checking first turns that into a sentence.

DALI holds its in-flight batches decoded at the source images' size, in RAM (CPU
decode) or GPU memory (mixed decode); a batch that does not fit ends in a
``std::bad_alloc`` inside DALI's threads, so it is refused before DALI starts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from feeding.errors import FeedError

# Leave room for everything else that uses shared memory and RAM.
HEADROOM = 0.5
GiB = 2**30


@dataclass(frozen=True)
class WorkerBudget:
    workers: int
    prefetch_factor: int
    notes: tuple[str, ...]


def batch_bytes(batch_size: int, height: int, width: int) -> int:
    """Bytes of one uint8 RGB batch plus its int64 labels."""
    return batch_size * (3 * height * width + 8)


def available_shm(path: str = "/dev/shm") -> int | None:
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fit_workers(
    workers: int, prefetch_factor: int, one_batch: int, shm: int | None, ram: int | None
) -> WorkerBudget:
    """Reduce prefetch, then workers, until the in-flight batches fit; pure.

    Raises FeedError when even one worker with one batch in flight does not fit.
    """
    limits = [(name, int(v * HEADROOM)) for name, v in (("/dev/shm", shm), ("RAM", ram)) if v is not None]
    if workers == 0 or not limits:
        return WorkerBudget(workers, prefetch_factor, ())

    def short(w: int, p: int) -> list[str]:
        need = w * p * one_batch
        return [f"{name} has {free / 2**20:.0f} MiB usable, {w} workers x {p} batches need {need / 2**20:.0f} MiB"
                for name, free in limits if need > free]

    problems = short(workers, prefetch_factor)
    if not problems:
        return WorkerBudget(workers, prefetch_factor, ())
    w, p = workers, prefetch_factor
    while short(w, p) and p > 1:
        p -= 1
    while short(w, p) and w > 1:
        w -= 1
    if short(w, p):
        raise FeedError("not enough memory for even one worker with one batch: " + "; ".join(short(w, p))
                        + ". Lower --batch or the image size, or enlarge /dev/shm (docker: --shm-size).")
    note = f"reduced to {w} workers x prefetch {p} because " + "; ".join(problems)
    return WorkerBudget(w, p, (note,))


def dali_held_bytes(
    batch_size: int, prefetch: int, source_hw: tuple[int, int], output_hw: tuple[int, int]
) -> int:
    """Bytes a DALI pipeline holds for its batches; pure.

    ``prefetch + 1`` batches are in flight (DALI's ``prefetch_queue_depth`` queued,
    one being made), each as ``batch_size`` uint8 RGB images decoded at
    ``source_hw`` (height, width in pixels: the largest source image, so an upper
    bound) plus the same images at the output size ``output_hw``.
    """
    (source_h, source_w), (out_h, out_w) = source_hw, output_hw
    return (prefetch + 1) * batch_size * 3 * (source_h * source_w + out_h * out_w)


def check_dali_memory(
    batch_size: int, prefetch: int, source_hw: tuple[int, int], output_hw: tuple[int, int],
    free: int | None, where: str = "RAM",
) -> None:
    """Raise FeedError when DALI's batches would not fit in ``HEADROOM`` of ``free`` bytes of ``where``; pure.

    ``free`` None (not known here) checks nothing.
    """
    if free is None:
        return
    need, usable = dali_held_bytes(batch_size, prefetch, source_hw, output_hw), int(free * HEADROOM)
    if need > usable:
        height, width = source_hw
        raise FeedError(f"DALI would hold ~{need / GiB:.1f} GiB for batch {batch_size} of up to {height}x{width} "
                        f"images (prefetch {prefetch}); {usable / GiB:.1f} GiB of {where} are usable: lower --batch")


def free_memory_for(gpu_id: int | None) -> tuple[str, int | None]:
    """Where DALI's decoded batches live and the bytes free there: RAM for a CPU decode (``gpu_id``
    None), else that CUDA device's free memory (``torch.cuda.mem_get_info``)."""
    if gpu_id is None:
        return "RAM", available_ram()
    import torch

    free, _ = torch.cuda.mem_get_info(gpu_id)
    return f"cuda:{gpu_id} memory", free


def check_worker_memory(
    workers: int, prefetch_factor: int, batch_size: int, height: int, width: int, shared_memory: bool = True
) -> WorkerBudget:
    """fit_workers with this machine's free RAM, and /dev/shm where batches cross processes."""
    shm = available_shm() if shared_memory else None  # worker threads hand batches over in RAM
    return fit_workers(workers, prefetch_factor, batch_bytes(batch_size, height, width), shm, available_ram())
