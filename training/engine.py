"""One training epoch and one evaluation, whatever feeds them.

``feeder`` is anything with the DeviceFeeder contract: ``len()``, ``set_epoch()``, and iteration
yielding ``(float images, int64 labels)`` on the device. Time spent waiting for the next batch is
measured apart from time spent using it (as torchvision's ``MetricLogger.log_every``), with the
device synchronized before each clock read.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from training.step import StepConfig, TrainStep


@dataclass(frozen=True)
class EpochStats:
    """One training epoch: mean loss per image, images seen, wall seconds, seconds waiting for data,
    and the learning rate (first parameter group) of each optimizer update, in order."""

    loss: float
    images: int
    seconds: float
    data_wait_s: float
    lrs: tuple[float, ...]

    @property
    def updates(self) -> int:
        return len(self.lrs)

    @property
    def lr(self) -> float:
        """The learning rate of the epoch's last update."""
        return self.lrs[-1]

    @property
    def images_per_sec(self) -> float:
        """Measured img/s, data wait included (what the feed and the model achieved together)."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_s / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EpochSoFar:
    """The part of an epoch trained before a step checkpoint: what the epoch's stats need from it when
    a resumed run trains the rest (``run_epoch(resume=...)``). Seconds exclude the time between."""

    batches: int = 0
    loss_sum: float = 0.0  # loss x images, summed
    images: int = 0
    seconds: float = 0.0
    data_wait_s: float = 0.0
    lrs: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return {"batches": self.batches, "loss_sum": self.loss_sum, "images": self.images, "seconds": self.seconds,
                "data_wait_s": self.data_wait_s, "lrs": list(self.lrs)}

    @classmethod
    def from_dict(cls, record: dict) -> EpochSoFar:
        return cls(int(record["batches"]), float(record["loss_sum"]), int(record["images"]),
                   float(record["seconds"]), float(record["data_wait_s"]), tuple(float(x) for x in record["lrs"]))


@dataclass(frozen=True)
class EvalMetrics:
    macro_f1: float  # the headline
    accuracy: float
    confusion: torch.Tensor  # (classes, classes): rows true class, columns predicted
    images: int


def accumulation_group(step: int, steps: int, accum_steps: int) -> int:
    """How many batches share the optimizer update that batch ``step`` (of ``steps``) belongs to:
    ``accum_steps``, except in a shorter last group, whose loss must not be divided by more."""
    last_group_start = steps - (steps % accum_steps or accum_steps)
    return accum_steps if step < last_group_start else steps - last_group_start


def train_one_epoch(
    model: torch.nn.Module,
    feeder,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    epoch: int,
    *,
    scheduler=None,
    updates_done: int = 0,
    amp: bool = False,
    accum_steps: int = 1,
    on_first_batch: Callable[[torch.Tensor], None] | None = None,
    step_config: StepConfig | None = None,
) -> EpochStats:
    """Train one epoch of ``model`` (see ``run_epoch``); ``step_config`` (default: ``amp`` and
    ``accum_steps`` with the other settings' defaults) says how each step runs."""
    config = step_config or StepConfig(amp=amp, accum_steps=accum_steps)
    step = TrainStep(model, optimizer, loss_fn, config, next(model.parameters()).device)
    return run_epoch(step, feeder, epoch, scheduler=scheduler, updates_done=updates_done,
                     on_first_batch=on_first_batch)


def run_epoch(step, feeder, epoch: int, *, scheduler=None, updates_done: int = 0,
              on_first_batch: Callable[[torch.Tensor], None] | None = None,
              max_batches: int | None = None,
              on_batch_done: Callable[[int, float], None] | None = None,
              resume: EpochSoFar | None = None,
              on_update: Callable[[int, Callable[[], EpochSoFar]], None] | None = None) -> EpochStats:
    """One epoch of ``step`` (a ``TrainStep`` or ``SimStep``) on ``feeder``'s batches: what training.fit
    runs, and what feedbench tune's end-to-end check measures.

    Gradients are accumulated over ``step.config.accum_steps`` batches per optimizer update;
    ``scheduler`` (timm's interface) gets ``step_update(n)`` after update number n, counted from
    ``updates_done``. The loss is read back every ``step.config.loss_every`` batches (each read
    waits for the device). ``on_first_batch`` sees the first batch of images as fed.
    ``max_batches``: stop after that many (a measurement); the epoch's iterator is closed.
    ``on_batch_done(images, perf_counter seconds)`` is told when each batch's work is done on the
    host (a measurement's clock; with ``loss_every`` 1 the device has finished it too).
    ``resume``: the part of this epoch a step checkpoint holds; the feeder has been given that
    checkpoint's state, so its first batch is batch ``resume.batches`` (``updates_done`` still counts
    the updates before the epoch). ``on_update(n, so_far)`` is called after the epoch's update
    number n (counted from its start), but its last; ``so_far()`` reads the pending losses back and
    gives the epoch so far (what a step checkpoint saves).
    """
    config = step.config
    step.train()
    feeder.set_epoch(epoch)
    done = resume or EpochSoFar()
    steps = len(feeder) if max_batches is None else min(len(feeder), max_batches)
    pending, counts, lrs = [], [], list(done.lrs)
    total_loss, images_seen, data_wait = done.loss_sum, done.images, done.data_wait_s
    step.synchronize()
    started = waiting_since = time.perf_counter() - done.seconds
    batches = iter(feeder)
    number = done.batches - 1

    def so_far() -> EpochSoFar:
        nonlocal total_loss, pending, counts
        if pending:
            total_loss += step.read(pending, counts)
            pending, counts = [], []
        step.synchronize()
        return EpochSoFar(number + 1, total_loss, images_seen, time.perf_counter() - started, data_wait, tuple(lrs))

    try:
        for number, (images, labels) in enumerate(batches, done.batches):
            data_wait += time.perf_counter() - waiting_since
            if number == 0 and on_first_batch is not None:
                on_first_batch(images)
            updates_now = (number + 1) % config.accum_steps == 0 or number + 1 == steps
            # Under DDP, gradients are all-reduced only on the batch that completes an update.
            pending.append(step.run(images, labels, accumulation_group(number, steps, config.accum_steps),
                                    sync_gradients=updates_now))
            counts.append(len(labels))
            images_seen += len(labels)
            if updates_now:
                lrs.append(step.lr)
                step.update()
                if scheduler is not None:
                    scheduler.step_update(updates_done + len(lrs))
            if len(pending) == config.loss_every or number + 1 == steps:
                total_loss += step.read(pending, counts)  # waits for the device: the steps are done
                pending, counts = [], []
            if updates_now and on_update is not None and number + 1 < steps:  # the last: the epoch's own checkpoint
                on_update(len(lrs), so_far)
            waiting_since = time.perf_counter()
            if on_batch_done is not None:
                on_batch_done(len(labels), waiting_since)
            if max_batches is not None and number + 1 >= max_batches:
                break  # a measurement's end: closing the epoch's iterator below stops its workers
    finally:
        if hasattr(batches, "close"):
            batches.close()
    if pending:
        total_loss += step.read(pending, counts)
    step.synchronize()
    seconds = time.perf_counter() - started
    if images_seen == 0:
        raise RuntimeError("the training feeder delivered no batch")
    return EpochStats(total_loss / images_seen, images_seen, seconds, data_wait, tuple(lrs))


@torch.no_grad()
def evaluate(model: torch.nn.Module, feeder, num_classes: int, amp: bool = False) -> EvalMetrics:
    """Macro-F1, accuracy and the confusion matrix over one pass of ``feeder`` (torchmetrics).

    Macro-F1 averages over the classes present in the targets or the predictions.
    """
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
    )

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
