"""One training run, and a K-fold series of them: the epochs (``training.engine``), validation
macro-F1 each epoch, checkpoints, logs (``training.loggers``) and the summary, in a run directory already
chosen (``training.runs.choose_run_dir``). Under DDP every rank trains; only rank 0 prints,
logs and writes.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path

import torch

from feeding.io import write_json
from feeding.spec_file import spec_provenance
from training import distributed
from training.checkpoint import LAST, Progress, load_feed_state, rank_state, restore, save_state
from training.config import FitConfig
from training.data import create_feeders, load_samples, split_data
from training.engine import evaluate, run_epoch
from training.figures import write_confusion
from training.loggers import create_loggers
from training.recommendation import (
    applicable_predicted_rate,
    load_recommendation,
    predicted_rate_verdict,
    prediction_notes,
    resolve_feed,
    resolve_step,
)
from training.report import epoch_line, feed_warnings, report_skipped, skipped_files, start_line
from training.runs import RunInterrupted, RunPreempted, sigterm_requests
from training.step import StepConfig, TrainStep, create_optimizer, step_settings


def fit_run(config: FitConfig, split: tuple | None = None, samples=None, on_epoch=None) -> dict:
    """One run in ``config.out``; ``split``: (train, val) indices (a fold), default a person-level
    split; ``samples``: the data set, if already listed; ``on_epoch(epoch, macro_f1)`` (0-based epoch):
    called on rank 0 after each epoch is validated and saved (``training.hpo`` reports to its pruner
    there; what it raises ends the run, the feeders closed). Returns the summary (OUT/summary.json)."""
    samples = load_samples(config) if samples is None else samples
    recommendation = load_recommendation(config, samples) if config.follows_recommendation else None
    config = resolve_feed(config, recommendation)
    train, val = split_data(samples, config, split)
    ctx = distributed.context_from_env()
    device = distributed.setup(ctx, config.device)
    step = resolve_step(config, recommendation, device)
    if ctx.is_main:
        print(start_line(config, step, len(train), len(val), len(samples.classes), device, ctx))
        for note in prediction_notes(config, step, recommendation):
            print(note)
    predicted = applicable_predicted_rate(config, step, recommendation)
    progress, feeds = train_on_feeds(config, step, samples.classes, train, val, predicted, ctx, device, on_epoch)
    summary = run_summary(config, step, samples, train, val, feeds, progress, predicted, ctx)
    distributed.teardown(ctx)
    return summary


def train_on_feeds(config: FitConfig, step: StepConfig, classes, train, val, predicted: float | None, ctx,
                   device, on_epoch=None) -> tuple[Progress, tuple]:
    """The feeds built, trained on and closed, under the step's settings (cudnn.benchmark, the CPU
    threads; restored after); (the progress, the closed feeds)."""
    with step_settings(step, device, trainer_threads(config, ctx, device)):
        train_feed, val_feed = create_feeders(config, train, val, ctx, device, channels_last=step.channels_last)
        if ctx.is_main:
            for warning in feed_warnings(train_feed, val_feed):
                print(f"warning: {warning}", file=sys.stderr)
        try:
            # The model lives in train_epochs alone: it is gone before the process group is left
            # (DDP's teardown under a live reducer aborts).
            progress = train_epochs(config, step, classes, train.labels, train_feed, val_feed, predicted, ctx, device,
                                    on_epoch)
        finally:
            train_feed.feeder.close()
            val_feed.feeder.close()
    return progress, (train_feed, val_feed)


def trainer_threads(config: FitConfig, ctx, device: torch.device) -> int:
    """torch's threads in this training process (``training.models.training_threads``): on the CPU
    this host's cores shared by its ranks, less the loader workers; on a GPU one, as torchrun sets."""
    from training.models import training_threads

    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    return training_threads(device.type, max(1, (os.cpu_count() or 1) // ranks_here), config.workers)


def build_training(config: FitConfig, step: StepConfig, num_classes: int, train_labels, batches_per_epoch: int,
                   device, announce: bool, rank: int | None = None):
    """(model, optimizer, schedule, loss) for this run, seeded; ``announce``: say what a pretrained file gave.
    The model is in the step's memory format before its optimizer and DDP see its parameters. ``rank``
    (a distributed run's): the model is built from the seed alike on every rank, and then the rank's
    global generators are reseeded for its own dropout and drop-path masks."""
    from feeding.seeding import rank_seed, seed_globals
    from training.losses import create_loss
    from training.models import create_model
    from training.schedule import create_schedule

    seed_globals(config.seed)
    memory_format = torch.channels_last if step.channels_last else torch.preserve_format
    model = create_model(config, num_classes, announce=announce).to(device, memory_format=memory_format)
    optimizer = create_optimizer(model, step)
    updates_per_epoch = math.ceil(batches_per_epoch / step.accum_steps)
    scheduler = create_schedule(config.scheduler, optimizer, config.epochs, updates_per_epoch, config.warmup_epochs)
    loss_fn = create_loss(config.loss, train_labels, num_classes, config.label_smoothing,
                          config.focal_gamma).to(device)
    if rank is not None:
        seed_globals(rank_seed(config.seed, rank))
    return model, optimizer, scheduler, loss_fn


def train_epochs(config: FitConfig, step: StepConfig, classes, train_labels, train_feed, val_feed,
                 predicted: float | None, ctx, device, on_epoch=None) -> Progress:
    """Train (each batch a ``TrainStep`` of ``step``) and validate every epoch left (resumed from
    OUT/last.pt with ``config.resume``, at the update it holds), until the plan or early stopping ends
    it; a step checkpoint every ``config.checkpoint_every`` updates. A Ctrl-C raises ``RunInterrupted``
    naming the epoch; a SIGTERM writes a step checkpoint at the next update and raises ``RunPreempted``."""
    out, main, num_classes = Path(config.out), ctx.is_main, len(classes)
    loggers = None
    epoch = None  # the epoch in progress (0-based), for what a Ctrl-C reports
    try:
        model, optimizer, scheduler, loss_fn = build_training(config, step, num_classes, train_labels,
                                                              len(train_feed), device, announce=main,
                                                              rank=ctx.rank if ctx.enabled else None)
        resumed = None
        progress = Progress()
        if config.resume:
            resumed = restore(out, config, num_classes, model, optimizer, scheduler, announce=main, step=step,
                              rank=ctx.rank, world_size=ctx.world_size)
            load_feed_state(train_feed, resumed.feeder_state, out / LAST)
            progress = resumed.progress
            if main:
                print(f"resumed from {out / LAST} at {resumed.where}")
        model = distributed.wrap(model, ctx, device)  # after loading: DDP broadcasts rank 0's weights
        train_step = TrainStep(model, optimizer, loss_fn, step, device)
        if main:
            run_config = {**config.to_dict(), "step": step.to_dict(), "feed_predicted_images_per_sec": predicted}
            loggers = create_loggers(config.loggers, out, run_config, progress.updates if config.resume else None)
        with sigterm_requests() as sigterm:
            for epoch in range(progress.epoch, config.epochs):
                so_far = resumed.train_from(epoch) if resumed is not None else None
                first_batch = loggers.grid_logger(train_feed, progress.updates) if (
                    epoch == 0 and main and so_far is None) else None
                checkpoint = step_checkpointer(config, classes, model, optimizer, scheduler, progress, step,
                                               train_feed, epoch, sigterm, ctx, device)
                stats = run_epoch(train_step, train_feed, epoch, scheduler=scheduler, updates_done=progress.updates,
                                  on_first_batch=first_batch, resume=so_far, on_update=checkpoint)
                stats = distributed.reduce_epoch_stats(stats, ctx, device)
                # reduced over ranks by torchmetrics
                metrics = evaluate(distributed.unwrap(model), val_feed, num_classes, step.amp)
                scheduler.step(epoch + 1, metrics.macro_f1)
                progress = progress.after(epoch, stats, metrics, predicted)
                stop = bool(config.early_stop_patience and progress.stale >= config.early_stop_patience)
                ranks = distributed.gather_objects(rank_state(train_feed), ctx)
                if main:
                    loggers.log_epoch(stats, metrics, progress, write_confusion(out, classes, metrics, progress))
                    save_state(out, config, classes, distributed.unwrap(model), optimizer, scheduler, progress,
                               ranks, step)
                    print(epoch_line(epoch, config.epochs, stats, metrics, predicted), flush=True)
                    if on_epoch is not None:
                        on_epoch(epoch, metrics.macro_f1)
                if distributed.any_flag(sigterm(), ctx, device) and epoch + 1 < config.epochs:
                    raise RunPreempted(out, out, f"epoch {epoch + 1}")
                if distributed.broadcast_flag(stop, ctx, device):  # the same decision on every rank
                    if main:
                        print(f"early stop: no better macro-F1 for {progress.stale} epochs")
                    break
    except KeyboardInterrupt:
        raise RunInterrupted(out, out, None if epoch is None else epoch + 1) from None
    finally:
        if loggers is not None:
            loggers.close()
    return progress


def step_checkpointer(config: FitConfig, classes, model, optimizer, scheduler, progress: Progress,
                      step: StepConfig, train_feed, epoch: int, sigterm, ctx, device):
    """``run_epoch``'s ``on_update`` for ``epoch`` (0-based), begun at ``progress``: a step checkpoint every
    ``config.checkpoint_every`` updates, and at the first update after a SIGTERM (on any rank), after
    which it raises ``RunPreempted``. Every rank takes part (each saves its RNG and feeder state); rank 0
    writes. Inside the epoch only: its last update's checkpoint is the epoch's own, after validation."""
    every, out = config.checkpoint_every, Path(config.out)

    def on_update(updates_in_epoch: int, so_far) -> None:
        due = bool(every) and (progress.updates + updates_in_epoch) % every == 0
        stopping = distributed.any_flag(sigterm(), ctx, device)
        if not (due or stopping):
            return
        within = (epoch, so_far())
        ranks = distributed.gather_objects(rank_state(train_feed, within[1]), ctx)
        if ctx.is_main:
            save_state(out, config, classes, distributed.unwrap(model), optimizer, scheduler, progress, ranks,
                       step, within)
        if stopping:
            raise RunPreempted(out, out, f"epoch {epoch + 1}, batch {within[1].batches} "
                                         f"(update {progress.updates + updates_in_epoch})")

    return on_update


def run_summary(config: FitConfig, step: StepConfig, samples, train, val, feeds, progress: Progress,
                predicted: float | None, ctx) -> dict:
    """The run's summary (with the step it trained with); rank 0 reports the skipped files and the
    verdict and writes OUT/summary.json."""
    out = Path(config.out)
    verdict = predicted_rate_verdict([row["images_per_sec"] for row in progress.history], predicted)
    skipped = skipped_files(samples, *feeds)  # this rank's (rank 0's under DDP)
    summary = {"best_macro_f1": progress.best_f1, "epochs_run": len(progress.history), "train_images": len(train),
               "val_images": len(val), "history": progress.history, "skipped": [r.to_dict() for r in skipped],
               "prediction": verdict, "config": config.to_dict(), "step": step.to_dict(), "ranks": ctx.world_size,
               **spec_provenance(train=config.train_augmentation, eval=config.eval_augmentation,
                                 spec_file=config.spec.name if config.spec is not None else None)}
    if ctx.is_main:
        report_skipped(skipped, out / "summary.json")
        print(f"best val macro-F1 {progress.best_f1:.4f}; {verdict}")
        write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------- K folds


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
        except RunPreempted as stop:
            raise RunPreempted(config.out, fold_out, stop.where, f"fold {k + 1}/{config.folds}") from None
        except KeyboardInterrupt as stop:
            raise RunInterrupted(config.out, fold_out, getattr(stop, "epoch", None),
                                 f"fold {k + 1}/{config.folds}") from None
    return folds_summary(config, runs)


def folds_summary(config: FitConfig, runs: list[dict]) -> dict:
    """The folds' scores, best and last epoch, and their means; printed, and written to OUT/summary.json."""
    scores = [run["best_macro_f1"] for run in runs]
    last = [run["history"][-1]["macro_f1"] for run in runs]  # the best epoch is chosen on the fold's own val
    skipped = list({(r["path"], r["reason"]): r for run in runs for r in run.get("skipped", ())}.values())
    summary = {"folds": config.folds, "fold_best_macro_f1": scores, "mean_best_macro_f1": statistics.mean(scores),
               "fold_last_macro_f1": last, "mean_last_macro_f1": statistics.mean(last),
               "fold_dirs": [f"fold{k}" for k in range(config.folds)], "skipped": skipped,
               "config": config.to_dict(), "step": runs[-1].get("step")}  # the same in every fold
    print(f"{config.folds}-fold: best val macro-F1 per fold {', '.join(f'{s:.4f}' for s in scores)}; "
          f"mean {summary['mean_best_macro_f1']:.4f} (last epoch: mean {summary['mean_last_macro_f1']:.4f})")
    write_json(Path(config.out) / "summary.json", summary)
    return summary
