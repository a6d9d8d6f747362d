"""What a run draws and logs: confusion-matrix PNGs, the grid of fed images, TensorBoard scalars.

No global matplotlib state (a Figure of its own, drawn by the Agg canvas); TensorBoard's axis is
the optimizer update, so that the lr of every update and the epoch's figures line up.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import torch

IMAGE_GRID_SIZE = 16  # images in the grid of what the model was fed


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


def write_confusion(out: Path, classes: tuple[str, ...], metrics, progress) -> None:
    """OUT/confusion-last.png for the epoch ``progress`` finished, and confusion-best.png when it improved."""
    from feeding.io import write_atomic

    png = confusion_png(metrics.confusion, classes, f"epoch {progress.epoch}: macro-F1 {metrics.macro_f1:.3f}")
    write_atomic(out / "confusion-last.png", png)
    if progress.improved:
        write_atomic(out / "confusion-best.png", png)


def image_grid(images: torch.Tensor, feeder) -> torch.Tensor:
    """The first images of a fed batch, denormalized to [0, 1] (what the model saw, as a picture)."""
    from torchvision.utils import make_grid

    shown = images[:IMAGE_GRID_SIZE].float() * feeder.std + feeder.mean
    return make_grid(shown.clamp(0, 1).cpu(), nrow=8)


def grid_logger(writer, feeder, step: int) -> Callable[[torch.Tensor], None]:
    """What ``train_one_epoch`` calls with its first batch: the grid of fed images, at update ``step``."""
    def log_grid(images: torch.Tensor) -> None:
        writer.add_image("train/fed_images", image_grid(images, feeder), step)

    return log_grid


def log_epoch(writer, stats, metrics, progress) -> None:
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
