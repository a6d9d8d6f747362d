"""``feedbench data inspect DIR``'s command line: its options, the frozen config they build, the run."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.inspect_data.collect import collect
from bench.inspect_data.report import report_tag, summary, write_report
from feeding import checks
from feeding.errors import FeedError
from feeding.feeder import DEFAULT_MAX_PIXELS
from feeding.options import HelpFormatter, non_negative_int, positive_int
from feeding.sources import discover


DESCRIPTION = """\
What a data set holds, before any training run: class counts and labels that
look like typos, people or groups, image sizes (height x width) and their
outliers, exact-duplicate files, a thumbnail sheet per class, and the files
and rows that cannot be used; as Markdown, PNG plots and JSON."""


@dataclass(frozen=True)
class InspectConfig:
    """One ``feedbench data inspect`` run."""

    data: str  # competition layout, ImageFolder, or CSV manifest
    out: Path = Path("results")
    workers: int = 2  # processes for the validation decode (0: in this process)
    max_pixels: int = DEFAULT_MAX_PIXELS  # images with more pixels are refused

    def __post_init__(self) -> None:
        checks.count("workers", self.workers, minimum=0)
        checks.count("max_pixels", self.max_pixels)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``data inspect``, on a parser of its own or on the ``feedbench data`` sub-parser."""
    parser.add_argument("dir", help="competition layout, ImageFolder, or CSV manifest")
    parser.add_argument("--out", type=Path, default=Path("results"), help="report folder")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="processes for the validation decode (0: in this process)")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels than this (height x width)")
    return parser


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedbench data inspect", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    return add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> InspectConfig:
    """The run that ``add_arguments``'s options ask for."""
    return InspectConfig(data=args.dir, out=args.out, workers=args.workers, max_pixels=args.max_pixels)


def run_inspect(config: InspectConfig) -> int:
    """Inspect, write the report and print where; 2 (with a one-line error) on bad input."""
    try:
        # "skip": a bad row is left out and reported (under 'Listing problems'), not the end of the report.
        samples = discover(config.data, on_bad="skip")
        stats = collect(samples, config.max_pixels, config.workers)
        written = write_report(stats, config.out, report_tag(stats))
    except (FeedError, ValueError) as error:
        print(f"feedbench data inspect: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"feedbench data inspect: error: cannot write the report to {config.out}: {error}", file=sys.stderr)
        return 2
    print(summary(stats))
    for path in written:
        print(f"wrote {path}")
    return 0


def inspect_main(argv: list[str]) -> int:
    """``feedbench data inspect DIR [--out results] [--workers 2] [--max-pixels N]``; 2 on bad input."""
    return run_inspect(config_from_args(make_parser().parse_args(argv)))
