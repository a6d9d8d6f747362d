"""The ``feedbench`` command: run a pipeline and measure what it delivers.

    feedbench [run] --pipeline dali --batch 64 --workers 8 [--data DIR] [--size HxW | --spec FILE] [--json FILE]
    feedbench data sample DIR [--people N] [--seed S]
    feedbench data inspect DIR [--out results]

argparse only builds the frozen configs; the work is done by functions that
take those configs (bench.run, bench.compare, bench.tune, bench.inspect_data).
"""
from __future__ import annotations

import argparse
import sys

from bench.run import BenchConfig, format_result, run_bench
from feeding.backends import BACKENDS, PIPELINES
from feeding.errors import FeedError, MissingDependencyError
from feeding.feeder import EXECUTORS, ON_BAD, FeedConfig
from feeding.options import HelpFormatter, add_spec_argument, non_negative_int, positive_int, spec_from_args
from feeding.options import size as size_arg
from feeding.spec import train_spec
from feeding.spec_file import SpecFile

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
    add_spec_argument(parser)  # its train section is measured; it sets what --size and --rotate would
    parser.add_argument("--batches", type=positive_int, default=10, help="batches per timed window")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed windows")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="batches before timing")
    parser.add_argument("--on-bad", choices=ON_BAD, default="skip",
                        help="unreadable files and manifest rows that do not fit (a label typo): skip them and "
                        "report each, or fail naming the first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle and the random augmentations")
    parser.add_argument("--decode-device", default="cpu", help="cpu, or cuda[:N] for DALI's GPU decode")
    parser.add_argument("--literal-order", action="store_true",
                        help="run each op as its own step, in the written order (no fused warp)")
    parser.add_argument("--reorder", action="store_true",
                        help="let the planner run shrinking ops first (a rotation after a resize): cheaper step by "
                             "step, but a different picture (--show-plan says what moved)")
    parser.add_argument("--show-plan", action="store_true", help="print the planned op order and costs")
    parser.add_argument("--stages", action="store_true",
                        help="break the time down by stage (read, decode, augment, collate/IPC) and rerun "
                        "with the bytes in RAM to price storage "
                        f"({', '.join(name for name, backend in BACKENDS.items() if backend.stage_timers)})")
    parser.add_argument("--isolate", action="store_true", help="measure in a fresh process (no state from this one)")
    parser.add_argument("--json", dest="json_path", help="also write the result as JSON to this file (None: no file)")
    return parser


def make_data_parser() -> argparse.ArgumentParser:
    from bench import inspect_data  # matplotlib and the report: only for ``feedbench data``

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


def bench_config_from_args(args: argparse.Namespace, spec: SpecFile | None = None) -> BenchConfig:
    """The run that ``feedbench [run]``'s arguments ask for (ValueError where one is out of range);
    ``spec``: the ``--spec`` file, whose train section is measured instead of the benchmark spec."""
    feed = FeedConfig(
        pipeline=args.pipeline,
        batch_size=args.batch,
        workers=args.workers,
        executor=args.executor,
        spec=spec.train if spec else train_spec(args.size, degrees=args.rotate),
        seed=args.seed,
        on_bad=args.on_bad,
        literal_order=args.literal_order,
        reorder=args.reorder,
        decode_device=args.decode_device,
    )
    return BenchConfig(feed=feed, data=args.data, batches=args.batches, repeats=args.repeats,
                       warmup=args.warmup, json_path=args.json_path, show_plan=args.show_plan,
                       stages=args.stages, isolate=args.isolate, spec_file=spec.name if spec else None)


def run_main(argv: list[str]) -> int:
    """``feedbench [run] ARGS``; the exit code (2: bad input)."""
    parser = make_run_parser()
    args = parser.parse_args(argv)
    try:
        config = bench_config_from_args(args, spec_from_args(parser, argv, fixed=("size", "rotate")))
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
    """``feedbench data sample|inspect ARGS``; the exit code (2: bad input)."""
    args = make_data_parser().parse_args(argv)
    if args.action == "inspect":
        from bench.inspect_data import config_from_args, run_inspect

        return run_inspect(config_from_args(args))
    from feeding.sample import write_sample

    out = write_sample(args.dir, people=args.people, seed=args.seed, eval_people=args.eval_people)
    print(f"wrote the sample data set to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The console script: ``feedbench [run|tune|compare|data] ARGS``; the exit code."""
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
