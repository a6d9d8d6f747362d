"""``feedbench tune``: pick pipeline, workers, batch and image shape from feed against consumption.

The question before a long GPU run: will the loader keep up with the model,
and which settings make the most of both? Predicted training rate is
min(feed, consume); on the CPU the loader's workers and the model share the
cores, so the model gets the threads the workers leave free.

The package, one idea a module (each imports only those above it):

* ``config``: TuneConfig, the run's settings, validated when built;
* ``forecast``: a Setup (pipeline, workers, batch, shape), the throughput forecast
  from its measured feed and consumption, and the sentence that explains what bounds it;
* ``measure``: the Measurer (each feed and consume point once, inside the budget),
  the pick at every shape, the end-to-end check and the loader's slowest stage;
* ``search``: the worker climb, the exhaustive grid, the ranking and the grid check;
* ``run``: one tuning run, from the data to the record (or, after a Ctrl-C, the partial record);
* ``report``: the record as JSON, Markdown, a plot and stdout;
* ``cli``: the command line.

This module is the facade: import from ``bench.tune``.
"""
from bench.tune.cli import config_from_args, make_parser, tune_main
from bench.tune.config import TuneConfig
from bench.tune.forecast import Prediction, Setup, explain_bottleneck, forecast, wait_fraction, workers_phrase
from bench.tune.measure import BudgetExceeded, Measurer
from bench.tune.report import recommendation_markdown, ray_scale_lines, summary_lines, write_reports
from bench.tune.run import TuneInterrupted, compare_with_tuner, ray_nodes, tune
from bench.tune.search import SearchLog, dropped_pipelines, grid_check, rank

__all__ = [
    "BudgetExceeded", "Measurer", "Prediction", "SearchLog", "Setup", "TuneConfig", "TuneInterrupted",
    "compare_with_tuner",
    "config_from_args", "dropped_pipelines", "explain_bottleneck", "forecast", "grid_check", "make_parser",
    "ray_nodes", "ray_scale_lines", "rank", "recommendation_markdown", "summary_lines", "tune", "tune_main",
    "wait_fraction", "workers_phrase", "write_reports",
]
