"""Search training settings with Optuna on the tuned feed: python -m training.hpo --trials 20 --epochs-per-trial 3

TPE draws each trial's learning rate, weight decay, loss (cross-entropy with label smoothing, focal,
class-weighted), optimizer, augmentation strength (the spec's rotation, crop scale and colour
jitter) and, where --search lists several, the timm model. Each trial trains with training.fit's loop
on the feed feedbench tune recommended (--pipeline best), on the person-level split (or --folds K),
and reports validation macro-F1 after every epoch, so the pruner (median, or hyperband) stops bad
trials early. The study lives in OUT/study.db (SQLite): killed, it resumes with --resume without
repeating a finished trial; the trial that was running runs again. A trial that fails is recorded
with its error, and the study goes on. At the end: OUT/report.md (best trial, its training.fit
command line, every trial, Optuna's plots in OUT/plots) and OUT/summary.json.
"""
from __future__ import annotations

import argparse
import sys

from feeding.errors import FeedError, MissingDependencyError
from training.config import FIT_PIPELINES, ON_BAD, FitConfig
from training.hpo.config import DEFAULT_OUT, DEFAULT_STUDY, PRUNERS, STUDY_FILE, HpoConfig

EXIT_INTERRUPTED, EXIT_PREEMPTED = 130, 143


def get_args_parser() -> argparse.ArgumentParser:
    from feeding.options import HelpFormatter, add_spec_argument, positive_int

    d, f = HpoConfig(), FitConfig()
    p = argparse.ArgumentParser(prog="python -m training.hpo", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--trials", type=positive_int, default=d.trials,
                   help="trials the study ends with in all (complete, pruned or failed); a resumed study runs the "
                   "rest")
    p.add_argument("--timeout-s", type=float, help="start no new trial after this many seconds")
    p.add_argument("--epochs-per-trial", type=positive_int, default=d.fit.epochs, help="epochs each trial trains")
    p.add_argument("--search", metavar="FILE", help="the search space, YAML: parameter: {low, high[, log|step]}, "
                   "a list to choose from, or a fixed value (see README); default: lr, weight decay, optimizer, "
                   "loss, label smoothing, focal gamma, rotation, crop scale, jitter")
    p.add_argument("--pruner", default=d.pruner, choices=PRUNERS,
                   help="median: stop a trial whose epoch is below the median of the trials before at that epoch; "
                   "hyperband: Optuna's Hyperband over 1..epochs; none")
    p.add_argument("--folds", type=int, help="K: each trial trains K person-grouped folds, scored by their mean")
    p.add_argument("--pipeline", default=f.pipeline, choices=FIT_PIPELINES,
                   help="the feed every trial trains on; 'best' reads --recommendation (made by feedbench tune)")
    p.add_argument("--data", help="data set (as training.fit's --data); without it, the embedded sample")
    p.add_argument("--model", default=f.model, help="the model where the search does not choose one")
    p.add_argument("--batch", type=int, help="images per batch (overrides the recommendation)")
    p.add_argument("--workers", type=int, help="loader workers (overrides the recommendation)")
    p.add_argument("--size", help="N or HxW pixels (overrides the recommendation; else 224)")
    add_spec_argument(p, "the augmentation spec the search varies (its Rotate, RandomResizedCrop, ColorJitter); "
                      "default: crop, flip, rotate, jitter at --size")
    p.add_argument("--val-fraction", type=float, default=f.val_fraction, help="share of people held out")
    p.add_argument("--seed", type=int, default=f.seed, help="seeds the split, the feed, the model and the sampler")
    p.add_argument("--device", default=f.device, help="cpu or cuda[:N]")
    p.add_argument("--recommendation", default=f.recommendation, help="what --pipeline best reads")
    p.add_argument("--on-bad", default=f.on_bad, choices=ON_BAD, help="as training.fit's --on-bad")
    p.add_argument("--logger", default=",".join(f.loggers), metavar="NAME[,NAME]",
                   help="each trial's logs: tensorboard (OUT/trial-N/tb), wandb (a W&B run per trial, grouped "
                   "by study), or both")
    p.add_argument("--out", help=f"study directory; without it, {DEFAULT_OUT} or the next free {DEFAULT_OUT}-2, ...")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the study in --out (without it: the newest of {DEFAULT_OUT}*), with the same "
                   "--search and settings it was made with")
    p.add_argument("--storage", help=f"SQLite file or SQLAlchemy URL of the study; default OUT/{STUDY_FILE}")
    p.add_argument("--study-name", default=DEFAULT_STUDY, help="the study's name in the storage")
    return p


def config_from_args(args: argparse.Namespace, spec=None) -> HpoConfig:
    from feeding.checks import parse_size

    fit = FitConfig(pipeline=args.pipeline, data=args.data, model=args.model, epochs=args.epochs_per_trial,
                    batch=args.batch, workers=args.workers, size=parse_size(args.size) if args.size else None,
                    val_fraction=args.val_fraction, seed=args.seed, device=args.device,
                    recommendation=args.recommendation, on_bad=args.on_bad, spec=spec,
                    loggers=tuple(name.strip() for name in args.logger.split(",")))
    return HpoConfig(fit=fit, trials=args.trials, timeout_s=args.timeout_s, search=args.search, pruner=args.pruner,
                     folds=args.folds, out=args.out, resume=args.resume, storage=args.storage,
                     study_name=args.study_name)


def import_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise MissingDependencyError("training.hpo needs Optuna: pip install -e '.[hpo]'") from None


def interrupted_message(stop, argv: list[str]) -> str:
    """One line: what stopped the study, what the storage keeps, and the command that resumes it."""
    from training.runs import resume_command

    where = f" in trial {stop.trial} (it runs again on resume)" if stop.trial is not None else ""
    return (f"training.hpo: stopped by {stop.signal}{where}; {stop.storage} keeps {stop.finished} finished "
            f"trials (resume: {resume_command(argv, stop.out, 'training.hpo')})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_args_parser()
    args = parser.parse_args(argv)
    from feeding.options import spec_from_args
    from training.hpo.space import SearchSpaceError

    try:
        import_optuna()
        from training.hpo.study import StudyInterrupted, run_study

        run_study(config_from_args(args, spec_from_args(parser, argv, fixed=("size",))))
    except StudyInterrupted as stop:
        print(interrupted_message(stop, argv), file=sys.stderr)
        return EXIT_PREEMPTED if stop.signal == "SIGTERM" else EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("training.hpo: interrupted before the study started; no trial ran", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FeedError, MissingDependencyError, SearchSpaceError, ValueError) as error:
        print(f"training.hpo: error: {error}", file=sys.stderr)
        return 2
    return 0
