"""What a run says on the console: what it trains, each epoch, the feeds' warnings, and every file
or listing row it left out (all of them also go to summary.json). Only rank 0 speaks."""
from __future__ import annotations

import sys
from pathlib import Path

SHOWN_SKIPS = 20  # skipped files listed on the console (all of them go to summary.json)


def start_line(config, step, train_images: int, val_images: int, num_classes: int, device, ctx) -> str:
    """The run's first line: model, split, feed, device (and the ranks, under DDP) and the training step."""
    ranks = f", {ctx.world_size} ranks" if ctx.enabled else ""
    return (f"fit: {config.model} on {train_images} train / {val_images} val images ({num_classes} classes); "
            f"feed {config.pipeline}{' balanced' if config.balanced else ''}, {config.workers} workers, "
            f"batch {config.batch}, {config.size[0]}x{config.size[1]}"
            f"{f' (spec {config.spec.name})' if config.spec is not None else ''}, device {device}{ranks}; "
            f"step: {step_description(step)}")


def step_description(step) -> str:
    """'adamw, bf16, channels_last, cudnn.benchmark, loss read every 1' (a ``training.step.StepConfig``)."""
    parts = [step.optimizer, "bf16" if step.amp else "fp32", "channels_last" if step.channels_last else "NCHW"]
    if step.cudnn_benchmark:
        parts.append("cudnn.benchmark")
    if step.accum_steps > 1:
        parts.append(f"{step.accum_steps} batches per update")
    return ", ".join([*parts, f"loss read every {step.loss_every}"])


def epoch_line(epoch: int, epochs: int, stats, metrics, predicted: float | None) -> str:
    """One epoch (0-based ``epoch`` of ``epochs``): loss, lr, validation, data wait and img/s against
    the predicted rate where one applies."""
    versus = f" (predicted {predicted:.1f}: {100 * (stats.images_per_sec / predicted - 1):+.0f}%)" \
        if predicted else ""
    return (f"epoch {epoch + 1}/{epochs}: loss {stats.loss:.4f}  lr {stats.lr:.2e}  "
            f"val macro-F1 {metrics.macro_f1:.4f}  accuracy {metrics.accuracy:.4f}  "
            f"data wait {100 * stats.data_wait_fraction:.1f}%  {stats.images_per_sec:.1f} img/s{versus}")


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
