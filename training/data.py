"""What a run trains and validates on: the data set (at least 2 classes), its person-level split
or a fold, and the two feeds on the device (this rank's shard under DDP)."""
from __future__ import annotations

import sys

import numpy as np
import torch

from feeding.errors import FeedError
from training.config import FitConfig


def load_samples(config: FitConfig):
    """The data set, listing problems handled per ``on_bad``; a FeedError unless 2 classes have images."""
    from feeding.sample import resolve_data
    from feeding.sources import discover

    samples = discover(resolve_data(config.data), on_bad=config.on_bad)
    present = [samples.classes[label] for label in np.unique(samples.labels)]
    if len(present) < 2:
        raise FeedError(f"need at least 2 classes to train a classifier; {samples.root} has {len(present)}: "
                        f"{', '.join(present)}")
    return samples


def split_data(samples, config: FitConfig, split: tuple | None):
    """(train, val) Samples: ``split``'s indices (a fold), else a person-level split; a clear
    FeedError where a side would be empty, a warning for each class a side lacks."""
    from feeding.sources import person_split

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
    warn_missing_classes(samples, train, val)
    return train, val


def warn_missing_classes(samples, train, val) -> None:
    """A warning on stderr for each side of the split that lacks some of the data set's classes."""
    from feeding.sources import missing_classes

    for side, part, consequence in (
            ("training", train, "the model cannot learn them"),
            ("validation", val, ("macro-F1 averages over the classes that appear in the validation "
                                 "images or the predictions"))):
        absent = missing_classes(part)
        if absent:
            print(f"warning: {len(absent)} of {len(samples.classes)} classes have no {side} image "
                  f"({consequence}): {', '.join(absent)}", file=sys.stderr)


def create_feeders(config: FitConfig, train, val, ctx=None, device: torch.device | None = None,
                   channels_last: bool = False):
    """Training feed (this rank's shard) and validation feed (this rank's exact slice: no padding,
    so that the metrics reduced over ranks count every validation image once); ``channels_last``:
    both deliver their batches in that memory format (the training step's)."""
    from feeding import FeedConfig, create_feeder
    from feeding.backends import capabilities
    from feeding.device import DeviceFeeder
    from feeding.feeder import shard_indices
    from training import distributed
    from feeding.resampled import ResampledFeeder
    from training.sampling import balanced_indices

    ctx = ctx or distributed.DistContext()
    device = device or torch.device(config.device)
    decode_device = capabilities(config.pipeline).decode_device(str(device))
    common = {"pipeline": config.pipeline, "batch_size": config.batch, "workers": config.workers,
              "seed": config.seed, "decode_device": decode_device, "on_bad": config.on_bad}
    train_config = distributed.shard_feed(FeedConfig(spec=config.train_augmentation, **common), ctx, device)
    if config.balanced:
        labels = train.labels
        train_feeder = ResampledFeeder(train, train_config, lambda epoch: balanced_indices(labels, config.seed, epoch))
    else:
        train_feeder = create_feeder(train, train_config)
    train_feed = DeviceFeeder(train_feeder, device, channels_last=channels_last)
    try:  # a validation feed that cannot be built (or Ctrl-C now) must not leave the training workers behind
        if ctx.enabled:
            val = val.subset(shard_indices(len(val), ctx.rank, ctx.world_size))
        val_feed = DeviceFeeder(create_feeder(val, FeedConfig(spec=config.eval_augmentation, shuffle=False,
                                                              drop_last=False, **common)), device,
                                channels_last=channels_last)
    except BaseException:
        train_feeder.close()
        raise
    return train_feed, val_feed  # a batch beyond the training split was refused when its feeder was built
