"""Train an image classifier on a feed: python -m training.fit --pipeline best|pil|albumentations|dali

Every epoch reports validation macro-F1 (the headline), accuracy, the data-wait fraction and the
measured img/s against the tuner's prediction; at the end, whether the prediction held, and every
file or listing row that was skipped. Writes best.pt/last.pt, TensorBoard logs (tb/),
confusion-matrix PNGs and summary.json under the run directory: --out, else runs/fit or the next
free runs/fit-2, runs/fit-3, ... A directory that holds a run is never written over: --resume
continues it exactly from last.pt (with --epochs beyond its plan, the schedule is extended).
Ctrl-C stops cleanly, exit status 130, and says how to resume.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from feeding.errors import FeedError, MissingDependencyError
from training.checkpoint import BEST, LAST
from training.config import DEFAULT_OUT, FIT_PIPELINES, LOSSES, ON_BAD, OPTIMIZERS, SCHEDULERS, FitConfig

PREDICTION_TOLERANCE = 0.15  # measured img/s within ±15% of the prediction: it held
IMAGE_GRID_SIZE = 16
SHOWN_SKIPS = 20  # skipped files listed on the console (all of them go to summary.json)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def get_args_parser() -> argparse.ArgumentParser:
    from feeding.options import HelpFormatter

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
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    p.add_argument("--accum-steps", type=int, default=d.accum_steps, help="batches per optimizer step")
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
    p.add_argument("--device", default=d.device, help="cpu or cuda[:N]")
    p.add_argument("--recommendation", default=d.recommendation, help="what --pipeline best reads")
    p.add_argument("--on-bad", default=d.on_bad, choices=ON_BAD,
                   help="a file that cannot be read, or a listing row that cannot be used: skip (left out, "
                   "reported on the console and in summary.json) or fail (an error naming it)")
    return p


def config_from_args(args: argparse.Namespace) -> FitConfig:
    from feeding.spec import parse_size

    return FitConfig(
        pipeline=args.pipeline, data=args.data, model=args.model, pretrained_file=args.pretrained_file,
        epochs=args.epochs, batch=args.batch, workers=args.workers,
        size=parse_size(args.size) if args.size else None, lr=args.lr, weight_decay=args.weight_decay,
        optimizer=args.opt, scheduler=args.sched, warmup_epochs=args.warmup_epochs, loss=args.loss,
        label_smoothing=args.label_smoothing, focal_gamma=args.focal_gamma, amp=args.amp,
        accum_steps=args.accum_steps, freeze_backbone=args.freeze_backbone, val_fraction=args.val_fraction,
        folds=args.folds, balanced=args.balanced,
        seed=args.seed, out=args.out, early_stop_patience=args.early_stop_patience, resume=args.resume,
        device=args.device, recommendation=args.recommendation, on_bad=args.on_bad,
    )


# ---------------------------------------------------------------- building blocks


def split_data(samples, config: FitConfig, split: tuple | None):
    """(train, val) Samples: ``split``'s indices (a fold), else a person-level split; a clear
    FeedError where a side would be empty, a warning for each class a side lacks."""
    from feeding.sources import missing_classes, person_split

    if split is None:
        people, needed = len(np.unique(samples.groups)), max(2, round(1 / config.val_fraction))
        if people < needed:
            raise FeedError(f"{samples.root} has {people} people (or groups): holding out "
                            f"{config.val_fraction:g} of them needs at least {needed}; pass a larger "
                            f"--val-fraction or more data")
        train, val = person_split(samples, config.val_fraction, config.seed)
    else:
        train, val = samples.subset(split[0]), samples.subset(split[1])
    for side, part in (("training", train), ("validation", val)):
        if len(part) == 0:
            raise FeedError(f"the {side} split of {samples.root} is empty ({len(samples)} images)")
    for side, part, consequence in (
            ("training", train, "the model cannot learn them"),
            ("validation", val, ("macro-F1 averages over the classes that appear in the validation "
                                 "images or the predictions"))):
        absent = missing_classes(part)
        if absent:
            print(f"warning: {len(absent)} of {len(samples.classes)} classes have no {side} image "
                  f"({consequence}): {', '.join(absent)}", file=sys.stderr)
    return train, val


def create_feeders(config: FitConfig, train, val, ctx=None, device: torch.device | None = None):
    """Training feed (this rank's shard) and validation feed (this rank's exact slice: no padding,
    so that the metrics reduced over ranks count every validation image once)."""
    from feeding import FeedConfig, create_feeder, eval_spec, train_spec
    from feeding.backends import capabilities
    from feeding.device import DeviceFeeder
    from feeding.feeder import shard_indices
    from training import distributed
    from training.sampling import ResampledFeeder, balanced_indices

    ctx = ctx or distributed.DistContext()
    device = device or torch.device(config.device)
    decode_device = capabilities(config.pipeline).decode_device(str(device))
    common = {"pipeline": config.pipeline, "batch_size": config.batch, "workers": config.workers,
              "seed": config.seed, "decode_device": decode_device, "on_bad": config.on_bad}
    train_config = distributed.shard_feed(FeedConfig(spec=train_spec(config.size), **common), ctx, device)
    if config.balanced:
        labels = train.labels
        train_feeder = ResampledFeeder(train, train_config, lambda epoch: balanced_indices(labels, config.seed, epoch))
    else:
        train_feeder = create_feeder(train, train_config)
    train_feed = DeviceFeeder(train_feeder, device)
    try:  # a validation feed that cannot be built (or Ctrl-C now) must not leave the training workers behind
        if ctx.enabled:
            val = val.subset(shard_indices(len(val), ctx.rank, ctx.world_size))
        val_feed = DeviceFeeder(create_feeder(val, FeedConfig(spec=eval_spec(config.size), shuffle=False,
                                                              drop_last=False, **common)), device)
    except BaseException:
        train_feeder.close()
        raise
    return train_feed, val_feed  # a batch beyond the training split was refused when its feeder was built


def feed_warnings(train_feed, val_feed) -> list[str]:
    """The feeders' notes (settings worth a warning), each once, saying which feed it is about."""
    notes = [f"{side} feed: {note}" for side, feed in (("training", train_feed), ("validation", val_feed))
             for note in getattr(feed.feeder, "notes", ())]
    return list(dict.fromkeys(notes))


