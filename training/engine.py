"""One training epoch and one evaluation, whatever feeds them.

``feeder`` is anything with the DeviceFeeder contract: ``len()``, ``set_epoch()``, and iteration
yielding ``(float images, int64 labels)`` on the device. Time spent waiting for the next batch is
measured apart from time spent using it (as torchvision's ``MetricLogger.log_every``), with the
device synchronized before each clock read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from bench.consume import synchronizer


@dataclass(frozen=True)
class EpochStats:
    """One training epoch: mean loss per image, images seen, wall seconds, seconds waiting for data."""

    loss: float
    images: int
    seconds: float
    data_wait_s: float
    lr: float  # learning rate of the first parameter group during the epoch

    @property
    def images_per_sec(self) -> float:
        """Measured img/s, data wait included (what the feed and the model achieved together)."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_s / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EvalMetrics:
    macro_f1: float  # the headline
    accuracy: float
    confusion: torch.Tensor  # (classes, classes): rows true class, columns predicted
    images: int


def train_one_epoch(
    model: torch.nn.Module,
    feeder,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    epoch: int,
    amp: bool = False,
    accum_steps: int = 1,
    on_first_batch: Callable[[torch.Tensor], None] | None = None,
) -> EpochStats:
    """Train one epoch; gradients are accumulated over ``accum_steps`` batches per optimizer step.

    ``amp``: bfloat16 autocast (no loss scaling needed). ``on_first_batch`` sees the first batch
    of images as fed (e.g. to log what augmentation did).
    """
    model.train()
    feeder.set_epoch(epoch)
    device = next(model.parameters()).device
    sync = synchronizer(device)
    lr = optimizer.param_groups[0]["lr"]
    total_loss, images_seen, data_wait, steps = 0.0, 0, 0.0, len(feeder)
    optimizer.zero_grad(set_to_none=True)
    sync()
    started = waiting_since = time.perf_counter()
    for step, (images, labels) in enumerate(feeder):
        data_wait += time.perf_counter() - waiting_since
        if step == 0 and on_first_batch is not None:
            on_first_batch(images)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(images), labels)
        (loss / accum_steps).backward()
        if (step + 1) % accum_steps == 0 or step + 1 == steps:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total_loss += loss.item() * len(labels)  # .item() synchronizes: the step is finished
        images_seen += len(labels)
        waiting_since = time.perf_counter()
    sync()
    seconds = time.perf_counter() - started
    if images_seen == 0:
        raise RuntimeError("the training feeder delivered no batch")
    return EpochStats(total_loss / images_seen, images_seen, seconds, data_wait, lr)


@torch.no_grad()
def evaluate(model: torch.nn.Module, feeder, num_classes: int, amp: bool = False) -> EvalMetrics:
    """Macro-F1, accuracy and the confusion matrix over one pass of ``feeder`` (torchmetrics).

    Macro-F1 averages over the classes present in the targets or the predictions.
    """
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

    model.eval()
    device = next(model.parameters()).device
    metrics = MetricCollection({
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        "confusion": MulticlassConfusionMatrix(num_classes),
    }).to(device)
    images_seen = 0
    for images, labels in feeder:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        metrics.update(logits.float().argmax(dim=1), labels)
        images_seen += len(labels)
    if images_seen == 0:
        raise RuntimeError("the validation feeder delivered no batch")
    result = metrics.compute()
    return EvalMetrics(float(result["macro_f1"]), float(result["accuracy"]), result["confusion"].cpu(), images_seen)
