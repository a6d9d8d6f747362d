"""feedbench feeders as a Lightning 2.x ``LightningDataModule`` (``pip install 'feedbench[lightning]'``).

    from feeding.lightning import FeedDataConfig, FeedDataModule
    data = FeedDataModule(FeedDataConfig(data="data/train", pipeline="albumentations", batch=64, workers=4))
    lightning.Trainer(max_epochs=10, use_distributed_sampler=False).fit(model, datamodule=data)

``train_dataloader()`` and ``val_dataloader()`` return the feedbench Feeders themselves: uint8
(N, 3, H, W) images and int64 labels, a ``len()`` in batches, which Lightning's loops iterate as
they would a DataLoader. Lightning moves the batch to the device, and ``on_after_batch_transfer``
normalizes it there with the spec's ``Normalize`` (the training spec's while training, the eval
spec's otherwise), so the host-to-device copy stays uint8.

Lightning is imported here only: importing ``feeding`` never imports it.

Sharding under DDP: ``setup()`` reads the rank and world size from the trainer
(``trainer.global_rank``, ``trainer.world_size``) and builds this rank's feeders, as
``training.fit`` does under torchrun: the training feeder reads its shard (``FeedConfig.shard_id``
/ ``num_shards``), the validation feeder an exact slice (no padding). Lightning injects a
DistributedSampler only into torch DataLoaders, which a Feeder is not; pass
``Trainer(use_distributed_sampler=False)`` all the same, to say so.

Epochs: each training epoch starts the training feeder at ``trainer.current_epoch`` (a callback
this module adds to the trainer in ``setup()``), so the shuffle and the augmentation draws are
those of (seed, epoch, batch number), as in ``training.fit``.

Checkpoints: ``state_dict()`` is the training feeder's state (``Feeder.state_dict``: its epoch and
the batches of it delivered, with the fingerprint of its stream), which Lightning 2.x saves in every
checkpoint under this class's name and gives back to ``load_state_dict()`` on ``fit(ckpt_path=...)``
(after ``setup()``). What holds on a resume:

- from an end-of-epoch checkpoint (ModelCheckpoint's default): exact. The state says (next epoch,
  batch 0), Lightning resumes at that epoch, and the feeder delivers that epoch's stream from its
  first batch.
- from a mid-epoch checkpoint (``ModelCheckpoint(every_n_train_steps=N)``): the data stream is exact.
  Lightning does not read ahead of a loader with a ``len()``, so the state names the last batch
  trained; Lightning's fit loop also saves the state of a training loader that has
  ``state_dict``/``load_state_dict`` (a Feeder has) in its loop state and loads it back before the
  epoch continues, and either way the feeder's next batch is the one after the checkpoint's,
  without decoding those before. The weights then end as those of a run never stopped where the model
  draws nothing from torch's global generators (tested on the CPU, ``tests/test_lightning.py``);
  Lightning does not save those generators, so dropout and drop-path masks differ after the resume,
  and the epoch's logged training means count only the batches after it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from feeding import checks
from feeding.backends import PIPELINES
from feeding.device import normalize_uint8
from feeding.errors import MissingDependencyError
from feeding.feeder import ON_BAD, Feeder
from feeding.sources import Samples
from feeding.spec import AugSpec, Normalize, eval_spec, train_spec
from feeding.spec_file import default_eval


def missing_lightning(error: ImportError) -> MissingDependencyError:
    """The error for a machine without Lightning, naming the extra to install."""
    return MissingDependencyError(
        f"feeding.lightning needs Lightning 2.x: pip install 'feedbench[lightning]' (or 'lightning>=2.4,<3')  ({error})"
    )


try:
    import lightning
except ImportError as error:
    raise missing_lightning(error) from error


@dataclass(frozen=True)
class FeedDataConfig:
    """What the data module feeds; validated when built.

    ``data``: a data set path (competition layout, ImageFolder or CSV manifest), its ``Samples``, or
    None for the embedded sample. Split by person (``val_fraction`` of the people, classes
    stratified, ``seed``), as ``training.fit`` splits. ``batch``: images per batch; ``workers``: the
    pipeline's workers. ``train_augmentation``: the training feed's spec; ``eval_augmentation``: the
    validation feed's (None: a resize to the training output size, with its Normalize).
    """

    data: str | Samples | None = None
    pipeline: str = "albumentations"
    batch: int = 32
    workers: int = 2
    seed: int = 0
    val_fraction: float = 0.2
    train_augmentation: AugSpec = field(default_factory=train_spec)
    eval_augmentation: AugSpec | None = None
    on_bad: str = "skip"

    def __post_init__(self) -> None:
        checks.choice("pipeline", self.pipeline, PIPELINES)
        checks.choice("on_bad", self.on_bad, ON_BAD)
        checks.count("batch", self.batch)
        checks.count("workers", self.workers, minimum=0)
        checks.positive("val_fraction", self.val_fraction, maximum=1, open_maximum=True)
        if isinstance(self.data, os.PathLike):
            object.__setattr__(self, "data", os.fspath(self.data))
        if self.data is not None and not isinstance(self.data, (str, Samples)):
            raise TypeError(f"data must be a path, Samples or None, got {type(self.data).__name__}")
        if not isinstance(self.train_augmentation, AugSpec):
            raise TypeError(f"train_augmentation must be an AugSpec, got {type(self.train_augmentation).__name__}")
        if self.eval_augmentation is None:
            object.__setattr__(self, "eval_augmentation", default_eval(self.train_augmentation))
        elif not isinstance(self.eval_augmentation, AugSpec):
            raise TypeError(f"eval_augmentation must be an AugSpec, got {type(self.eval_augmentation).__name__}")

    @classmethod
    def at_size(cls, size, degrees: float = 10.0, **settings) -> FeedDataConfig:
        """The specs ``training.fit`` uses without ``--spec``: the benchmark spec and ``eval_spec`` at ``size``
        (pixels: an int for a square, or (height, width))."""
        size = checks.size("size", size)
        return cls(train_augmentation=train_spec(size, degrees), eval_augmentation=eval_spec(size), **settings)

    def fit_config(self, device: torch.device):
        """The ``training.config.FitConfig`` that ``training.data``'s functions read (data, split, feed)."""
        from feeding.spec_file import SpecFile
        from training.config import FitConfig

        return FitConfig(pipeline=self.pipeline, data=self.data if isinstance(self.data, str) else None,
                         batch=self.batch, workers=self.workers, seed=self.seed, val_fraction=self.val_fraction,
                         on_bad=self.on_bad, device=str(device),
                         spec=SpecFile(self.train_augmentation, self.eval_augmentation, name="<FeedDataConfig>"))


