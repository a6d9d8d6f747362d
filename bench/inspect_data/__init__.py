"""``feedbench data inspect DIR``: what a data set holds, before any training run.

Class counts (and labels that look like typos), people or groups, image sizes
(height x width) with their outliers, exact-duplicate files (and the labels or
groups they disagree on), a thumbnail sheet per class, and the files and rows
that cannot be used; for the mask competition's layout also the mask, gender
and age ratios. Written as numbers (JSON with provenance), tables (Markdown)
and plots (PNG) under ``results/``: ``inspect-<name>-<n>img.md``, ``.json``
and ``-<plot>.png``.

Sizes, modes and formats come from the image headers only; one full-decode
validation scan (``feeding.scan``, cached) finds the files that do not decode.
Only files that share a byte size with another are hashed.

    feedbench data inspect DIR [--out results] [--workers 2] [--max-pixels N]
    python -m bench.inspect_data DIR [...]

Modules: ``labels`` (classes, typos, the competition's groups, people), ``files`` (headers, sizes,
bytes, outliers, duplicates, thumbnail picks), ``collect`` (the stats dict), ``advice`` (what to
do), ``plots``, ``report`` (Markdown, JSON, summary line), ``cli`` (the command line).
(Not ``bench.inspect``: a folder named like the standard library's ``inspect`` shadows it wherever
``bench/`` is on sys.path, as when ``python bench/cli.py`` runs.)
"""
from __future__ import annotations

from bench.inspect_data.advice import advice
from bench.inspect_data.cli import (
    DESCRIPTION, InspectConfig, add_arguments, config_from_args, inspect_main, make_parser, run_inspect)
from bench.inspect_data.collect import collect
from bench.inspect_data.plots import figures
from bench.inspect_data.report import render_markdown, report_tag, summary, write_report

__all__ = ["DESCRIPTION", "InspectConfig", "add_arguments", "advice", "collect", "config_from_args", "figures",
           "inspect_main", "make_parser", "render_markdown", "report_tag", "run_inspect", "summary", "write_report"]
