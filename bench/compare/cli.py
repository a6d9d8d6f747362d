"""``feedbench compare``'s command line: the parser, the config it builds, and the exit codes."""
from __future__ import annotations

import argparse
import os
import sys

from bench.compare.config import ROW_NAMES, CompareConfig, CompareError, Settings
from bench.compare.reporting import compare_markdown, write_outputs
from bench.compare.run import run_compare
from bench.provenance import display_command
from feeding.errors import FeedError, MissingDependencyError
from feeding.options import FlattenList, HelpFormatter, add_spec_argument, listed, spec_from_args, whole_number
from feeding.options import size as size_arg
from feeding.spec_file import SpecFile

DESCRIPTION = """\
Every pipeline, each at its best worker count, on the same files: the naive torchvision loader
a typical user writes, the feedbench pipelines (pil, albumentations, dali on the CPU), this
machine's decode-only limit, and your own --loader. Writes a Markdown table, a chart and a JSON
to --out.

Unreadable files are skipped and counted in each row; a row that fails is reported as failed
and the other rows are kept.
Exit codes: 0 every row measured; 1 some row failed (the report is still written); 2 bad input;
130 interrupted (the rows measured so far are written)."""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedbench compare", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--data", help="competition layout, ImageFolder, or CSV manifest; "
                        "without it, the embedded sample")
    parser.add_argument("--workers-max", type=whole_number, default=2 * (os.cpu_count() or 1),
                        help="sweep workers 1..N (by default 2 x this machine's cores)")
    parser.add_argument("--batch", type=whole_number, default=64, help="images per batch")
    parser.add_argument("--size", type=size_arg, default="224", help="output size N or HxW")
    parser.add_argument("--rotate", type=float, default=10.0, help="rotate by up to ± this many degrees")
    add_spec_argument(parser)  # every row runs its train section; it sets what --size and --rotate would
    parser.add_argument("--batches", type=whole_number, default=10, help="batches per timed window")
    parser.add_argument("--repeats", type=whole_number, default=3, help="timed windows per sweep point")
    parser.add_argument("--warmup", type=whole_number, default=2, help="batches before timing")
    parser.add_argument("--rounds", type=whole_number, default=5,
                        help="paired rounds over the rows' best points after the sweep")
    parser.add_argument("--loader", action="append", metavar="MODULE:FACTORY",
                        help="also measure your loader: factory() returns a DataLoader, an iterable of "
                        "(images, labels) batches, or a Dataset (swept in a DataLoader); repeatable")
    parser.add_argument("--out", default="results", help="directory for the .md, .png and .json")
    # A string default goes through ``type`` too: the help shows it as it is typed.
    parser.add_argument("--pipelines", nargs="+", type=listed(str), action=FlattenList, default=",".join(ROW_NAMES),
                        metavar="NAME", help="rows to measure, names between commas or spaces")
    return parser


def config_from_args(args: argparse.Namespace, spec: SpecFile | None = None) -> CompareConfig:
    """The run ``args`` ask for (``spec``: the ``--spec`` file, loaded); CompareError naming the option
    where one is out of range."""
    try:
        settings = Settings(args.batches, args.repeats, args.warmup, args.rounds)
        return CompareConfig(data=args.data, workers_max=args.workers_max, batch=args.batch, size=args.size,
                             degrees=args.rotate, settings=settings, pipelines=tuple(args.pipelines),
                             loaders=tuple(args.loader or ()), out=args.out, spec=spec)
    except ValueError as error:
        raise CompareError(str(error)) from None


def compare_main(argv: list[str]) -> int:
    """``feedbench compare ARGS``; returns the exit code (1: a row failed, 2: bad input, 130: interrupted)."""
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage and the reason (or --help)
        return int(exit_.code or 0)
    command = display_command("feedbench compare", argv)
    try:
        config = config_from_args(args, spec_from_args(parser, argv, fixed=("size", "rotate")))
        report, interrupted = run_compare(config, command)
    except (FeedError, MissingDependencyError, ValueError) as error:  # CompareError is a ValueError
        print(f"feedbench compare: error: {error}", file=sys.stderr)
        return 2
    written = write_outputs(report, config)
    print(compare_markdown(report))
    print("wrote " + ", ".join(map(str, written)))
    if interrupted:
        print(f"feedbench compare: interrupted; wrote the {len(report['rows'])} row(s) measured so far",
              file=sys.stderr)
        return 130
    failed = [row for row in report["rows"] if row["failed"]]
    for row in failed:
        print(f"feedbench compare: {row['name']} failed: {row['failed']}", file=sys.stderr)
    return 1 if failed else 0