class FeedDataModule(lightning.LightningDataModule):
    """Training and validation Feeders for ``lightning.Trainer`` (see the module's docstring)."""

    def __init__(self, config: FeedDataConfig) -> None:
        super().__init__()
        if not isinstance(config, FeedDataConfig):
            raise TypeError(f"config must be a FeedDataConfig, got {type(config).__name__}")
        self.config = config
        self.train_feeder: Feeder | None = None
        self.val_feeder: Feeder | None = None
        self.classes: tuple[str, ...] = ()
        self._closed = False
        self._pending_state: dict | None = None  # a state loaded before setup() built the training feeder
        self._normalizers: dict = {}  # (spec, device) -> (mean, std) on that device

    # -- building

    def prepare_data(self) -> None:
        """Writes the embedded sample on first use (once per node, before ``setup``)."""
        if self.config.data is None:
            from feeding.sample import ensure_sample

            ensure_sample()

    def setup(self, stage: str | None = None) -> None:
        """This rank's feeders, built once (again after ``teardown``, at the training feeder's state)."""
        if self.train_feeder is not None and not self._closed:
            return
        from training import data as training_data
        from training.distributed import DistContext

        trainer = self.trainer
        ctx = DistContext() if trainer is None else DistContext(trainer.global_rank, trainer.world_size,
                                                                trainer.local_rank)
        device = torch.device("cpu") if trainer is None else trainer.strategy.root_device
        fit = self.config.fit_config(device)
        samples = self.config.data if isinstance(self.config.data, Samples) else training_data.load_samples(fit)
        train, val = training_data.split_data(samples, fit, None)
        previous = self.train_feeder.state_dict() if self.train_feeder is not None else self._pending_state
        train_feed, val_feed = training_data.create_feeders(fit, train, val, ctx, device)
        # The Feeders inside the device wrappers: Lightning moves their uint8 batches and
        # on_after_batch_transfer normalizes them.
        self.train_feeder, self.val_feeder = train_feed.feeder, val_feed.feeder
        self.classes, self._closed, self._pending_state = samples.classes, False, None
        if previous:
            self.train_feeder.load_state_dict(previous)
        if trainer is not None and not any(isinstance(c, _FeederEpochs) for c in trainer.callbacks):
            trainer.callbacks.append(_FeederEpochs())

    def teardown(self, stage: str | None = None) -> None:
        """Stops the feeders' workers; the training feeder's state stays readable."""
        for feeder in (self.train_feeder, self.val_feeder):
            if feeder is not None:
                feeder.close()
        self._closed = True

    @property
    def num_classes(self) -> int:
        if not self.classes:
            raise RuntimeError("FeedDataModule.num_classes is known after setup()")
        return len(self.classes)

    def train_dataloader(self) -> Feeder:
        return self._built(self.train_feeder)

    def val_dataloader(self) -> Feeder:
        return self._built(self.val_feeder)

    def _built(self, feeder: Feeder | None) -> Feeder:
        if feeder is None:
            raise RuntimeError("FeedDataModule: call setup() before asking for a loader (a Trainer does)")
        return feeder

    def set_epoch(self, epoch: int) -> None:
        """The epoch (and so the shuffle) the training feeder's next pass delivers."""
        self._built(self.train_feeder).set_epoch(epoch)

    # -- the device step

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 images on the device -> float32 normalized with the spec's Normalize."""
        images, labels = batch
        training = self.trainer is None or self.trainer.training
        spec = self.config.train_augmentation if training else self.config.eval_augmentation
        mean, std = self._normalizer(spec.normalize or Normalize(), images.device)
        return normalize_uint8(images, mean, std, torch.float32), labels

    def _normalizer(self, norm: Normalize, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (norm, device)
        if key not in self._normalizers:
            self._normalizers[key] = (torch.tensor(norm.mean, device=device).view(1, 3, 1, 1),
                                      torch.tensor(norm.std, device=device).view(1, 3, 1, 1))
        return self._normalizers[key]

    # -- checkpoints

    def state_dict(self) -> dict:
        """The training feeder's state (``Feeder.state_dict``); {} before ``setup``, which Lightning leaves out."""
        if self.train_feeder is None:
            return dict(self._pending_state or {})
        return self.train_feeder.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue the training feeder from ``state_dict`` (now, or when ``setup`` builds it); a state of
        another stream is refused (``feeding.state.FeederStateError``)."""
        if self.train_feeder is None:
            self._pending_state = dict(state_dict)
        else:
            self.train_feeder.load_state_dict(state_dict)


class _FeederEpochs(lightning.Callback):
    """Starts each training epoch's feed at ``trainer.current_epoch``. Lightning calls
    ``on_train_epoch_start`` after it has made the loader's iterator and before its first batch (a
    Feeder's iterator reads its epoch then), and not when it resumes in the middle of an epoch, where
    the loaded state stands."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if isinstance(trainer.datamodule, FeedDataModule):
            trainer.datamodule.set_epoch(trainer.current_epoch)


def train_loader(made):
    """``made``'s training loader where it is a LightningDataModule (after ``prepare_data()`` and
    ``setup("fit")``), else ``made`` as it is: what ``feedbench compare --loader`` measures."""
    if not isinstance(made, lightning.LightningDataModule):
        return made
    made.prepare_data()
    made.setup("fit")
    return made.train_dataloader()


__all__ = ["FeedDataConfig", "FeedDataModule", "missing_lightning", "train_loader"]
