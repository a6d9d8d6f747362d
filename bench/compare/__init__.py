"""``feedbench compare``: every pipeline, each at its best worker count, on the same files.

    feedbench compare [--data DIR] [--workers-max N] [--batch 64] [--size 224 | --spec FILE] [--batches N]
                      [--repeats R] [--rounds R] [--loader module:factory] [--out results]
                      [--pipelines ...]

Rows, all measured in one process with the same spec (rotate ±10°, resize, flip; or the train
section of ``--spec FILE``, which the naive row builds from torchvision transforms):

- ``naive``: the reference, what a typical user writes (``NaiveTorchvisionDataset`` in a
  plain DataLoader): torchvision transforms on PIL images, float tensors normalized on the CPU.
- ``pil``, ``albumentations``, ``dali``: the feedbench pipelines (DALI on the CPU; its
  "workers" are DALI threads).
- ``decode-only``: full-resolution decode and nothing else, with the fastest decoder the
  CPU pipelines have (libjpeg-turbo through simplejpeg for JPEGs), in worker processes and in
  worker threads: the better of the two is this machine's limit for these files.
- ``--loader module:factory``: the user's own loader, measured as it is.

A user's own data has bad files: every row skips the files it cannot read (the naive row
as a user's try/except does: the next file instead) and states how many; the notes name
each skipped file once. A row whose loader raises is reported as failed, with its error,
and the other rows are measured and compared without it (exit code 1).

Each row sweeps workers 1..--workers-max (the feedbench rows with the executor the planner
picks, decode-only with both) to find its best point; every sweep point goes to the JSON.
Then ``--rounds`` rounds measure every row's best point once each, in turn (the order
rotated each round), so that all rows share the machine's slow and fast spells: a row's
rate is its median over the rounds, and each ratio is the median of the per-round ratios.
On a shared 2-core VM single windows vary by ±20%; rows measured minutes apart can be
off from each other by as much, paired rounds are not.
A plain DataLoader is timed by ``measure_feeder`` through
``bench.measure.as_feeder``, so every row has the same warm-up, first-batch and window rules.

Modules: ``config`` (the rows, the settings, the frozen config), ``reference`` (the naive loader
and the decode-only limit), ``rows`` (how each row is built, ``--loader`` included),
``measuring`` (sweep, paired rounds), ``reporting`` (ratios, JSON, Markdown, chart), ``run``
(one run), ``cli`` (the command line).
"""
from __future__ import annotations

from bench.compare.cli import DESCRIPTION, compare_main, config_from_args, make_parser
from bench.compare.config import (
    DECODE_ONLY, FEEDBENCH_CPU, KINDS, NAIVE, ROW_NAMES, CompareConfig, CompareError, Settings)
from bench.compare.measuring import Row, SweepPoint, measure_point, measure_rows, paired_rounds, sweep
from bench.compare.reference import (
    DECODE_ONLY_SPEC, DecodeOnlyTransform, NaiveTorchvisionDataset, decode_only_feeder, plain_loader)
from bench.compare.reporting import build_report, chart_png, compare_markdown, headline, ratio, write_outputs
from bench.compare.rows import LoaderMaker, RowSpec, builtin_rows, resolve_factory, user_row
from bench.compare.run import run_compare

__all__ = [
    "DECODE_ONLY", "DECODE_ONLY_SPEC", "DESCRIPTION", "FEEDBENCH_CPU", "KINDS", "NAIVE", "ROW_NAMES", "CompareConfig",
    "CompareError", "DecodeOnlyTransform", "LoaderMaker", "NaiveTorchvisionDataset", "Row", "RowSpec", "Settings",
    "SweepPoint", "build_report", "builtin_rows", "chart_png", "compare_main", "compare_markdown",
    "config_from_args", "decode_only_feeder", "headline", "make_parser", "measure_point", "measure_rows",
    "paired_rounds", "plain_loader", "ratio", "resolve_factory", "run_compare", "sweep", "user_row",
    "write_outputs",
]
