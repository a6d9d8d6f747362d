"""Train an image classifier on a feed: ``python -m training.fit --pipeline best|pil|albumentations|dali``.

Every epoch reports validation macro-F1 (the headline), accuracy, the data-wait fraction and the
measured img/s against the tuner's prediction; at the end, whether the prediction held. Writes
``best.pt``/``last.pt``, TensorBoard logs (``tb/``), confusion-matrix PNGs and ``summary.json``
under ``--out``. ``--resume`` continues exactly from ``last.pt``.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from feeding.errors import FeedError, MissingDependencyError
from training.checkpoint import BEST, LAST
from training.config import FIT_PIPELINES, LOSSES, OPTIMIZERS, SCHEDULERS, FitConfig

PREDICTION_TOLERANCE = 0.15  # measured img/s within ±15% of the prediction: it held
IMAGE_GRID_SIZE = 16


def get_args_parser() -> argparse.ArgumentParser:
    d = FitConfig()
    p = argparse.ArgumentParser(prog="python -m training.fit", description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default=d.pipeline, choices=FIT_PIPELINES,
                   help="feed; 'best' reads --recommendation (made by `feedbench tune`)")
    p.add_argument("--data", help="data set directory (default: the embedded sample)")
    p.add_argument("--model", default=d.model, help="timm model name or package.module:factory")
    p.add_argument("--pretrained-file", help="local weights file for the timm model (nothing is downloaded)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch", type=int, help="images per batch (overrides the recommendation)")
    p.add_argument("--workers", type=int, help="loader workers (overrides the recommendation)")
    p.add_argument("--size", help="N or HxW pixels (overrides the recommendation)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--opt", default=d.optimizer, choices=OPTIMIZERS)
    p.add_argument("--sched", default=d.scheduler, choices=SCHEDULERS)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help="epochs of linear warm-up, stepped per optimizer update")
    p.add_argument("--loss", default=d.loss, choices=LOSSES)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--focal-gamma", type=float, default=d.focal_gamma)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    p.add_argument("--accum-steps", type=int, default=d.accum_steps, help="batches per optimizer step")
    p.add_argument("--freeze-backbone", action="store_true", help="train the classifier head only")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of people held out")
    p.add_argument("--balanced", action="store_true",
                   help="class-balanced sampling: rare classes oversampled (with replacement) to equal shares")
    p.add_argument("--folds", type=int, help="K: train one model per person-grouped stratified fold "
                   "(OUT/fold0..K-1), for a K-fold ensemble (python -m training.predict)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, help="run directory: checkpoints, logs, plots")
    p.add_argument("--early-stop-patience", type=int, help="epochs without a better macro-F1 before stopping")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--device", default=d.device, help="cpu or cuda[:N]")
    p.add_argument("--recommendation", default=d.recommendation, help="what --pipeline best reads")
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
        device=args.device, recommendation=args.recommendation,
    )


# ---------------------------------------------------------------- building blocks


def create_model(config: FitConfig, num_classes: int) -> torch.nn.Module:
    from bench.consume import build_model

    if config.pretrained_file is None:
        model = build_model(config.model, num_classes)
    else:
        model = pretrained_model(config.model, num_classes, config.pretrained_file)
    if config.freeze_backbone:
        freeze_backbone(model, config.model)
    return model


def pretrained_model(name: str, num_classes: int, file: str) -> torch.nn.Module:
    """A timm model with weights from a local file (timm's pretrained config pointed at it).

    A classifier of another class count in the file is left out (timm drops it), so the head
    starts untrained; every other weight must fit.
    """
    import timm

    from bench.consume import build_model

    if not timm.is_model(name):
        build_model(name, num_classes)  # raises, naming close matches
    # source=None: the file wins over any hub source in the model's default config.
    overlay = {"file": str(Path(file).resolve()), "source": None}
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay)
    except Exception as err:  # torch.load and load_state_dict raise many kinds
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"--pretrained-file {file} does not load into {name}: "
                         f"{type(err).__name__}: {first_line}") from err


def freeze_backbone(model: torch.nn.Module, name: str) -> None:
    """Only the classifier trains: the backbone gets no gradients, and its norm layers keep their
    running statistics (in train mode they would drift towards this data's batches, changing the
    features the head is fitted to)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Module) or not any(True for _ in head.parameters()):
        raise ValueError(f"--freeze-backbone: model {name!r} has no classifier head (get_classifier())")
    model.requires_grad_(False)
    head.requires_grad_(True)
    in_head = set(head.modules())
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m not in in_head]

    def norms_in_eval(module, inputs):  # runs before every forward, after any model.train()
        for norm in norms:
            norm.eval()

    model.register_forward_pre_hook(norms_in_eval)


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
    from feeding.device import DeviceFeeder
    from feeding.feeder import shard_indices
    from training import distributed
    from training.sampling import ResampledFeeder, balanced_indices

    ctx = ctx or distributed.DistContext()
    device = device or torch.device(config.device)
    decode_device = str(device) if config.pipeline == "dali" and device.type == "cuda" else "cpu"
    common = {"pipeline": config.pipeline, "batch_size": config.batch, "workers": config.workers,
              "seed": config.seed, "decode_device": decode_device}
    train_config = distributed.shard_feed(FeedConfig(spec=train_spec(config.size), **common), ctx, device)
    if config.balanced:
        labels = train.labels
        train_feeder = ResampledFeeder(train, train_config, lambda epoch: balanced_indices(labels, config.seed, epoch))
    else:
        train_feeder = create_feeder(train, train_config)
    train_feed = DeviceFeeder(train_feeder, device)
    if ctx.enabled:
        val = val.subset(shard_indices(len(val), ctx.rank, ctx.world_size))
    val_feed = DeviceFeeder(create_feeder(val, FeedConfig(spec=eval_spec(config.size), shuffle=False,
                                                          drop_last=False, **common)), device)
    if len(train_feed) == 0:
        raise FeedError(f"the training split has {len(train)} images: fewer than one batch of {config.batch}")
    return train_feed, val_feed


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
    same = (config.pipeline == recommendation["pipeline"] and config.workers == recommendation["workers"]
            and config.batch == recommendation["batch"] and list(config.size) == list(recommendation["size"]))
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


