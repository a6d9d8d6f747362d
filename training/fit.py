"""Train an image classifier on a feed: python -m training.fit --pipeline best|pil|albumentations|dali

Every epoch reports validation macro-F1 (the headline), accuracy, the data-wait fraction and the
measured img/s against the tuner's prediction; at the end, whether the prediction held, and every
file or listing row that was skipped. --pipeline best trains with the feed and the training step
(bf16, channels_last, cudnn.benchmark, loss read-back) the tuner measured; a setting given that
differs from them is noted, and the prediction is then not compared. Writes best.pt/last.pt,
TensorBoard logs (tb/; with --logger tensorboard,wandb also a W&B run, in wandb/), confusion-matrix
PNGs and summary.json under the run directory: --out, else runs/fit or the next free runs/fit-2,
runs/fit-3, ... A directory that holds a run is never written over: --resume continues it exactly
from last.pt (with --epochs beyond its plan, the schedule is extended). Ctrl-C stops cleanly, exit
status 130, and says how to resume.
"""
from __future__ import annotations

import argparse
import sys

from feeding.errors import FeedError, MissingDependencyError
from feeding.spec_file import SpecFile
from training.config import DEFAULT_OUT, FIT_PIPELINES, LOSSES, ON_BAD, OPTIMIZERS, SCHEDULERS, FitConfig
from training.runs import (
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    RunInterrupted,
    RunPreempted,
    choose_run_dir,
    interrupted_message,
    preempted_message,
)


def get_args_parser() -> argparse.ArgumentParser:
    from feeding.options import HelpFormatter, add_spec_argument

    d = FitConfig()
    p = argparse.ArgumentParser(prog="python -m training.fit", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pipeline", default=d.pipeline, choices=FIT_PIPELINES,
                   help="feed; 'best' reads --recommendation (made by feedbench tune)")
    p.add_argument("--data", help="data set: a directory (competition or ImageFolder layout) or a CSV manifest; "
                   "without it, the embedded sample")
    p.add_argument("--model", default=d.model, help="timm model name or package.module:factory")
    p.add_argument("--pretrained-file", help="local weights for the timm model (.pt/.pth or .safetensors; nothing "
                   "is downloaded): the tensors that fit by name and shape are loaded")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="epochs to train in all (with --resume: beyond those done, the schedule stretched to them)")
    p.add_argument("--batch", type=int, help="images per batch (overrides the recommendation; else 32)")
    p.add_argument("--workers", type=int, help="loader workers (overrides the recommendation; else 2)")
    p.add_argument("--size", help="N or HxW pixels (overrides the recommendation; else 224)")
    add_spec_argument(p)  # training feed: its train section; validation feed: its eval section; it sets --size
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate, per optimizer update")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="the optimizer's weight decay")
    p.add_argument("--opt", default=d.optimizer, choices=OPTIMIZERS, help="optimizer (timm's create_optimizer_v2)")
    p.add_argument("--sched", default=d.scheduler, choices=SCHEDULERS,
                   help="lr schedule: cosine to 0 and step (10x down each third) stepped per update; plateau "
                   "10x down after 2 validations without a better macro-F1")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help="epochs of linear warm-up, stepped per optimizer update")
    p.add_argument("--loss", default=d.loss, choices=LOSSES,
                   help="cross-entropy, focal, or cross-entropy weighted by inverse class frequency")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help="share of each target spread over all classes (ce and weighted_ce)")
    p.add_argument("--focal-gamma", type=float, default=d.focal_gamma,
                   help="focal loss exponent (0: cross-entropy)")
    add_step_arguments(p, d)
    p.add_argument("--freeze-backbone", action="store_true", help="train the classifier head only")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of people held out")
    p.add_argument("--balanced", action="store_true",
                   help="class-balanced sampling: rare classes oversampled (with replacement) to equal shares")
    p.add_argument("--folds", type=int, help="K: train one model per person-grouped stratified fold "
                   "(OUT/fold0..K-1), for a K-fold ensemble (python -m training.predict)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split, the feed and the model")
    p.add_argument("--out", default=d.out, help=f"run directory: checkpoints, logs, plots; without it, {DEFAULT_OUT} "
                   f"or the next free {DEFAULT_OUT}-2, {DEFAULT_OUT}-3, ... (a directory that holds a run is "
                   "refused without --resume)")
    p.add_argument("--early-stop-patience", type=int, help="epochs without a better macro-F1 before stopping")
    p.add_argument("--resume", action="store_true",
                   help=f"continue from OUT/last.pt; without --out, the newest run of {DEFAULT_OUT}*")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="also write OUT/last.pt every N optimizer updates, inside epochs (with each rank's RNG and "
                   "feeder state): a kill loses at most N updates, and --resume continues at the update it holds, "
                   "with the same result as a run never stopped; without it, at each epoch's end (and at the "
                   "next update after a SIGTERM, which then exits 143)")
    p.add_argument("--logger", default=",".join(d.loggers), metavar="NAME[,NAME]",
                   help="where the scalars, the lr of every update, the grid of fed images and the confusion "
                   "matrix go: tensorboard (OUT/tb), wandb (a W&B run under OUT; needs feedbench[wandb], and "
                   "`wandb login` or WANDB_MODE=offline), or both, comma-separated")
    p.add_argument("--device", default=d.device, help="cpu or cuda[:N]")
    p.add_argument("--recommendation", default=d.recommendation, help="what --pipeline best reads")
    p.add_argument("--on-bad", default=d.on_bad, choices=ON_BAD,
                   help="a file that cannot be read, or a listing row that cannot be used: skip (left out, "
                   "reported on the console and in summary.json) or fail (an error naming it)")
    return p


