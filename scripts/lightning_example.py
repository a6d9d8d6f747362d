"""Train a timm model with ``lightning.Trainer`` on feedbench feeders (``feeding.lightning``).

    .venv/bin/python scripts/lightning_example.py --pipeline albumentations --model resnet18 --size 64 --epochs 5

The data is the embedded sample (or ``--data``), split by person as ``training.fit`` splits it;
the model, the optimizer (timm's AdamW) and the cosine schedule (stepped per update) are
``training``'s own factories, so that the same flags give ``python -m training.fit``'s settings
(with ``--label-smoothing`` there). Every epoch prints the validation macro-F1 (torchmetrics, as
``training.engine.evaluate``), the end prints the best. Lightning's logs and checkpoints go to
``--out`` (``logs/version_N/metrics.csv``; ``checkpoints/best.ckpt``, and ``checkpoints/last.ckpt`` at
every epoch's end, with the training feeder's state: ``--resume`` continues from it).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository's packages are importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning
import torch
from torchmetrics.classification import MulticlassF1Score

from feeding.backends import PIPELINES
from feeding.lightning import FeedDataConfig, FeedDataModule
from feeding.options import non_negative_int, positive_int
from feeding.options import size as size_arg


class Classifier(lightning.LightningModule):
    """A ``training.models.build_model`` model trained with label-smoothed cross-entropy, AdamW and a
    cosine schedule stepped per update; logs ``val_macro_f1`` each epoch. The model is built in
    ``setup()``, from ``seed``, for the data module's classes."""

    def __init__(self, model: str, lr: float, label_smoothing: float = 0.1, weight_decay: float = 0.05,
                 seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: torch.nn.Module | None = None
        self.val_f1: MulticlassF1Score | None = None
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.history: list[tuple[int, float]] = []  # (epoch, validation macro-F1)

    def setup(self, stage: str) -> None:
        if self.net is not None:
            return
        from feeding.seeding import seed_globals
        from training.models import build_model

        num_classes = self.trainer.datamodule.num_classes  # the data module's setup() ran first
        seed_globals(self.hparams.seed)  # the initial weights, as training.fit draws them
        self.net = build_model(self.hparams.model, num_classes)
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = self.loss_fn(self(images), labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        self.val_f1.update(self(images).argmax(dim=1), labels)

    def on_validation_epoch_end(self) -> None:
        macro_f1 = float(self.val_f1.compute())  # reduced over ranks under DDP
        self.val_f1.reset()
        if self.trainer.sanity_checking:
            return
        self.log("val_macro_f1", macro_f1, sync_dist=True)  # the same on every rank: its mean is itself
        self.history.append((self.current_epoch, macro_f1))
        if self.trainer.is_global_zero:
            print(f"epoch {self.current_epoch + 1}: val macro-F1 {macro_f1:.3f}", flush=True)

    def configure_optimizers(self):
        from training.schedule import create_schedule
        from training.step import StepConfig, create_optimizer

        hp, epochs = self.hparams, self.trainer.max_epochs
        optimizer = create_optimizer(self.net, StepConfig(optimizer="adamw", lr=hp.lr, weight_decay=hp.weight_decay))
        schedule = create_schedule("cosine", optimizer, epochs, self.trainer.estimated_stepping_batches // epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step_update(num_updates=self.trainer.global_step)  # timm's: a function of the updates done


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a timm model with lightning.Trainer on feedbench feeders.")
    p.add_argument("--pipeline", choices=PIPELINES, default="albumentations")
    p.add_argument("--model", default="resnet18", help="timm model name or package.module:factory")
    p.add_argument("--size", type=size_arg, default="96", help="output size N or HxW")
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--epochs", type=positive_int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="competition layout, ImageFolder or CSV manifest; without it, the sample")
    p.add_argument("--accelerator", default="cpu", help="lightning's accelerator: cpu, gpu, auto")
    p.add_argument("--devices", default="auto", help="lightning's devices (several: DDP)")
    p.add_argument("--out", default="runs/lightning", help="lightning's logs and checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    return p


def make_datamodule(args: argparse.Namespace) -> FeedDataModule:
    """The data module ``args`` ask for: ``training.fit``'s split and specs at ``--size``."""
    return FeedDataModule(FeedDataConfig.at_size(args.size, data=args.data, pipeline=args.pipeline,
                                                 batch=args.batch, workers=args.workers, seed=args.seed))


def datamodule() -> FeedDataModule:
    """The example's data module at its defaults, for ``feedbench compare --loader
    scripts.lightning_example:datamodule`` (which measures its training loader as it is)."""
    return make_datamodule(get_args_parser().parse_args([]))


def build(args: argparse.Namespace, callbacks: tuple = ()) -> tuple[lightning.Trainer, Classifier, FeedDataModule]:
    """The trainer, the model and the data module that ``args`` ask for."""
    from lightning.pytorch import callbacks as checkpoints

    from training.models import training_threads

    data = make_datamodule(args)
    ckpt_dir = Path(args.out) / "checkpoints"
    trainer = lightning.Trainer(
        accelerator=args.accelerator, devices=args.devices, max_epochs=args.epochs,
        use_distributed_sampler=False,  # each rank's feeder reads its shard (FeedDataModule.setup)
        default_root_dir=args.out,
        logger=lightning.pytorch.loggers.CSVLogger(args.out, name="logs"),  # logs/version_N: a new N each run
        callbacks=[checkpoints.ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_macro_f1", mode="max",
                                               enable_version_counter=False),
                   # every epoch (save_last=True saves only when a best checkpoint is saved)
                   checkpoints.ModelCheckpoint(dirpath=ckpt_dir, filename="last", enable_version_counter=False),
                   *callbacks],
        num_sanity_val_steps=0, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    if args.accelerator == "cpu":  # the cores the loader's workers leave, as training.fit gives the model
        torch.set_num_threads(training_threads("cpu", os.cpu_count() or 1, args.workers))
    model = Classifier(args.model, args.lr, label_smoothing=args.label_smoothing, seed=args.seed)
    return trainer, model, data


def last_checkpoint(out: str) -> Path:
    """Where the example's end-of-epoch checkpoint is."""
    return Path(out) / "checkpoints" / "last.ckpt"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    trainer, model, data = build(args)
    trainer.fit(model, datamodule=data, ckpt_path=str(last_checkpoint(args.out)) if args.resume else None)
    if model.history and trainer.is_global_zero:
        epoch, best = max(model.history, key=lambda item: item[1])
        print(f"best val macro-F1 {best:.3f} (epoch {epoch + 1})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