def fit_folds(config: FitConfig) -> dict:
    """One run per person-grouped, class-stratified fold in OUT/fold{k}; OUT/summary.json has them all."""
    from dataclasses import replace

    from bench.cli import resolve_data
    from bench.io import write_json
    from feeding.sources import discover, person_folds

    samples = discover(resolve_data(config.data))
    runs = []
    for k, split in enumerate(person_folds(samples, config.folds, config.seed)):
        print(f"== fold {k + 1}/{config.folds}")
        fold_out = Path(config.out) / f"fold{k}"
        resume = config.resume and (fold_out / "last.pt").exists()  # folds not started yet start afresh
        fold_config = replace(config, folds=None, out=str(fold_out), resume=resume)
        runs.append(fit(fold_config, split=split))
    scores = [run["best_macro_f1"] for run in runs]
    last = [run["history"][-1]["macro_f1"] for run in runs]  # the best epoch is chosen on the fold's own val
    summary = {"folds": config.folds, "fold_best_macro_f1": scores, "mean_best_macro_f1": statistics.mean(scores),
               "fold_last_macro_f1": last, "mean_last_macro_f1": statistics.mean(last),
               "fold_dirs": [f"fold{k}" for k in range(config.folds)], "config": config.to_dict()}
    print(f"{config.folds}-fold: best val macro-F1 per fold {', '.join(f'{s:.4f}' for s in scores)}; "
          f"mean {summary['mean_best_macro_f1']:.4f} (last epoch: mean {summary['mean_last_macro_f1']:.4f})")
    write_json(Path(config.out) / "summary.json", summary)
    return summary


def fit(config: FitConfig, split: tuple | None = None) -> dict:
    """Train, evaluate every epoch, checkpoint, log; return the summary (also in OUT/summary.json).

    ``split``: (train, val) indices into the data set (a fold); default a person-level split.
    """
    if config.folds:
        return fit_folds(config)
    from timm.optim import create_optimizer_v2
    from torch.utils.tensorboard import SummaryWriter

    from bench.cli import resolve_data
    from bench.consume import model_threads
    from bench.io import write_json
    from feeding.seeding import seed_globals
    from feeding.sources import discover
    from training import distributed
    from training.config import load_recommendation, resolve_feed
    from training.engine import evaluate, train_one_epoch
    from training.losses import create_loss
    from training.schedule import create_schedule

    samples = discover(resolve_data(config.data))
    recommendation = load_recommendation(config, samples) if config.pipeline == "best" else None
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
    writer = None
    try:
        seed_globals(config.seed)
        model = create_model(config, num_classes).to(device)
        optimizer = create_optimizer_v2(model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
        updates_per_epoch = math.ceil(len(train_feed) / config.accum_steps)
        scheduler = create_schedule(config.scheduler, optimizer, config.epochs, updates_per_epoch,
                                    config.warmup_epochs)
        loss_fn = create_loss(config.loss, train.labels, num_classes, config.label_smoothing,
                              config.focal_gamma).to(device)
        progress = Progress()
        if config.resume:
            progress = restore(out, config, num_classes, model, optimizer, scheduler)
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
    finally:
        if writer is not None:
            writer.close()
        train_feed.feeder.close()
        val_feed.feeder.close()
    verdict = prediction_verdict([row["images_per_sec"] for row in progress.history], predicted)
    summary = {"best_macro_f1": progress.best_f1, "epochs_run": len(progress.history), "train_images": len(train),
               "val_images": len(val), "history": progress.history,
               "prediction": verdict, "config": config.to_dict(), "ranks": ctx.world_size}
    if main:
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
               "accuracy": metrics.accuracy, "data_wait_fraction": stats.data_wait_fraction,
               "images_per_sec": stats.images_per_sec, "predicted_ips": predicted}
        return Progress(epoch + 1, self.updates + stats.updates, metrics.macro_f1 if improved else self.best_f1,
                        0 if improved else self.stale + 1, (*self.history, row), improved)


def restore(out: Path, config: FitConfig, num_classes: int, model, optimizer, scheduler) -> Progress:
    """Load OUT/last.pt into the model, optimizer, scheduler and the global RNGs; where it stood."""
    from training.checkpoint import CheckpointError, load_checkpoint, set_rng_states

    state = load_checkpoint(out / LAST, config.model, num_classes)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {out / LAST} does not fit this model, optimizer or schedule "
                              f"(--opt/--sched changed?): {str(err).splitlines()[0]}") from err
    changed = sorted(k for k, v in state["config"].items()
                     if k not in ("resume", "epochs", "out") and config.to_dict().get(k) != v)
    if changed:
        print(f"warning: resuming with changed settings: {', '.join(changed)}", file=sys.stderr)
    set_rng_states(state["rng"])
    return Progress(state["epoch"] + 1, state["updates"], state["best_macro_f1"], state["epochs_since_best"],
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
    from bench.io import write_atomic
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


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from training.distributed import DistributedError

    try:
        fit(config_from_args(args))
    except (FeedError, MissingDependencyError, ValueError, DistributedError) as error:
        print(f"training.fit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
