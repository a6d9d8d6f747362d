"""Which rows a run measures and how each is built for a worker count: the naive reference, the
feedbench backends, the decode-only limit, and the user's ``--loader module:factory``."""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable

from torch.utils.data import Dataset

from bench.compare.config import DECODE_ONLY, KINDS, LITERAL, NAIVE, ROW_NAMES, CompareConfig, CompareError
from bench.compare.reference import NaiveTorchvisionDataset, decode_only_feeder, plain_loader
from feeding.backends import BACKENDS, capabilities

LoaderMaker = Callable[[int, str | None], Iterable]  # (workers, executor) -> yields (images, labels) batches


@dataclass(frozen=True)
class RowSpec:
    """A row to measure: its name, its kind, how to build it for a worker count, which counts."""

    name: str
    kind: str  # "reference" | "feedbench" | "dali" | "limit" | "user"
    make: LoaderMaker
    workers: tuple[int | None, ...]
    executors: tuple[str | None, ...] = (None,)  # None: the loader's own (plain loaders, "auto" feeders)

    @property
    def points(self) -> list[tuple[int | None, str | None]]:
        return [(workers, executor) for executor in self.executors for workers in self.workers]


def _feeder_maker(samples, config: CompareConfig, pipeline: str, literal: bool = False) -> LoaderMaker:
    from feeding.factory import create_feeder
    from feeding.feeder import FeedConfig

    def make(workers: int, executor: str | None):
        feed = FeedConfig(pipeline=pipeline, batch_size=config.batch, workers=workers, executor=executor or "auto",
                          spec=config.augmentation, literal_order=literal)
        return create_feeder(samples, feed)

    return make


def _dataset_maker(dataset: Dataset, batch: int) -> LoaderMaker:
    return lambda workers, executor: plain_loader(dataset, batch, workers)


def _builtin_maker(name: str, samples, config: CompareConfig) -> LoaderMaker:
    if name == NAIVE:
        naive = NaiveTorchvisionDataset(samples.paths.tolist(), samples.labels.tolist(), spec=config.augmentation)
        return _dataset_maker(naive, config.batch)
    if name == DECODE_ONLY:
        return lambda workers, executor: decode_only_feeder(samples, config.batch, workers, executor)
    if name == LITERAL:
        return _feeder_maker(samples, config, "pil", literal=True)
    return _feeder_maker(samples, config, name)


def builtin_rows(samples, config: CompareConfig, notes: list[str]) -> list[RowSpec]:
    """The rows of ``config.pipelines``, always in ROW_NAMES order; a backend whose package is missing
    is left out with a note."""
    workers = tuple(range(1, config.workers_max + 1))
    executors = {DECODE_ONLY: ("process", "thread")}  # the limit: the better of the two
    rows = []
    for name in ROW_NAMES:  # always in this order, whatever the order given
        if name not in config.pipelines:
            continue
        if name in BACKENDS and (why := capabilities(name).missing_dependency()):
            notes.append(f"{name}: not measured: {why}")
            continue
        rows.append(RowSpec(name, KINDS[name], _builtin_maker(name, samples, config), workers,
                            executors.get(name, (None,))))
    return rows


def resolve_factory(spec: str) -> Callable[[], object]:
    """The callable that ``module:factory`` names, or CompareError saying what is wrong."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CompareError(f"--loader {spec!r}: expected module:factory, e.g. mypackage.data:make_loader")
    # As `python -m` does: modules in the current directory are importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - the user's module may fail in any way while importing
        raise CompareError(f"--loader {spec!r}: cannot import module {module_name!r}: "
                           f"{type(error).__name__}: {error}") from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CompareError(f"--loader {spec!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise CompareError(f"--loader {spec!r}: {attribute!r} is a {type(target).__name__}, "
                           "not a callable factory")
    return target


def datamodule_train_loader(made):
    """A LightningDataModule's training loader, as it is (``feeding.lightning.train_loader``: after
    ``prepare_data()`` and ``setup("fit")``); anything else unchanged. A factory that returned a data
    module has imported Lightning, so without it nothing is imported here."""
    if "lightning" not in sys.modules or not hasattr(made, "train_dataloader"):
        return made
    from feeding.lightning import train_loader

    return train_loader(made)


def user_row(spec: str, batch: int, workers: tuple[int, ...]) -> RowSpec:
    """A Dataset is swept in a plain DataLoader; a LightningDataModule's training loader and anything
    else are measured as they are, once."""
    factory = resolve_factory(spec)
    try:
        made = datamodule_train_loader(factory())
    except Exception as error:  # noqa: BLE001 - the user's code may fail in any way
        raise CompareError(f"--loader {spec!r}: calling {spec} raised {type(error).__name__}: {error}") from None
    if isinstance(made, Dataset):
        return RowSpec(spec, "user", _dataset_maker(made, batch), workers)
    if not hasattr(made, "__iter__"):
        raise CompareError(f"--loader {spec!r}: the factory returned a {type(made).__name__}, which is not "
                           "iterable; return a DataLoader, an iterable of (images, labels) batches, or a Dataset")
    return RowSpec(spec, "user", lambda _workers, _executor: made, (getattr(made, "num_workers", None),))
