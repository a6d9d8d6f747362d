"""Where a run's logs go: TensorBoard (OUT/tb) and W&B (``--logger tensorboard,wandb``), behind one interface.

Every backend gets the same tags ("train/loss", "val/macro_f1", "train/lr", "feed/images_per_sec", ...) on
the same axis, the optimizer update, so that the lr of every update and the epoch's figures line up. W&B is
imported only when asked for; without a login it runs only with WANDB_MODE=offline, and never prompts.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from feeding.errors import MissingDependencyError

WANDB_PROJECT = "feedbench"
WANDB_RUN_ID = "wandb-run-id"  # OUT/wandb-run-id: the W&B run a --resume continues


class TensorBoardLogger:
    """OUT/tb; resumed at update ``resume_step``, the events after it (a killed run's) are purged."""

    def __init__(self, out: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tb"), purge_step=resume_step)

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """``image``: CHW, float in [0, 1]."""
        self.writer.add_image(tag, image, step)

    def log_png(self, tag: str, png: bytes, step: int) -> None:
        self.writer.add_image(tag, png_pixels(png), step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def png_pixels(png: bytes):
    """The PNG's RGB pixels, HxWx3 uint8 (a numpy array)."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def import_wandb():
    """The wandb module, or an error naming the extra that installs it."""
    try:
        import wandb
    except ImportError:
        raise MissingDependencyError("--logger wandb needs W&B: pip install -e '.[wandb]'") from None
    return wandb


def check_loggers(names: tuple[str, ...]) -> None:
    """Before the run starts: the W&B package and a login (or WANDB_MODE) where ``names`` has wandb."""
    if "wandb" in names:
        import_wandb()
        wandb_mode()


def wandb_mode() -> str | None:
    """The mode to run W&B in: WANDB_MODE's, else "online" with an API key (WANDB_API_KEY or a netrc entry
    for the W&B host); without one, an error saying how to get one, rather than W&B's login prompt."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_MODE"):
        return None  # wandb reads it itself
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if netrc.netrc(os.environ.get("NETRC")).authenticators(host):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    raise ValueError("--logger wandb: not logged in to W&B; set WANDB_MODE=offline (sync later with "
                     "`wandb sync`) or run `wandb login`")


class WandbLogger:
    """A W&B run in project "feedbench" under OUT, named after OUT; its id is kept in OUT/wandb-run-id, so
    that a resumed run (``resume_step`` not None) continues the same W&B run."""

    def __init__(self, out: Path, run_config: dict, resume_step: int | None) -> None:
        import secrets

        from feeding.io import write_atomic

        self.wandb = wandb = import_wandb()
        mode = wandb_mode()
        id_file = out / WANDB_RUN_ID
        run_id = id_file.read_text(encoding="utf-8").strip() if resume_step is not None and id_file.exists() \
            else None
        if run_id is None:
            run_id = secrets.token_hex(4)  # W&B's ids: lowercase letters and digits
            write_atomic(id_file, run_id.encode())
        try:
            self.run = wandb.init(project=WANDB_PROJECT, dir=str(out), name=out.resolve().name, id=run_id,
                                  resume="allow", config=run_config, mode=mode,
                                  settings=wandb.Settings(silent=True, console="off"))
        except wandb.errors.Error as error:
            raise ValueError(f"--logger wandb: {str(error).splitlines()[0]}") from None

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """``image``: CHW, float in [0, 1]."""
        self.run.log({tag: self.wandb.Image(image.permute(1, 2, 0).mul(255).round().byte().numpy())}, step=step)

    def log_png(self, tag: str, png: bytes, step: int) -> None:
        self.run.log({tag: self.wandb.Image(png_pixels(png))}, step=step)

    def flush(self) -> None:
        pass  # W&B writes as it logs

    def close(self) -> None:
        self.run.finish()


class RunLoggers:
    """Every logger the run asked for, fed alike."""

    def __init__(self, loggers: list) -> None:
        self.loggers = loggers

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_scalars(scalars, step)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        for logger in self.loggers:
            logger.log_image(tag, image, step)

    def log_png(self, tag: str, png: bytes, step: int) -> None:
        for logger in self.loggers:
            logger.log_png(tag, png, step)

    def grid_logger(self, feeder, step: int) -> Callable[[torch.Tensor], None]:
        """What ``run_epoch`` calls with its first batch: the grid of fed images, at update ``step``."""
        from training.figures import image_grid

        def log_grid(images: torch.Tensor) -> None:
            self.log_image("train/fed_images", image_grid(images, feeder), step)

        return log_grid

    def log_epoch(self, stats, metrics, progress, confusion_png: bytes) -> None:
        """The lr of every update of the epoch ``progress`` finished, then its figures and confusion matrix
        at its last update."""
        first = progress.updates - stats.updates + 1
        for update, lr in enumerate(stats.lrs, start=first):
            self.log_scalars({"train/lr": lr}, update)
        self.log_scalars({"train/loss": stats.loss, "train/epoch": progress.epoch,
                          "val/macro_f1": metrics.macro_f1, "val/accuracy": metrics.accuracy,
                          "feed/data_wait_fraction": stats.data_wait_fraction,
                          "feed/images_per_sec": stats.images_per_sec}, progress.updates)
        self.log_png("val/confusion", confusion_png, progress.updates)
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def create_loggers(names: tuple[str, ...], out: Path, run_config: dict, resume_step: int | None) -> RunLoggers:
    """The loggers ``names`` ("tensorboard", "wandb") for the run in ``out``; ``run_config``: what W&B
    records as the run's config; ``resume_step``: the update a resumed run continues from, else None."""
    loggers = []
    try:
        for name in names:
            if name == "tensorboard":
                loggers.append(TensorBoardLogger(out, resume_step))
            elif name == "wandb":
                loggers.append(WandbLogger(out, run_config, resume_step))
            else:
                raise ValueError(f"unknown logger {name!r}; choose from tensorboard, wandb")
    except BaseException:
        RunLoggers(loggers).close()
        raise
    return RunLoggers(loggers)
