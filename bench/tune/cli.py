"""``feedbench tune``: pick pipeline, workers, batch and image shape from feed against consumption.

The command line only: ``make_parser`` builds the options, ``config_from_args`` turns them
into a TuneConfig (which validates them), ``tune_main`` runs and reports (``EXIT_CODES``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.tune.config import DEFAULT_SIZES, ON_BAD, TuneConfig
from bench.tune.report import recommendation_path, summary_lines, write_reports
from bench.tune.run import TuneInterrupted, tune
from feeding.backends import PIPELINES
from feeding.errors import FeedError, MissingDependencyError
from feeding.options import spec_from_args
from feeding.spec_file import SpecFile
from training.step import OPTIMIZERS, StepConfig

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C (feedbench compare and training.fit too)

EXIT_CODES = """\
exit codes: 0 done; 2 bad input; 130 interrupted (Ctrl-C): what was measured so far is
written as a partial report (tune-...-partial.json and .md), and no recommendation.json."""


def make_parser() -> argparse.ArgumentParser:
    from feeding.options import FlattenList, HelpFormatter, add_spec_argument, listed, plain_text, positive_int, size

    d = TuneConfig
    parser = argparse.ArgumentParser(prog="feedbench tune", description=plain_text(__doc__.split("\n\n")[0]),
                                     epilog=EXIT_CODES, formatter_class=HelpFormatter)
    parser.add_argument("--data", help="data set: an ImageFolder, a CSV manifest or the competition layout "
                        "(none given: the generated sample)")
    parser.add_argument("--model", default=d.model, help="timm model name or module:factory")
    parser.add_argument("--device", default=d.device,
                        help="cpu, cuda[:N], or sim:R: a simulated accelerator that trains R img/s at 224x224 "
                        "(would this host feed such a GPU?)")
    parser.add_argument("--sizes", nargs="+", type=listed(size), action=FlattenList,
                        default=",".join(f"{h}" if h == w else f"{h}x{w}" for h, w in DEFAULT_SIZES),
                        help="candidate shapes (pixels; N or HxW), by commas or spaces: the largest the feed "
                        "keeps up with is picked (with --spec: the spec's output size alone)")
    add_spec_argument(parser)  # every measured feed runs its train section, at its output size
    parser.add_argument("--budget-s", type=float, default=d.budget_s, help="time for the search (seconds)")
    parser.add_argument("--pipelines", nargs="+", type=listed(str), action=FlattenList,
                        help="pipelines to tune, by commas or spaces (none given: pil, albumentations, dali, "
                        "and ray when RAY_ADDRESS answers)")
    parser.add_argument("--workers-max", type=positive_int, default=2 * (os.cpu_count() or 1),
                        help="most loader workers (DALI: threads) tried per rank; capped at twice its cores")
    parser.add_argument("--batches", nargs="+", type=listed(positive_int), action=FlattenList,
                        help="candidate batch sizes, by commas or spaces (none given: 32 on the CPU; "
                        "64,128,256 on a GPU, where those that do not fit are dropped)")
    parser.add_argument("--e2e-batches", type=positive_int, default=d.e2e_batches,
                        help="batches in the end-to-end check (at least)")
    parser.add_argument("--e2e-min-s", type=float, default=d.e2e_min_s,
                        help="seconds of end-to-end check (at least)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="measure the full grid (slow), and compare the tuner's pick with the grid's best")
    parser.add_argument("--isolate", action="store_true",
                        help="run each measurement in a fresh process (a few seconds more each)")
    parser.add_argument("--ranks", type=positive_int, default=d.ranks,
                        help="training processes on this host (torchrun --nproc-per-node): each rank gets "
                        "its share of the cores for workers and model threads")
    parser.add_argument("--on-bad", choices=ON_BAD, default=d.on_bad,
                        help="a listing row or image that cannot be read: skip it (and list it in the report) "
                        "or stop with an error naming it")
    parser.add_argument("--checked", type=positive_int, default=d.checked,
                        help="the best predicted setups checked end to end with the real training loop; the "
                        "fastest measured is the pick")
    step = parser.add_argument_group("the training step measured (what training.fit --pipeline best runs)")
    step.add_argument("--opt", choices=OPTIMIZERS, default=StepConfig.optimizer, help="optimizer")
    step.add_argument("--amp", action=argparse.BooleanOptionalAction,
                      help="bfloat16 autocast (default: on CUDA, off elsewhere)")
    step.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                      help="channels_last memory format (default: on CUDA, off elsewhere)")
    step.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction,
                      help="cuDNN's autotuner (default: on CUDA)")
    step.add_argument("--accum-steps", type=positive_int, default=StepConfig.accum_steps,
                      help="batches per optimizer update")
    step.add_argument("--loss-every", type=positive_int, default=StepConfig.loss_every,
                      help="read the loss back to the host every N batches (each read waits for the device)")
    parser.add_argument("--out", default=d.out, help="folder for the reports and recommendation.json")
    return parser


def step_from_args(args: argparse.Namespace) -> StepConfig:
    """The step tune measures: the device's defaults, with the flags given."""
    return StepConfig.for_device(args.device, optimizer=args.opt, amp=args.amp, channels_last=args.channels_last,
                                 cudnn_benchmark=args.cudnn_benchmark, accum_steps=args.accum_steps,
                                 loss_every=args.loss_every)


def config_from_args(args: argparse.Namespace, spec: SpecFile | None = None) -> TuneConfig:
    """The run ``args`` ask for; ``spec``: the ``--spec`` file, loaded (it fixes the shape: ``--sizes``
    is then left to it)."""
    if args.pipelines is None:
        from bench.ray_scale import ray_candidate

        pipelines = ray_candidate(PIPELINES)
    else:
        pipelines = tuple(dict.fromkeys(args.pipelines))  # a pipeline named twice is tuned once
    return TuneConfig(
        data=args.data, model=args.model, device=args.device,
        sizes=None if spec is not None else tuple(dict.fromkeys(args.sizes)), spec=spec,
        budget_s=args.budget_s, pipelines=pipelines, workers_max=args.workers_max,
        batches=tuple(dict.fromkeys(args.batches)) if args.batches else None,
        e2e_batches=args.e2e_batches, e2e_min_s=args.e2e_min_s, exhaustive=args.exhaustive, isolate=args.isolate,
        out=args.out, ranks=args.ranks, on_bad=args.on_bad, step=step_from_args(args), checked=args.checked,
    )


def tune_main(argv: list[str]) -> int:
    """``feedbench tune ARGS``; the exit code (``EXIT_CODES``)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, spec_from_args(parser, argv, fixed=("sizes",)))
        record = tune(config)
    except TuneInterrupted as stop:  # the feeders are closed by now: no worker is left behind
        record = stop.record
    except KeyboardInterrupt:  # before the first measurement, or again while the partial record was made
        print("feedbench tune: interrupted; no report written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FeedError, MissingDependencyError, ValueError) as error:
        print(f"feedbench tune: error: {error}", file=sys.stderr)
        return 2
    from bench.provenance import display_command

    command = display_command("feedbench tune", argv)
    out = Path(config.out)
    try:
        written = write_reports(record, out, command)
    except KeyboardInterrupt:  # a second Ctrl-C: every write is atomic (feeding.io.write_atomic)
        print(f"feedbench tune: interrupted while writing the reports; each file in {out} is whole or not written",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    for path in written:
        print(f"wrote {path}")
    for line in summary_lines(record, recommendation_path(record, out)):
        print(line)
    if record.get("partial"):
        print(f"feedbench tune: {record['interrupted']['note']}; no recommendation: rerun for one", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