def skipped_files(samples, *feeds) -> list:
    """Every file or listing row left out (BadFile), each once: the listing's problems, then the feeds' skips."""
    return list(dict.fromkeys([*samples.problems, *(record for feed in feeds for record in feed.skipped)]))


def report_skipped(skipped: list, summary_path: Path) -> None:
    """The skipped files on stderr: the first ``SHOWN_SKIPS``, and where the rest are."""
    if not skipped:
        return
    print(f"warning: skipped {len(skipped)} file(s) or listing row(s) (--on-bad skip):", file=sys.stderr)
    for record in skipped[:SHOWN_SKIPS]:
        print(f"  skipped: {record.path}: {record.reason}", file=sys.stderr)
    if len(skipped) > SHOWN_SKIPS:
        print(f"  ... and {len(skipped) - SHOWN_SKIPS} more, all listed in {summary_path}", file=sys.stderr)


def confusion_png(confusion: torch.Tensor, classes: tuple[str, ...], title: str) -> bytes:
    """The confusion matrix (rows true, columns predicted) as PNG bytes; no global matplotlib state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(classes)
    fig = Figure(figsize=(4 + 0.45 * n, 3 + 0.4 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(confusion.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (row, col), count in zip(torch.cartesian_prod(torch.arange(n), torch.arange(n)).tolist(),
                                 confusion.flatten().tolist()):
        if count:
            ax.text(col, row, str(count), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def image_grid(images: torch.Tensor, feeder) -> torch.Tensor:
    """The first images of a fed batch, denormalized to [0, 1] (what the model saw, as a picture)."""
    from torchvision.utils import make_grid

    shown = images[:IMAGE_GRID_SIZE].float() * feeder.std + feeder.mean
    return make_grid(shown.clamp(0, 1).cpu(), nrow=8)


def applicable_prediction(config: FitConfig, recommendation: dict | None) -> float | None:
    """The recommendation's predicted img/s, if this run uses exactly the recommended feed."""
    if recommendation is None:
        return None
    feed = {"pipeline": config.pipeline, "workers": config.workers, "batch": config.batch, "size": list(config.size)}
    same = all(recommendation.get(key) == value for key, value in feed.items())
    return recommendation.get("predicted_ips") if same else None


