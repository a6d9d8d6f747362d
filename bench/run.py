"""``feedbench [run]``: build one feeder, measure what it delivers, and say so.

The frozen ``BenchConfig`` is what argparse builds (bench.cli); ``run_bench`` returns the
result record (the JSON of ``--json``), ``format_result`` the table printed for it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from bench.measure import measure_feeder
from bench.provenance import provenance
from feeding import checks
from feeding.backends import BACKENDS
from feeding.decode import sampled_sizes
from feeding.device import synchronizer
from feeding.factory import create_feeder
from feeding.feeder import FeedConfig
from feeding.io import display_path
from feeding.sample import resolve_data
from feeding.sources import discover
from feeding.spec_file import spec_provenance


@dataclass(frozen=True)
class BenchConfig:
    """One ``feedbench`` run: which data, which feeder settings, how long to measure."""

    feed: FeedConfig
    data: str | None = None  # None: the embedded sample data set (generated once into the cache)
    batches: int = 10
    repeats: int = 3
    warmup: int = 2
    json_path: str | None = None
    show_plan: bool = False
    stages: bool = False  # stage breakdown + RAM differential (the backends with stage timers)
    isolate: bool = False  # measure in a fresh interpreter
    spec_file: str | None = None  # the --spec file whose train section ``feed.spec`` is, as results name it

    def __post_init__(self) -> None:
        checks.count("--batches", self.batches)
        checks.count("--repeats", self.repeats)
        checks.count("--warmup", self.warmup, minimum=0)


def run_bench(config: BenchConfig) -> dict:
    """Build the feeder, measure it, and return the result record (rates in img/s, times in s)."""
    root = resolve_data(config.data)
    samples = discover(root, on_bad=config.feed.on_bad)  # a manifest typo: an error naming the row, or a skip
    feeder = create_feeder(samples, config.feed)
    if config.show_plan:
        print(describe_plan(feeder))
    sync = synchronizer(torch.device(config.feed.decode_device))  # batches decoded on a GPU: timed when ready
    breakdown = None
    with feeder:
        if config.stages and feeder.capabilities.stage_timers:
            from bench.stages import measure_stages

            measured, breakdown = measure_stages(feeder, config.batches, config.repeats, config.warmup)
        else:
            measured = measure_feeder(feeder, config.batches, config.repeats, config.warmup, sync=sync)
    size = config.feed.plan.output_size
    info = provenance()
    return {
        "pipeline": config.feed.pipeline,
        "workers": config.feed.workers,
        "batch": config.feed.batch_size,
        "size": list(size),
        "data": display_path(root),
        "layout": samples.layout,
        "dataset_images": len(samples),
        "images": measured.images,
        "batches": measured.batches,
        "window_batches": measured.window_batches,
        "images_per_sec": measured.images_per_sec.to_dict(),
        "overall_images_per_sec": measured.overall_images_per_sec,
        "first_batch_s": measured.first_batch_s.to_dict(),
        "windows_images_per_sec": list(measured.windows),
        "plan": [type(op).__name__ for op in feeder.plan.steps],
        **spec_provenance(train=config.feed.spec, spec_file=config.spec_file),
        "executor": feeder.executor,
        "workers_description": feeder.describe_workers(),
        "jpeg_decoder": feeder.capabilities.describe_decoder(),
        "literal_order": config.feed.literal_order,
        "reordered": feeder.plan.moved(),  # what --reorder moved (the picture then differs from the written order's)
        "decode_device": config.feed.decode_device,
        "on_bad": config.feed.on_bad,
        "skipped": [record.to_dict() for record in feeder.skipped],
        # The feeder's (worker counts that cannot pay) and the measurement's (a window lengthened).
        "notes": list(feeder.notes) + list(measured.notes)
        + ([f"the {config.feed.pipeline} pipeline has no stage timers (--stages: "
            f"{', '.join(name for name, b in BACKENDS.items() if b.stage_timers)})"]
           if config.stages and breakdown is None else []),
        "stages": breakdown.to_dict() if breakdown else None,
        "pil_build": info["machine"]["pil"],
        **info,
    }


def describe_plan(feeder, files: int = 64) -> str:
    """The plan for the data's own image sizes (the most common among ``files`` headers spread over
    the data set), and who runs it."""
    sizes = Counter(sampled_sizes(feeder.samples.paths, feeder.config.max_pixels, files))
    if not sizes:
        return feeder.plan.describe() + "\n" + describe_workers(feeder)
    (source, seen), *others = sizes.most_common()
    where = (f"the most common size of {sum(sizes.values())} files read ({seen} of them); "
             f"{len(others)} other size(s)" if others else f"all {seen} files read")
    return f"{feeder.plan.describe(source)}\n  (source {source[0]}x{source[1]}: {where})\n{describe_workers(feeder)}"


def describe_workers(feeder) -> str:
    """Who makes the batches, and which library decodes the JPEGs (what the planner chose)."""
    steps = feeder.describe_steps()
    return (f"workers: {feeder.describe_workers()}\nJPEG decoder: {feeder.capabilities.describe_decoder()}"
            + (f"\nruns: {steps}" if steps else ""))


def format_result(result: dict) -> str:
    """``run_bench``'s record as the table printed on the console (img/s, first batch in s)."""
    rate, first = result["images_per_sec"], result["first_batch_s"]
    size = "x".join(map(str, result["size"]))
    pil = result["pil_build"]
    lines = [
        f"data: {result['data']} ({result['layout']}, {result['dataset_images']} images)"
        + (f"; spec: {result['spec_file']}" if result.get("spec_file") else ""),
        f"PIL: {pil.get('distribution')} {pil.get('version')}"
        + (" (SIMD build)" if pil.get("simd") else " (not the SIMD build)"),
        f"plan: {' -> '.join(result['plan'])}" + (" (literal order)" if result["literal_order"] else "")
        + (f" (reordered: {', '.join(result['reordered'])})" if result.get("reordered") else "")
        + (f"; workers: {result['workers_description']}" if result.get("workers_description") else ""),
        "",
        f"{'pipeline':<15}{'workers':>8}{'batch':>7}{'size HxW':>10}{'img/s median':>14}{'min':>9}{'max':>9}"
        f"{'IQR':>8}{'1st batch s':>13}{'skipped':>9}",
        f"{result['pipeline']:<15}{result['workers']:>8}{result['batch']:>7}{size:>10}{rate['median']:>14.1f}"
        f"{rate['min']:>9.1f}{rate['max']:>9.1f}{rate['iqr']:>8.1f}{first['median']:>13.2f}{len(result['skipped']):>9}",
        f"({result['images']} images in {rate['n']} timed windows of {result['batches'] // rate['n']} batches: "
        f"{result['overall_images_per_sec']:.1f} img/s overall)",
    ]
    if result.get("stages"):
        from bench.stages import StageBreakdown, format_stages

        lines.append(format_stages(StageBreakdown(**result["stages"])))
    for record in result["skipped"]:
        lines.append(f"skipped: {record['path']}: {record['reason']}")
    return "\n".join(lines)
