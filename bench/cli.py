"""The ``feedbench`` command: run a pipeline and measure what it delivers.

    feedbench [run] --pipeline dali --batch 64 --workers 8 [--data DIR] [--size HxW] [--json FILE]
    feedbench data sample DIR [--people N] [--seed S]
    feedbench data inspect DIR [--out results]

argparse only builds the frozen configs; the work is done by functions that
take those configs.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from feeding.options import HelpFormatter, non_negative_int, positive_int
from feeding.options import size as size_arg
from feeding.backends import BACKENDS
from feeding.errors import FeedError, MissingDependencyError
from feeding.backends import PIPELINES
from feeding.feeder import EXECUTORS, ON_BAD, FeedConfig
from feeding.spec import train_spec


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
    stages: bool = False  # stage breakdown + RAM differential (pil, albumentations)
    isolate: bool = False  # measure in a fresh interpreter

    def __post_init__(self) -> None:
        if self.batches < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError("--batches and --repeats must be >= 1 and --warmup >= 0")


COMMANDS = """\
commands (each has its own --help):
  feedbench [run] [OPTIONS]     measure the images/sec one pipeline delivers (the options below)
  feedbench tune [OPTIONS]      recommend pipeline, workers, batch and image shape from feed against consumption
  feedbench compare [OPTIONS]   a pipeline against naive torchvision and the decode-only limit
  feedbench data sample DIR     write the synthetic mask-competition data set into DIR
  feedbench data inspect DIR    report on a data set: classes, label typos, sizes (HxW), outliers, duplicates"""


def make_run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedbench",
        description=f"Measure the images/sec an image pipeline delivers.\n\n{COMMANDS}",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--pipeline", choices=PIPELINES, default="pil",
                        help="who decodes and augments: PIL, albumentations (OpenCV), DALI, or Ray Data")
    parser.add_argument("--batch", type=positive_int, default=64, help="images per batch")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="DataLoader workers (pil, albumentations), DALI CPU threads or Ray Data actors (ray; "
                        "RAY_ADDRESS joins a cluster, else Ray runs locally)")
    parser.add_argument("--executor", choices=EXECUTORS, default="auto",
                        help="who makes the host pipelines' batches: worker processes or threads (auto: threads "
                        "where decode and augment release the GIL)")
    parser.add_argument("--data", help="competition layout, ImageFolder, or CSV manifest; None: the sample data "
                        "set (generated once into the cache)")
    # A string default goes through size_arg like typed text, so the help shows "224", not a tuple.
    parser.add_argument("--size", type=size_arg, default="224", help="output size N, or HxW (height x width)")
    parser.add_argument("--rotate", type=float, default=10.0, help="rotate by up to +-this many degrees")
    parser.add_argument("--batches", type=positive_int, default=10, help="batches per timed window")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed windows")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="batches before timing")
    parser.add_argument("--on-bad", choices=ON_BAD, default="skip",
                        help="unreadable files and manifest rows that do not fit (a label typo): skip them and "
                        "report each, or fail naming the first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle and the random augmentations")
    parser.add_argument("--decode-device", default="cpu", help="cpu, or cuda[:N] for DALI's GPU decode")
    parser.add_argument("--literal-order", action="store_true", help="run ops in the written order (no planner)")
    parser.add_argument("--show-plan", action="store_true", help="print the planned op order and costs")
    parser.add_argument("--stages", action="store_true",
                        help="break the time down by stage (read, decode, augment, collate/IPC) and rerun "
                        "with the bytes in RAM to price storage (pil, albumentations)")
    parser.add_argument("--isolate", action="store_true", help="measure in a fresh process (no state from this one)")
    parser.add_argument("--json", dest="json_path", help="also write the result as JSON to this file (None: no file)")
    return parser


def make_data_parser() -> argparse.ArgumentParser:
    from bench import inspect_data

    parser = argparse.ArgumentParser(prog="feedbench data", formatter_class=HelpFormatter,
                                     description="Data sets: write the sample, or inspect one before training.")
    sub = parser.add_subparsers(dest="action", required=True)
    sample = sub.add_parser("sample", help="write the synthetic mask-competition data set",
                            description="Write the synthetic mask-competition data set (train/ and eval/).",
                            formatter_class=HelpFormatter)
    sample.add_argument("dir", help="folder to write the data set into")
    sample.add_argument("--people", type=positive_int, default=60, help="people in train/ (7 photos each)")
    sample.add_argument("--seed", type=non_negative_int, default=0, help="seed of the generated people and photos "
                        "(the same seed gives byte-identical files)")
    sample.add_argument("--eval-people", type=non_negative_int, default=12,
                        help="held-out people in eval/ (their answers in eval/answers.csv)")
    inspect = sub.add_parser("inspect", help="report on a data set: classes, label typos, sizes (HxW), outliers, "
                             "duplicates, unreadable files", description=inspect_data.DESCRIPTION,
                             formatter_class=HelpFormatter)
    inspect_data.add_arguments(inspect)
    return parser


def bench_config_from_args(args: argparse.Namespace) -> BenchConfig:
    feed = FeedConfig(
        pipeline=args.pipeline,
        batch_size=args.batch,
        workers=args.workers,
        executor=args.executor,
        spec=train_spec(args.size, degrees=args.rotate),
        seed=args.seed,
        on_bad=args.on_bad,
        literal_order=args.literal_order,
        decode_device=args.decode_device,
    )
    return BenchConfig(feed=feed, data=args.data, batches=args.batches, repeats=args.repeats,
                       warmup=args.warmup, json_path=args.json_path, show_plan=args.show_plan,
                       stages=args.stages, isolate=args.isolate)


def run_bench(config: BenchConfig) -> dict:
    """Build the feeder, measure it, and return the result record."""
    from bench.measure import measure_feeder
    from bench.provenance import provenance
    from feeding.io import display_path
    from feeding.sample import resolve_data
    from feeding.factory import create_feeder
    from feeding.sources import discover

    root = resolve_data(config.data)
    samples = discover(root, on_bad=config.feed.on_bad)  # a manifest typo: an error naming the row, or a skip
    feeder = create_feeder(samples, config.feed)
    if config.show_plan:
        print(describe_plan(feeder))
    sync = _cuda_sync if config.feed.decode_device != "cpu" else (lambda: None)
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
        "executor": feeder.executor,
        "workers_description": feeder.describe_workers(),
        "jpeg_decoder": feeder.capabilities.describe_decoder(),
        "literal_order": config.feed.literal_order,
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
    from collections import Counter

    from feeding.decode import sampled_sizes

    sizes = Counter(sampled_sizes(feeder.samples.paths, feeder.config.max_pixels, files))
    if not sizes:
        return feeder.plan.describe() + "\n" + describe_workers(feeder)
    (source, seen), *others = sizes.most_common()
    where = (f"the most common size of {sum(sizes.values())} files read ({seen} of them); "
             f"{len(others)} other size(s)" if others else f"all {seen} files read")
    return f"{feeder.plan.describe(source)}\n  (source {source[0]}x{source[1]}: {where})\n{describe_workers(feeder)}"


def describe_workers(feeder) -> str:
    """Who makes the batches, and which library decodes the JPEGs (what the planner chose)."""
    return f"workers: {feeder.describe_workers()}\nJPEG decoder: {feeder.capabilities.describe_decoder()}"


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


def format_result(result: dict) -> str:
    rate, first = result["images_per_sec"], result["first_batch_s"]
    size = "x".join(map(str, result["size"]))
    pil = result["pil_build"]
    lines = [
        f"data: {result['data']} ({result['layout']}, {result['dataset_images']} images)",
        f"PIL: {pil.get('distribution')} {pil.get('version')}"
        + (" (SIMD build)" if pil.get("simd") else " (not the SIMD build)"),
        f"plan: {' -> '.join(result['plan'])}" + (" (literal order)" if result["literal_order"] else "")
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


def run_main(argv: list[str]) -> int:
    args = make_run_parser().parse_args(argv)
    try:
        config = bench_config_from_args(args)
        if config.isolate:
            from bench.isolate import in_fresh_process

            result = in_fresh_process(run_bench, config)
        else:
            result = run_bench(config)
    except (FeedError, MissingDependencyError, ValueError) as error:
        print(f"feedbench: error: {error}", file=sys.stderr)
        return 2
    for note in result["notes"]:  # on stderr and before the result, where they are not missed
        print(f"warning: {note}", file=sys.stderr)
    print(format_result(result))
    if config.json_path:
        from feeding.io import write_json

        print(f"wrote {write_json(config.json_path, result)}")
    return 0


def data_main(argv: list[str]) -> int:
    args = make_data_parser().parse_args(argv)
    if args.action == "inspect":
        from bench.inspect_data import config_from_args, run_inspect

        return run_inspect(config_from_args(args))
    from feeding.sample import write_sample

    out = write_sample(args.dir, people=args.people, seed=args.seed, eval_people=args.eval_people)
    print(f"wrote the sample data set to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        return data_main(argv[1:])
    if argv and argv[0] == "tune":
        from bench.tune import tune_main

        return tune_main(argv[1:])
    if argv and argv[0] == "compare":
        from bench.compare import compare_main

        return compare_main(argv[1:])
    if argv and argv[0] == "run":
        return run_main(argv[1:])
    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main())