def prediction_verdict(measured: list[float], predicted: float | None) -> str:
    if predicted is None:
        return "no applicable prediction (no recommendation, or the feed differs from it)"
    # The first epoch pays one-off costs (worker start-up, allocator warm-up); leave it out if we can.
    steady = statistics.median(measured[1:] if len(measured) > 1 else measured)
    error = steady / predicted - 1
    held = "held" if abs(error) <= PREDICTION_TOLERANCE else "did not hold"
    return (f"prediction {held}: measured {steady:.1f} img/s (median over epochs) vs predicted "
            f"{predicted:.1f} img/s ({100 * error:+.1f}%; tolerance ±{100 * PREDICTION_TOLERANCE:.0f}%)")


# ---------------------------------------------------------------- the run


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, and where it stood: ``run_dir`` (what --out resumes), ``checkpoint_dir``
    (whose last.pt holds the progress: the run's, or a fold's), ``epoch`` (1-based; None: outside one)."""

    def __init__(self, run_dir: Path, checkpoint_dir: Path, epoch: int | None = None, fold: str | None = None):
        super().__init__(f"interrupted: {checkpoint_dir}")
        self.run_dir, self.checkpoint_dir, self.epoch, self.fold = Path(run_dir), Path(checkpoint_dir), epoch, fold


def load_samples(config: FitConfig):
    """The data set, listing problems handled per ``on_bad``; a FeedError unless 2 classes have images."""
    from feeding.sample import resolve_data
    from feeding.sources import discover

    samples = discover(resolve_data(config.data), on_bad=config.on_bad)
    present = [samples.classes[label] for label in np.unique(samples.labels)]
    if len(present) < 2:
        raise FeedError(f"need at least 2 classes to train a classifier; {samples.root} has {len(present)}: "
                        f"{', '.join(present)}")
    return samples


def fit(config: FitConfig, split: tuple | None = None) -> dict:
    """Train, evaluate every epoch, checkpoint, log; return the summary (also in OUT/summary.json).

    The run directory is chosen first (``choose_run_dir``: a run on disk is never written over).
    ``split``: (train, val) indices into the data set (a fold); default a person-level split.
    A Ctrl-C raises ``RunInterrupted`` (a KeyboardInterrupt) once the feeders are closed.
    """
    from dataclasses import replace

    from training import distributed
    from training.checkpoint import choose_run_dir

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


def finished_fold(fold_out: Path, epochs: int) -> dict | None:
    """The summary of a fold run that finished a plan of at least ``epochs`` epochs, else None."""
    import json

    try:
        summary = json.loads((fold_out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if summary.get("config", {}).get("epochs", 0) >= epochs else None


def fit_folds(config: FitConfig) -> dict:
    """One run per person-grouped, class-stratified fold in OUT/fold{k}; OUT/summary.json has them all.

    Resumed, a fold that finished its plan is kept, one with a last.pt continues, the rest start afresh.
    """
    from dataclasses import replace

    from feeding.io import write_json
    from feeding.sources import person_folds

    samples = load_samples(config)
    runs = []
    for k, split in enumerate(person_folds(samples, config.folds, config.seed)):
        print(f"== fold {k + 1}/{config.folds}")
        fold_out = Path(config.out) / f"fold{k}"
        finished = finished_fold(fold_out, config.epochs) if config.resume else None
        if finished is not None:
            print(f"fold {k + 1}: finished earlier ({fold_out / 'summary.json'}); kept")
            runs.append(finished)
            continue
        resume = config.resume and (fold_out / LAST).exists()  # folds not started yet start afresh
        fold_config = replace(config, folds=None, out=str(fold_out), resume=resume)
        try:
            runs.append(fit_run(fold_config, split=split, samples=samples))
        except KeyboardInterrupt as stop:
            raise RunInterrupted(config.out, fold_out, getattr(stop, "epoch", None),
                                 f"fold {k + 1}/{config.folds}") from None
    scores = [run["best_macro_f1"] for run in runs]
    last = [run["history"][-1]["macro_f1"] for run in runs]  # the best epoch is chosen on the fold's own val
    skipped = list({(r["path"], r["reason"]): r for run in runs for r in run.get("skipped", ())}.values())
    summary = {"folds": config.folds, "fold_best_macro_f1": scores, "mean_best_macro_f1": statistics.mean(scores),
               "fold_last_macro_f1": last, "mean_last_macro_f1": statistics.mean(last),
               "fold_dirs": [f"fold{k}" for k in range(config.folds)], "skipped": skipped,
               "config": config.to_dict()}
    print(f"{config.folds}-fold: best val macro-F1 per fold {', '.join(f'{s:.4f}' for s in scores)}; "
          f"mean {summary['mean_best_macro_f1']:.4f} (last epoch: mean {summary['mean_last_macro_f1']:.4f})")
    write_json(Path(config.out) / "summary.json", summary)
    return summary


def fit_run(config: FitConfig, split: tuple | None = None, samples=None) -> dict:
    """One run in ``config.out`` (already chosen by ``fit``); ``samples``: the data set, if already listed."""
    from timm.optim import create_optimizer_v2
    from torch.utils.tensorboard import SummaryWriter

    from training.models import create_model, model_threads
    from feeding.io import write_json
    from feeding.seeding import seed_globals
    from training import distributed
    from training.config import load_recommendation, resolve_feed
    from training.engine import evaluate, train_one_epoch
    from training.losses import create_loss
    from training.schedule import create_schedule

    samples = load_samples(config) if samples is None else samples
    recommendation = load_recommendation(config, samples) if config.follows_recommendation else None
    config = resolve_feed(config, recommendation)
    train, val = split_data(samples, config, split)
    num_classes = len(samples.classes)
    out = Path(config.out)
    ctx = distributed.context_from_env()
    device = distributed.setup(ctx, config.device)
    main = ctx.is_main  # only rank 0 prints, logs and writes
    if device.type == "cpu":  # the ranks on this host share its cores
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        torch.set_num_threads(model_threads(max(1, (os.cpu_count() or 1) // ranks_here), config.workers))

    if main:
        ranks = f", {ctx.world_size} ranks" if ctx.enabled else ""
        print(f"fit: {config.model} on {len(train)} train / {len(val)} val images ({num_classes} classes); "
              f"feed {config.pipeline}{' balanced' if config.balanced else ''}, {config.workers} workers, "
              f"batch {config.batch}, {config.size[0]}x{config.size[1]}, device {device}{ranks}")
    train_feed, val_feed = create_feeders(config, train, val, ctx, device)
    if main:
        for warning in feed_warnings(train_feed, val_feed):
            print(f"warning: {warning}", file=sys.stderr)
    writer = None
    epoch = None  # the epoch in progress (0-based), for what a Ctrl-C reports
    try:
        seed_globals(config.seed)
        model = create_model(config, num_classes, announce=main).to(device)
        optimizer = create_optimizer_v2(model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
        updates_per_epoch = math.ceil(len(train_feed) / config.accum_steps)
        scheduler = create_schedule(config.scheduler, optimizer, config.epochs, updates_per_epoch,
                                    config.warmup_epochs)
        loss_fn = create_loss(config.loss, train.labels, num_classes, config.label_smoothing,
                              config.focal_gamma).to(device)
        progress = Progress()
        if config.resume:
            progress = restore(out, config, num_classes, model, optimizer, scheduler, announce=main)
            if main:
                print(f"resumed from {out / LAST} after epoch {progress.epoch}")
        model = distributed.wrap(model, ctx, device)  # after loading: DDP broadcasts rank 0's weights
        predicted = applicable_prediction(config, recommendation)
        if main:
            writer = SummaryWriter(log_dir=str(out / "tb"), purge_step=progress.updates if config.resume else None)
        for epoch in range(progress.epoch, config.epochs):
            def log_grid(images, step=progress.updates):
                writer.add_image("train/fed_images", image_grid(images, train_feed), step)

            stats = train_one_epoch(model, train_feed, optimizer, loss_fn, epoch, scheduler=scheduler,
                                    updates_done=progress.updates, amp=config.amp, accum_steps=config.accum_steps,
                                    on_first_batch=log_grid if epoch == 0 and main else None)
            stats = _reduced(stats, ctx, device)
            metrics = evaluate(distributed.unwrap(model), val_feed, num_classes, config.amp)  # reduced by torchmetrics
            scheduler.step(epoch + 1, metrics.macro_f1)
            progress = progress.after(epoch, stats, metrics, predicted)
            stop = bool(config.early_stop_patience and progress.stale >= config.early_stop_patience)
            if distributed.broadcast_flag(stop, ctx, device) and not main:
                break  # the same decision on every rank: none is left waiting in a collective
            if not main:
                continue
            log_epoch(writer, stats, metrics, progress)
            save_epoch(out, config, samples.classes, distributed.unwrap(model), optimizer, scheduler, progress,
                       metrics)
            versus = f" (predicted {predicted:.1f}: {100 * (stats.images_per_sec / predicted - 1):+.0f}%)" \
                if predicted else ""
            print(f"epoch {epoch + 1}/{config.epochs}: loss {stats.loss:.4f}  lr {stats.lr:.2e}  "
                  f"val macro-F1 {metrics.macro_f1:.4f}  accuracy {metrics.accuracy:.4f}  "
                  f"data wait {100 * stats.data_wait_fraction:.1f}%  {stats.images_per_sec:.1f} img/s{versus}",
                  flush=True)
            if stop:
                print(f"early stop: no better macro-F1 for {progress.stale} epochs")
                break
    except KeyboardInterrupt:
        raise RunInterrupted(out, out, None if epoch is None else epoch + 1) from None
    finally:
        if writer is not None:
            writer.close()
        train_feed.feeder.close()
        val_feed.feeder.close()
    verdict = prediction_verdict([row["images_per_sec"] for row in progress.history], predicted)
    skipped = skipped_files(samples, train_feed, val_feed)  # this rank's (rank 0's under DDP)
    summary = {"best_macro_f1": progress.best_f1, "epochs_run": len(progress.history), "train_images": len(train),
               "val_images": len(val), "history": progress.history, "skipped": [r.to_dict() for r in skipped],
               "prediction": verdict, "config": config.to_dict(), "ranks": ctx.world_size}
    if main:
        report_skipped(skipped, out / "summary.json")
        print(f"best val macro-F1 {progress.best_f1:.4f}; {verdict}")
        write_json(out / "summary.json", summary)
    del model, optimizer  # before leaving the process group: DDP's teardown under a live reducer aborts
    distributed.teardown(ctx)
    return summary


@dataclass(frozen=True)
class Progress:
    """Where a run stands after ``epoch`` finished epochs: what a checkpoint resumes from."""

    epoch: int = 0  # epochs finished (the next epoch's index)
    updates: int = 0  # optimizer updates so far (the schedule's clock)
    best_f1: float = -1.0
    stale: int = 0  # epochs since the best macro-F1
    history: tuple[dict, ...] = ()
    improved: bool = False  # the last epoch set a new best

    def after(self, epoch: int, stats, metrics, predicted: float | None) -> Progress:
        improved = metrics.macro_f1 > self.best_f1
        row = {"epoch": epoch + 1, "loss": stats.loss, "lr": stats.lr, "macro_f1": metrics.macro_f1,
               "accuracy": metrics.accuracy, "val_images": int(metrics.confusion.sum()),  # every rank's, each once
               "data_wait_fraction": stats.data_wait_fraction,
               "images_per_sec": stats.images_per_sec, "predicted_ips": predicted}
        return Progress(epoch + 1, self.updates + stats.updates, metrics.macro_f1 if improved else self.best_f1,
                        0 if improved else self.stale + 1, (*self.history, row), improved)


def restore(out: Path, config: FitConfig, num_classes: int, model, optimizer, scheduler,
            announce: bool = True) -> Progress:
    """Load OUT/last.pt into the model, optimizer, schedule and the global RNGs; where it stood.

    The schedule was built for ``config.epochs``: a run resumed with more epochs than it planned
    has its schedule stretched to them (``restore_schedule``), and ``announce`` says so.
    """
    from training.checkpoint import CheckpointError, load_checkpoint, set_rng_states
    from training.schedule import restore_schedule

    state = load_checkpoint(out / LAST, config.model, num_classes)
    done, planned = state["epoch"] + 1, state["config"].get("epochs", config.epochs)
    if config.epochs <= done:
        raise CheckpointError(f"the run in {out} finished {done} epochs; pass --epochs > {done} to continue it")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_schedule(scheduler, config.scheduler, state["scheduler"], state["updates"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {out / LAST} does not fit this model, optimizer or schedule "
                              f"(--opt/--sched changed?): {str(err).splitlines()[0]}") from err
    changed = sorted(k for k, v in state["config"].items()
                     if k not in ("resume", "epochs", "out") and config.to_dict().get(k) != v)
    if changed and announce:
        print(f"warning: resuming with changed settings: {', '.join(changed)}", file=sys.stderr)
    if config.epochs != planned and announce:
        change = "extended" if config.epochs > planned else "shortened"
        print(f"schedule {change} from {planned} to {config.epochs} epochs: lr {optimizer.param_groups[0]['lr']:.2e} "
              f"at update {state['updates']}")
    set_rng_states(state["rng"])
    return Progress(done, state["updates"], state["best_macro_f1"], state["epochs_since_best"],
                    tuple(state["history"]))


def log_epoch(writer, stats, metrics, progress: Progress) -> None:
    """TensorBoard, on the optimizer-update axis: the lr of every update, the epoch's figures at its end."""
    first = progress.updates - stats.updates + 1
    for update, lr in enumerate(stats.lrs, start=first):
        writer.add_scalar("train/lr", lr, update)
    for tag, value in (("train/loss", stats.loss), ("train/epoch", progress.epoch),
                       ("val/macro_f1", metrics.macro_f1), ("val/accuracy", metrics.accuracy),
                       ("feed/data_wait_fraction", stats.data_wait_fraction),
                       ("feed/images_per_sec", stats.images_per_sec)):
        writer.add_scalar(tag, value, progress.updates)
    writer.flush()


