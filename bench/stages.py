"""Where the time goes: read, decode, augment, collate/IPC and host-to-device, per image.

Measured in the real worker setup (the same workers, batch and plan as the
run), not single-threaded: decoders rank differently alone than under
contention. Workers time their own stages and send the totals back with each
batch; what their stage timers do not cover (handing the batch through shared
memory, waiting, scheduling) is what the delivered rate leaves over, and is
counted as IPC.

The differential run (as DS-Analyzer does) repeats the measurement with every
file's bytes preloaded in RAM: the gap between the two rates is what storage
costs.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

from bench.measure import FeedMeasurement, measure_feeder

STAGE_ORDER = ("read", "decode", "augment", "collate/IPC", "host-to-device")


@dataclass(frozen=True)
class StageBreakdown:
    """Milliseconds of worker time per image, per stage, and the stage that bounds the pipeline."""

    ms_per_image: dict[str, float]
    bottleneck: str
    delivered_ips: float
    parallelism: int  # workers that can run at once: min(workers, cores)
    ram_cached_ips: float | None = None  # differential run with bytes in RAM
    storage_share: float | None = None  # fraction of per-image time that storage costs

    def to_dict(self) -> dict:
        return asdict(self)


def split_stages(
    stage_seconds: dict[str, float], images: int, delivered_ips: float, parallelism: int
) -> dict[str, float]:
    """ms per image for each stage; the time the workers' timers miss is IPC (pure)."""
    if images <= 0 or delivered_ips <= 0:
        raise ValueError("no images were timed: measure longer")
    measured = {stage: 1e3 * seconds / images for stage, seconds in stage_seconds.items()}
    budget_ms = 1e3 * parallelism / delivered_ips  # worker time available per delivered image
    handover = max(0.0, budget_ms - sum(measured.values()))
    return {
        "read": measured.get("read", 0.0),
        "decode": measured.get("decode", 0.0),
        "augment": measured.get("augment", 0.0),
        "collate/IPC": measured.get("collate", 0.0) + handover,
    }


def bounding_stage(ms_per_image: dict[str, float]) -> str:
    return max(ms_per_image, key=ms_per_image.get)


def measure_h2d(batch_size: int, size: tuple[int, int], device: str, repeats: int = 10) -> float | None:
    """ms per image to copy a pinned uint8 batch to ``device``; None on the CPU (nothing to copy)."""
    import torch

    if not device.startswith("cuda"):
        return None
    batch = torch.empty((batch_size, 3, *size), dtype=torch.uint8).pin_memory()
    batch.to(device, non_blocking=True)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        batch.to(device, non_blocking=True)
    torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - start) / (repeats * batch_size)


def preload_bytes(paths, budget_bytes: int) -> dict[str, bytes] | None:
    """Every file's bytes, or None when they would not fit in ``budget_bytes``."""
    total = sum(os.path.getsize(p) for p in paths)
    if total > budget_bytes:
        return None
    cache = {}
    for path in paths:
        with open(path, "rb") as fh:
            cache[path] = fh.read()
    return cache


def measure_stages(
    feeder, batches: int, repeats: int, warmup: int, device: str = "cpu", differential: bool = True,
    ram_budget_bytes: int = 2 * 2**30,
) -> tuple[FeedMeasurement, StageBreakdown]:
    """Measure a host feeder with its stage timers (and, optionally, again from RAM)."""
    if not feeder.capabilities.stage_timers:
        raise ValueError(f"the {feeder.config.pipeline} pipeline has no stage timers (host pipelines only)")
    parallelism = max(1, min(feeder.workers, os.cpu_count() or 1))
    feeder.reset_stage_times()
    disk = measure_feeder(feeder, batches, repeats, warmup)
    stages = split_stages(feeder.stage_seconds, feeder.stage_images, disk.images_per_sec.median, parallelism)
    h2d = measure_h2d(feeder.batch_size, feeder.plan.output_size, device)
    if h2d is not None:
        stages["host-to-device"] = h2d
    ram_ips = share = None
    if differential:
        cache = preload_bytes(feeder.samples.paths.tolist(), ram_budget_bytes)
        if cache is not None:
            feeder.use_bytes(cache)  # its workers start again below, and inherit the bytes
            try:
                ram_ips = measure_feeder(feeder, batches, repeats, warmup).images_per_sec.median
            finally:
                feeder.use_bytes(None)
            share = max(0.0, 1 - disk.images_per_sec.median / ram_ips)
    breakdown = StageBreakdown(
        ms_per_image={k: round(v, 4) for k, v in stages.items()},
        bottleneck=bounding_stage(stages),
        delivered_ips=disk.images_per_sec.median,
        parallelism=parallelism,
        ram_cached_ips=ram_ips,
        storage_share=share,
    )
    return disk, breakdown


def format_stages(breakdown: StageBreakdown) -> str:
    total = sum(breakdown.ms_per_image.values())
    lines = [f"stages (ms of worker time per image, {breakdown.parallelism} in parallel):"]
    for stage in STAGE_ORDER:
        if stage in breakdown.ms_per_image:
            ms = breakdown.ms_per_image[stage]
            mark = "  <- bounds the pipeline" if stage == breakdown.bottleneck else ""
            lines.append(f"  {stage:<15}{ms:>8.3f} ms  {100 * ms / total:>5.1f}%{mark}")
    if breakdown.ram_cached_ips is not None:
        lines.append(
            f"  differential: {breakdown.delivered_ips:.1f} img/s from storage, {breakdown.ram_cached_ips:.1f} img/s "
            f"with bytes in RAM: storage costs {100 * breakdown.storage_share:.1f}%"
        )
    return "\n".join(lines)
