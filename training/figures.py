"""What a run draws: confusion-matrix PNGs and the grid of fed images (logged by ``training.loggers``).

No global matplotlib state (a Figure of its own, drawn by the Agg canvas).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

IMAGE_GRID_SIZE = 16  # images in the grid of what the model was fed


def confusion_png(confusion: torch.Tensor, classes: tuple[str, ...], title: str) -> bytes:
    """The confusion matrix (rows true, columns predicted) as PNG bytes; no global matplotlib state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(classes)
    width, height = 4 + 0.45 * n, 3 + 0.4 * n
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # Margins from the longest class name (7-pt ticks, ~0.6 em a character) rather than tight_layout,
    # which lays out every text once more: a third of the figure's time, paid every epoch.
    label = (max(map(len, classes), default=1) * 7 * 0.6 + 30) / 72  # inches: the names and an axis label
    fig.subplots_adjust(left=min(0.5, label / width), bottom=min(0.5, label / height), right=0.97,
                        top=1 - 0.45 / height)
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_confusion(out: Path, classes: tuple[str, ...], metrics, progress) -> bytes:
    """OUT/confusion-last.png for the epoch ``progress`` finished, and confusion-best.png when it improved;
    the PNG's bytes."""
    from feeding.io import write_atomic

    png = confusion_png(metrics.confusion, classes, f"epoch {progress.epoch}: macro-F1 {metrics.macro_f1:.3f}")
    write_atomic(out / "confusion-last.png", png)
    if progress.improved:
        write_atomic(out / "confusion-best.png", png)
    return png


def image_grid(images: torch.Tensor, feeder) -> torch.Tensor:
    """The first images of a fed batch, denormalized to [0, 1] (what the model saw, as a picture)."""
    from torchvision.utils import make_grid

    shown = images[:IMAGE_GRID_SIZE].float() * feeder.std + feeder.mean
    return make_grid(shown.clamp(0, 1).cpu(), nrow=8)