def save_epoch(out: Path, config: FitConfig, classes, model, optimizer, scheduler, progress: Progress,
               metrics) -> None:
    """Confusion PNGs and checkpoints: best (when improved) before last, each written atomically."""
    from feeding.io import write_atomic
    from training.checkpoint import rng_states, save_checkpoint

    png = confusion_png(metrics.confusion, classes, f"epoch {progress.epoch}: macro-F1 {metrics.macro_f1:.3f}")
    write_atomic(out / "confusion-last.png", png)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": progress.epoch - 1, "updates": progress.updates, "best_macro_f1": progress.best_f1,
             "epochs_since_best": progress.stale, "rng": rng_states(), "config": config.to_dict(),
             "num_classes": len(classes), "model_name": config.model, "classes": list(classes),
             "history": list(progress.history)}
    if progress.improved:  # best before last: a kill in between only repeats this epoch on resume
        write_atomic(out / "confusion-best.png", png)
        save_checkpoint(out / BEST, state)
    save_checkpoint(out / LAST, state)


def _reduced(stats, ctx, device):
    """One epoch's figures for the whole job: images and loss summed over ranks, the slowest
    rank's seconds (the job goes at its pace) and the mean data wait."""
    from dataclasses import replace

    from training import distributed

    if not ctx.enabled:
        return stats
    loss_sum, images, wait = distributed.reduce_sum(
        [stats.loss * stats.images, float(stats.images), stats.data_wait_s], ctx, device)
    seconds = distributed.reduce_max(stats.seconds, ctx, device)
    return replace(stats, loss=loss_sum / images, images=int(images), seconds=seconds,
                   data_wait_s=wait / ctx.world_size)