def add_step_arguments(p: argparse.ArgumentParser, d: FitConfig) -> None:
    """How each training step runs (training.step.StepConfig). The switches left unset take the
    recommendation's step under --pipeline best, else the device's defaults (on for CUDA)."""
    from feeding.options import positive_int

    unset = "without it: the recommendation's (--pipeline best), else on for CUDA, off on the CPU"
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help=f"bfloat16 autocast (CUDA only); {unset}")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help=f"channels_last memory format for the model and its batches; {unset}")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction,
                   help=f"cuDNN's autotuner, set for the run and restored after (CUDA); {unset}")
    p.add_argument("--loss-every", type=positive_int, metavar="N",
                   help="read the loss back every N batches (each read waits for the device); without it: "
                   "the recommendation's (--pipeline best), else 1")
    p.add_argument("--accum-steps", type=int, default=d.accum_steps, help="batches per optimizer step")


def config_from_args(args: argparse.Namespace, spec: SpecFile | None = None) -> FitConfig:
    """The run ``args`` ask for; ``spec``: the ``--spec`` file, loaded (``feeding.options.spec_from_args``)."""
    from feeding.checks import parse_size

    return FitConfig(
        pipeline=args.pipeline, data=args.data, model=args.model, pretrained_file=args.pretrained_file,
        epochs=args.epochs, batch=args.batch, workers=args.workers,
        size=parse_size(args.size) if args.size else None, lr=args.lr, weight_decay=args.weight_decay,
        optimizer=args.opt, scheduler=args.sched, warmup_epochs=args.warmup_epochs, loss=args.loss,
        label_smoothing=args.label_smoothing, focal_gamma=args.focal_gamma, amp=args.amp,
        channels_last=args.channels_last, cudnn_benchmark=args.cudnn_benchmark, loss_every=args.loss_every,
        accum_steps=args.accum_steps, freeze_backbone=args.freeze_backbone, val_fraction=args.val_fraction,
        folds=args.folds, balanced=args.balanced,
        seed=args.seed, out=args.out, early_stop_patience=args.early_stop_patience, resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        device=args.device, recommendation=args.recommendation, on_bad=args.on_bad, spec=spec,
        loggers=tuple(name.strip() for name in args.logger.split(",")),
    )


# ---------------------------------------------------------------- the run


def fit(config: FitConfig, split: tuple | None = None) -> dict:
    """Train, evaluate every epoch, checkpoint, log; return the summary (also in OUT/summary.json).

    The run directory is chosen first (``training.runs.choose_run_dir``: a run on disk is never
    written over). ``split``: (train, val) indices into the data set (a fold); default a person-level split.
    A Ctrl-C raises ``RunInterrupted`` (a KeyboardInterrupt) once the feeders are closed.
    """
    from dataclasses import replace

    from training import distributed
    from training.loggers import check_loggers
    from training.trainer import fit_folds, fit_run

    check_loggers(config.loggers)  # a missing package or login stops the run before it starts
    run_dir, which = choose_run_dir(config.out, DEFAULT_OUT, config.resume, bool(config.folds))
    if distributed.context_from_env().is_main:
        print(which, flush=True)
    config = replace(config, out=str(run_dir))
    try:
        return fit_folds(config) if config.folds else fit_run(config, split)
    except RunInterrupted:
        raise
    except KeyboardInterrupt:  # outside an epoch (listing the data, starting the feeders, writing the summary)
        raise RunInterrupted(run_dir, run_dir) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_args_parser()
    args = parser.parse_args(argv)
    from feeding.options import spec_from_args
    from training.distributed import DistributedError

    try:
        fit(config_from_args(args, spec_from_args(parser, argv, fixed=("size",))))
    except RunInterrupted as stop:  # the feeders are closed by now: no worker is left behind
        print(interrupted_message(stop, argv), file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunPreempted as stop:  # a step checkpoint was written, the feeders are closed
        print(preempted_message(stop, argv), file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:  # before a run directory was chosen: nothing was written
        print("training.fit: interrupted before the run started; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FeedError, MissingDependencyError, ValueError, DistributedError) as error:
        print(f"training.fit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