def resume_command(argv: list[str], run_dir: Path) -> str:
    """The command line that continues this run: ``argv`` with ``--resume --out run_dir``."""
    kept, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg == "--out":
            skip_value = True
        elif arg != "--resume" and not arg.startswith("--out="):
            kept.append(arg)
    return shlex.join(["python", "-m", "training.fit", *kept, "--resume", "--out", str(run_dir)])


def interrupted_message(stop: RunInterrupted, argv: list[str]) -> str:
    """One line for a Ctrl-C: where the run was, what its last.pt holds, and how to resume it."""
    from training.checkpoint import run_files, saved_epochs

    where = ", ".join(part for part in (stop.fold, f"epoch {stop.epoch}" if stop.epoch else None) if part)
    checkpoint = stop.checkpoint_dir / LAST
    saved = saved_epochs(checkpoint)
    held = f"{checkpoint} holds epoch {saved}" if saved else "no checkpoint yet"
    resumable = any(Path(name).name == LAST for name in run_files(stop.run_dir))
    how = f" (resume: {resume_command(argv, stop.run_dir)})" if resumable else ""
    return f"training.fit: interrupted{' in ' + where if where else ''}; {held}{how}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(argv)
    from training.distributed import DistributedError

    try:
        fit(config_from_args(args))
    except RunInterrupted as stop:  # the feeders are closed by now: no worker is left behind
        print(interrupted_message(stop, argv), file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before a run directory was chosen: nothing was written
        print("training.fit: interrupted before the run started; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FeedError, MissingDependencyError, ValueError, DistributedError) as error:
        print(f"training.fit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
