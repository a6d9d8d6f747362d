"""``feedbench compare``: every pipeline, each at its best worker count, on the same files.

    feedbench compare [--data DIR] [--workers-max N] [--batch 64] [--size 224] [--batches N]
                      [--repeats R] [--rounds R] [--loader module:factory] [--out results]
                      [--pipelines ...]

Rows, all measured in one process with the same spec (rotate ±10°, resize, flip):

- ``naive``: the reference, what a typical user writes (``NaiveTorchvisionDataset`` in a
  plain DataLoader): torchvision transforms on PIL images, float tensors normalized on the CPU.
- ``pil``, ``albumentations``, ``dali``: the feedbench pipelines (DALI on the CPU; its
  "workers" are DALI threads).
- ``decode-only``: full-resolution decode and nothing else, with the fastest decoder the
  CPU pipelines have (libjpeg-turbo through simplejpeg for JPEGs), in worker processes and in
  worker threads: the better of the two is this machine's limit for these files.
- ``--loader module:factory``: the user's own loader, measured as it is.

A user's own data has bad files: every row skips the files it cannot read (the naive row
as a user's try/except does: the next file instead) and states how many; the notes name
each skipped file once. A row whose loader raises is reported as failed, with its error,
and the other rows are measured and compared without it (exit code 1).

Each row sweeps workers 1..--workers-max (the feedbench rows with the executor the planner
picks, decode-only with both) to find its best point; every sweep point goes to the JSON.
Then ``--rounds`` rounds measure every row's best point once each, in turn (the order
rotated each round), so that all rows share the machine's slow and fast spells: a row's
rate is its median over the rounds, and each ratio is the median of the per-round ratios.
On a shared 2-core VM single windows vary by ±20%; rows measured minutes apart can be
off from each other by as much, paired rounds are not.
A plain DataLoader is timed by ``measure_feeder`` through
``EpochIterable``, so every row has the same warm-up, first-batch and window rules.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import multiprocessing
import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from feeding.options import FlattenList, HelpFormatter, listed, whole_number
from feeding.options import size as size_arg
from bench.measure import EpochIterable, FeedMeasurement, measure_feeder
from bench.stats import Summary, summarize
from feeding import decode
from feeding.backends.host import HostTransform
from feeding.errors import BadFile, FeedError, MissingDependencyError
from feeding.feeder import Feeder
from feeding.plan import make_plan
from feeding.spec import IMAGENET_MEAN, IMAGENET_STD, AugSpec, Resize, Shape, train_spec

NAIVE = "naive"
DECODE_ONLY = "decode-only"
HOST_PIPELINES = ("pil", "albumentations")  # the feedbench CPU pipelines the headline figures use
ROW_NAMES = (NAIVE, *HOST_PIPELINES, "dali", DECODE_ONLY)
KINDS = {NAIVE: "reference", "pil": "feedbench", "albumentations": "feedbench", "dali": "dali",
         DECODE_ONLY: "limit"}  # fmt: skip

LoaderMaker = Callable[[int, str | None], Iterable]  # (workers, executor) -> yields (images, labels) batches


class CompareError(Exception):
    """Bad input to ``feedbench compare``, stated so the user can act on it (exit code 2)."""


# ---------------------------------------------------------------- the naive reference and the limit


UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)  # what PIL raises for a file it cannot open


class NaiveTorchvisionDataset(Dataset):
    """REFERENCE ONLY, not a feedbench pipeline: the loader a typical user writes.

    PIL opens each file, torchvision rotates the full-resolution image *before*
    resizing it, and ``ToTensor``/``Normalize`` make float tensors on the CPU;
    a plain DataLoader then collates them with ``default_collate``. Kept exactly
    as written in tutorials: it is the baseline the other rows are compared with.

    A file PIL cannot open is what a user's try/except does with it: skipped, and the
    next file taken in its place. Which files were skipped is kept in shared memory
    (one flag per file), so the DataLoader's worker processes report them too.
    """

    def __init__(self, paths: Iterable[str], labels: Iterable[int], size: Shape = (224, 224),
                 degrees: float = 10.0) -> None:
        from torchvision import transforms

        self.paths = [str(path) for path in paths]
        self.labels = list(labels)
        # Shared with the worker processes (handed to them when they start): 1 = skipped.
        self._unreadable = multiprocessing.Array("b", len(self.paths), lock=False)
        self._reasons: dict[str, str] = {}  # this process's record of why; workers only set the flags
        self.transform = transforms.Compose([
            transforms.RandomRotation(degrees),
            transforms.Resize(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.paths)):
            used = (index + offset) % len(self.paths)
            try:
                image = _open_rgb(self.paths[used])
            except UNREADABLE as error:
                self._unreadable[used] = 1
                self._reasons[self.paths[used]] = f"{type(error).__name__}: {error}"
                continue
            return self.transform(image), self.labels[used]
        raise FeedError(f"PIL can open none of the {len(self.paths)} files (first: {self.paths[0]})")

    @property
    def skipped(self) -> list[BadFile]:
        """The files skipped so far, by this process or any of its DataLoader's workers."""
        flagged = np.flatnonzero(np.frombuffer(self._unreadable, dtype=np.int8))
        return [BadFile(self.paths[i], self._reason(self.paths[i])) for i in flagged]

    def _reason(self, path: str) -> str:
        """Why ``path`` was skipped; a file a worker skipped is opened again here to say."""
        if path not in self._reasons:
            try:
                _open_rgb(path)
                self._reasons[path] = "unreadable once, readable now"
            except UNREADABLE as error:
                self._reasons[path] = f"{type(error).__name__}: {error}"
        return self._reasons[path]


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:  # closed even when decoding fails
        return image.convert("RGB")


class DecodeOnlyTransform(HostTransform):
    """Full-resolution decode and nothing else: the machine's limit for these files.

    The same read, header check and decoder as the OpenCV pipeline
    (``decode.load_cv2``: libjpeg-turbo SIMD for JPEGs), run by the same workers,
    processes or threads; the pixels are dropped instead of resampled, so the
    row measures decoding, not the collation of full-size images.
    """

    def __init__(self, max_pixels: int) -> None:
        super().__init__(make_plan(DECODE_ONLY_SPEC), max_pixels)
        self.decoded_shapes: list[tuple[int, ...]] = []  # the last batch's, for tests
        self._scratch = decode.Scratch()  # reused memory, as the fused OpenCV path decodes into

    def clone(self) -> "DecodeOnlyTransform":
        twin = super().clone()
        twin._scratch, twin.decoded_shapes = decode.Scratch(), []
        return twin

    def decode(self, path: str, data: bytes, rng: np.random.Generator) -> np.ndarray:
        return decode.load_cv2(path, self.max_pixels, data=data, scratch=self._scratch)

    def augment(self, decoded: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return decoded

    def write(self, image: np.ndarray, out: np.ndarray) -> None:
        if len(self.decoded_shapes) > 1024:
            self.decoded_shapes.clear()
        self.decoded_shapes.append(image.shape)

    @property
    def releases_gil(self) -> bool:
        return True


DECODE_ONLY_SPEC = AugSpec((Resize((1, 1)),))  # a 1x1 slot per image: nothing is collated


def decode_only_feeder(samples, batch: int, workers: int, executor: str) -> Feeder:
    from feeding.backends.host import HostFeeder
    from feeding.feeder import FeedConfig

    config = FeedConfig(pipeline="albumentations", batch_size=batch, workers=workers, executor=executor,
                        spec=DECODE_ONLY_SPEC)
    return HostFeeder(samples, config, DecodeOnlyTransform(config.max_pixels))


def plain_loader(dataset: Dataset, batch: int, workers: int) -> DataLoader:
    """The DataLoader a typical user writes: default collate, shuffled, full batches.

    Its workers are kept across epochs, which a typical user's loader does not
    do: the timed windows span epochs, and the embedded sample's epochs are 6
    batches long, so restarting workers would cost it a share of its time that
    a real data set's epochs (hundreds of batches) never pay. The ratios stay
    those of the steady state.
    """
    shuffle = not isinstance(dataset, IterableDataset)  # an IterableDataset cannot be shuffled
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


# ---------------------------------------------------------------- measuring any loader


@contextmanager
def _quiet_worker_advice() -> Iterator[None]:
    with warnings.catch_warnings():
        # The sweep tries more workers than cores on purpose (workers that block on I/O);
        # torch's advice against it (given at construction and at iter()) is noise here.
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        yield


@dataclass(frozen=True)
class Settings:
    """How long each sweep point is measured: ``repeats`` windows of ``batches`` after ``warmup``."""

    batches: int = 10
    repeats: int = 3
    warmup: int = 2
    rounds: int = 5  # paired rounds over the rows' best points, after the sweep

    def __post_init__(self) -> None:
        if self.batches < 1 or self.repeats < 1 or self.warmup < 0 or self.rounds < 1:
            raise ValueError("--batches, --repeats and --rounds must be >= 1 and --warmup >= 0")

    @property
    def one_window(self) -> "Settings":
        return Settings(self.batches, 1, self.warmup, self.rounds)


def measure_point(make: LoaderMaker, workers: int | None, executor: str | None, settings: Settings,
                  name: str) -> "SweepPoint":
    """Build the loader and measure its steady-state img/s; also say who made its batches
    and which files it skipped."""
    with _quiet_worker_advice():
        loader = make(workers, executor)
        is_feeder_like = hasattr(loader, "epoch") and hasattr(loader, "batch_size")
        timed = loader if is_feeder_like else EpochIterable(loader, name)
        try:
            measured = measure_feeder(timed, settings.batches, settings.repeats, settings.warmup, whole_epochs=True)
            return SweepPoint(workers, measured, getattr(loader, "executor", executor), skipped_by(loader))
        finally:
            if isinstance(loader, Feeder):  # release its workers and pipeline now, not at collection
                loader.close()


def skipped_by(loader) -> tuple[BadFile, ...] | None:
    """The files ``loader`` left out as unreadable (a Feeder's, or its Dataset's ``skipped``),
    or None where it does not say (a user's loader)."""
    for source in (loader, getattr(loader, "dataset", None)):
        skipped = getattr(source, "skipped", None)
        if skipped is not None:
            return tuple(skipped)
    return None


def failure(error: BaseException) -> str:
    """An error's type and first line; for one raised in a DataLoader worker, the original's last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "worker" in lines[0]:
        # torch re-raises as "Caught X in ...", then the traceback, whose last line names the type in full
        return re.sub(r"^(?:\w+\.)+(?=\w+: )", "", lines[-1]) + " (in a DataLoader worker)"
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


@dataclass(frozen=True)
class SweepPoint:
    workers: int | None  # None: a user loader whose worker count is not known
    measured: FeedMeasurement
    executor: str | None = None  # "process", "thread" or "main" for feedbench rows; None: a plain loader
    skipped: tuple[BadFile, ...] | None = ()  # files left out as unreadable; None: the loader does not say

    def to_dict(self) -> dict:
        return {
            "workers": self.workers,
            "executor": self.executor,
            "images_per_sec": self.measured.images_per_sec.to_dict(),
            "first_batch_s": self.measured.first_batch_s.to_dict(),
            "windows_images_per_sec": list(self.measured.windows),
            "images": self.measured.images,
            "skipped_files": None if self.skipped is None else len(self.skipped),
        }


@dataclass(frozen=True)
class Candidate:
    """A row to measure: its name, its kind, how to build it for a worker count, which counts."""

    name: str
    kind: str  # "reference" | "feedbench" | "dali" | "limit" | "user"
    make: LoaderMaker
    workers: tuple[int | None, ...]
    executors: tuple[str | None, ...] = (None,)  # None: the loader's own (plain loaders, "auto" feeders)

    @property
    def points(self) -> list[tuple[int | None, str | None]]:
        return [(workers, executor) for executor in self.executors for workers in self.workers]


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    points: tuple[SweepPoint, ...]
    rounds: tuple[float, ...] = ()  # img/s of the best point in each paired round (none if interrupted)
    failed: str | None = None  # the error that stopped it ("Type: first line"): no rate, no ratios

    @property
    def measured(self) -> bool:
        return self.failed is None

    @property
    def skipped(self) -> tuple[BadFile, ...] | None:
        """The files any of its sweep points left out, each once; None where the loader does not say."""
        known = [point.skipped for point in self.points if point.skipped is not None]
        return tuple(dict.fromkeys(file for files in known for file in files)) if known else None

    def failing(self, error: Exception) -> "Row":
        return dataclasses.replace(self, rounds=(), failed=failure(error))

    @property
    def best(self) -> SweepPoint:
        return max(self.points, key=lambda p: p.measured.images_per_sec.median)

    @property
    def rate(self) -> Summary:
        """Over the paired rounds where there are some, else the best sweep point's windows."""
        return summarize(self.rounds) if self.rounds else self.best.measured.images_per_sec

    @property
    def median(self) -> float:
        return self.rate.median


def sweep(candidate: Candidate, settings: Settings) -> Iterator[SweepPoint]:
    """``candidate`` measured at each of its (workers, executor) points, one at a time."""
    for workers, executor in candidate.points:
        yield measure_point(candidate.make, workers, executor, settings, candidate.name)


def measure_rows(candidates: list[Candidate], settings: Settings) -> tuple[list[Row], bool]:
    """All rows, and whether the run was interrupted (then the rows measured so far).

    A row whose loader raises is kept as failed, with its error, and the next row is measured.
    """
    from tqdm import tqdm

    rows: list[Row] = []
    total = sum(len(c.points) for c in candidates)
    with tqdm(total=total, desc="compare", unit="point", file=sys.stderr) as bar:
        for candidate in candidates:
            points: list[SweepPoint] = []
            bar.set_postfix_str(candidate.name)
            try:
                for point in sweep(candidate, settings):
                    points.append(point)
                    bar.update()
            except KeyboardInterrupt:
                if points:
                    rows.append(Row(candidate.name, candidate.kind, tuple(points)))
                return rows, True
            except Exception as error:  # noqa: BLE001 - a pipeline or a user's loader may fail in any way
                rows.append(Row(candidate.name, candidate.kind, tuple(points)).failing(error))
                bar.update(len(candidate.points) - len(points))
                continue
            rows.append(Row(candidate.name, candidate.kind, tuple(points)))
    return rows, False


def paired_rounds(rows: list[Row], candidates: list[Candidate], settings: Settings) -> tuple[list[Row], bool]:
    """Each row's best point measured once per round, the rows in turn; the rows with their rounds,
    and whether the run was interrupted (then the rows as swept, without rounds)."""
    from tqdm import tqdm

    makers = {candidate.name: candidate.make for candidate in candidates}
    measured = [row for row in rows if row.measured]
    rates: dict[str, list[float]] = {row.name: [] for row in measured}
    errors: dict[str, Exception] = {}  # a row that fails in a round leaves the rounds
    with tqdm(total=settings.rounds * len(measured), desc="rounds", unit="point", file=sys.stderr) as bar:
        try:
            for number in range(settings.rounds):
                turn = number % max(len(measured), 1)
                for row in measured[turn:] + measured[:turn]:  # rotated: no fixed neighbour
                    if row.name not in errors:
                        try:
                            point = measure_point(makers[row.name], row.best.workers, row.best.executor,
                                                  settings.one_window, row.name)
                            rates[row.name].append(point.measured.images_per_sec.median)
                        except Exception as error:  # noqa: BLE001 - as in the sweep
                            errors[row.name] = error
                    bar.update()
        except KeyboardInterrupt:
            return rows, True
    return [_with_rounds(row, rates.get(row.name, ()), errors.get(row.name)) for row in rows], False


def _with_rounds(row: Row, rates: Iterable[float], error: Exception | None) -> Row:
    if error is not None:
        return row.failing(error)
    return dataclasses.replace(row, rounds=tuple(rates)) if row.measured else row


# ---------------------------------------------------------------- the rows of this run


@dataclass(frozen=True)
class CompareConfig:
    """One ``feedbench compare`` run; argparse only builds it."""

    data: str | None = None  # None: the embedded sample data set
    workers_max: int = 2 * (os.cpu_count() or 1)
    batch: int = 64
    size: Shape = (224, 224)
    degrees: float = 10.0
    settings: Settings = Settings()
    pipelines: tuple[str, ...] = ROW_NAMES
    loaders: tuple[str, ...] = ()  # "module:factory" strings
    out: str = "results"

    def __post_init__(self) -> None:
        if self.workers_max < 1:
            raise CompareError(f"--workers-max must be >= 1, got {self.workers_max}")
        unknown = [name for name in self.pipelines if name not in ROW_NAMES]
        if unknown:
            raise CompareError(f"unknown pipeline(s) {', '.join(unknown)}; choose from {', '.join(ROW_NAMES)}")
        if self.batch < 1:
            raise CompareError(f"--batch must be >= 1, got {self.batch}")


def _feeder_maker(samples, config: CompareConfig, pipeline: str) -> LoaderMaker:
    from feeding.factory import create_feeder
    from feeding.feeder import FeedConfig

    def make(workers: int, executor: str | None):
        feed = FeedConfig(pipeline=pipeline, batch_size=config.batch, workers=workers, executor=executor or "auto",
                          spec=train_spec(config.size, degrees=config.degrees))
        return create_feeder(samples, feed)

    return make


def _dataset_maker(dataset: Dataset, batch: int) -> LoaderMaker:
    return lambda workers, executor: plain_loader(dataset, batch, workers)


def _dali_missing() -> str | None:
    """Why the dali row cannot run here, or None."""
    import importlib.util

    try:
        found = importlib.util.find_spec("nvidia.dali") is not None
    except ImportError:
        found = False
    return None if found else "nvidia-dali is not installed (pip install nvidia-dali-cuda130)"


def builtin_candidates(samples, config: CompareConfig, notes: list[str]) -> list[Candidate]:
    workers = tuple(range(1, config.workers_max + 1))
    paths, labels = samples.paths.tolist(), samples.labels.tolist()
    makers: dict[str, Callable[[], LoaderMaker]] = {
        NAIVE: lambda: _dataset_maker(NaiveTorchvisionDataset(paths, labels, config.size, config.degrees),
                                      config.batch),
        DECODE_ONLY: lambda: lambda w, executor: decode_only_feeder(samples, config.batch, w, executor),
    }
    executors = {DECODE_ONLY: ("process", "thread")}
    candidates = []
    for name in ROW_NAMES:  # always in this order, whatever the order given
        if name not in config.pipelines:
            continue
        if name == "dali" and (why := _dali_missing()):
            notes.append(f"dali: not measured: {why}")
            continue
        make = makers[name]() if name in makers else _feeder_maker(samples, config, name)
        candidates.append(Candidate(name, KINDS[name], make, workers, executors.get(name, (None,))))
    return candidates


# ---------------------------------------------------------------- --loader module:factory


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


def user_candidate(spec: str, batch: int, workers: tuple[int, ...]) -> Candidate:
    """A Dataset is swept in a plain DataLoader; anything else is measured as it is, once."""
    factory = resolve_factory(spec)
    try:
        made = factory()
    except Exception as error:  # noqa: BLE001 - the user's code may fail in any way
        raise CompareError(f"--loader {spec!r}: calling {spec} raised {type(error).__name__}: {error}") from None
    if isinstance(made, Dataset):
        return Candidate(spec, "user", _dataset_maker(made, batch), workers)
    if not hasattr(made, "__iter__"):
        raise CompareError(f"--loader {spec!r}: the factory returned a {type(made).__name__}, which is not "
                           "iterable; return a DataLoader, an iterable of (images, labels) batches, or a Dataset")
    return Candidate(spec, "user", lambda _workers, _executor: made, (getattr(made, "num_workers", None),))


# ---------------------------------------------------------------- the report


def ratio(row: Row | None, other: Row | None) -> float | None:
    """``row`` ÷ ``other``: the median of the per-round ratios where both have the same rounds
    (paired: each round's two rates were measured within seconds), else the ratio of the medians.
    None where either is missing or failed."""
    if row is None or other is None or not (row.measured and other.measured):
        return None
    if row.rounds and len(row.rounds) == len(other.rounds):
        return float(np.median(np.divide(row.rounds, other.rounds)))
    return row.median / other.median


def headline(rows: list[Row]) -> dict:
    """The three figures: best feedbench CPU pipeline ÷ naive, ÷ DALI on the CPU, ÷ decode-only."""
    by_name = {row.name: row for row in rows}
    host = [row for row in rows if row.name in HOST_PIPELINES and row.measured]
    best = max(host, key=lambda row: row.median) if host else None
    return {
        "best_feedbench_cpu": best.name if best else None,
        "best_feedbench_cpu_images_per_sec": best.median if best else None,
        "feedbench_cpu_over_naive": ratio(best, by_name.get(NAIVE)),
        "feedbench_cpu_over_dali_cpu": ratio(best, by_name.get("dali")),
        "feedbench_cpu_over_decode_only": ratio(best, by_name.get(DECODE_ONLY)),
    }


def row_record(row: Row, naive: Row | None, limit: Row | None) -> dict:
    skipped = row.skipped
    best = row.best if row.measured else None
    return {
        "name": row.name,
        "kind": row.kind,
        "failed": row.failed,
        "best_workers": best.workers if best else None,
        "best_executor": best.executor if best else None,
        "images_per_sec": row.rate.to_dict() if best else None,
        "rounds_images_per_sec": list(row.rounds),
        "first_batch_s": best.measured.first_batch_s.to_dict() if best else None,
        "ratio_to_naive": ratio(row, naive),
        "ratio_to_decode_only": ratio(row, limit),
        "skipped_files": None if skipped is None else len(skipped),  # None: a loader that does not say
        "sweep": [point.to_dict() for point in row.points],
    }


def skipped_notes(rows: list[Row], listing: tuple[BadFile, ...], root: Path, shown: int = 10) -> list[str]:
    """The data's listing problems, and the unreadable files the rows skipped: each file named once
    (the first ``shown``; the JSON's ``skipped`` and ``listing_problems`` hold them all)."""
    notes = []
    if listing:
        notes.append(f"listing: {len(listing)} entr{'y' if len(listing) == 1 else 'ies'} of the data left out "
                     f"by every row: {_named(listing, root, shown)}.")
    files = all_skipped(rows)
    if files:
        notes.append(f"skipped: {len(files)} unreadable file(s), left out by the rows that met them (each row's "
                     f"count is in the table): {_named(files, root, shown)}.")
    return notes


def all_skipped(rows: list[Row]) -> tuple[BadFile, ...]:
    """Every file some row skipped, once (the first row's reason)."""
    reasons: dict[str, str] = {}
    for row in rows:
        for file in row.skipped or ():
            reasons.setdefault(file.path, file.reason)
    return tuple(BadFile(path, reason) for path, reason in reasons.items())


def _named(files: tuple[BadFile, ...], root: Path, shown: int) -> str:
    from feeding.io import display_path

    base = root if root.is_dir() else root.parent  # a manifest's paths are relative to its folder

    def where(path: str) -> str:
        return str(Path(path).relative_to(base)) if Path(path).is_relative_to(base) else display_path(path)

    named = "; ".join(f"{where(file.path)} ({file.reason})" for file in files[:shown])
    return named + (f"; and {len(files) - shown} more" if len(files) > shown else "")


def build_report(rows: list[Row], config: CompareConfig, context: dict) -> dict:
    from bench.provenance import provenance

    by_name = {row.name: row for row in rows}
    naive, limit = by_name.get(NAIVE), by_name.get(DECODE_ONLY)
    return {
        **context,
        "spec": {"size": list(config.size), "rotate_degrees": config.degrees, "flip": True,
                 "batch": config.batch},
        "workers_max": config.workers_max,
        "batches": config.settings.batches,
        "repeats": config.settings.repeats,
        "warmup": config.settings.warmup,
        "rounds": config.settings.rounds if any(row.rounds for row in rows) else 0,
        "rows": [row_record(row, naive, limit) for row in rows],
        "ratios": headline(rows),
        "skipped": [file.to_dict() for file in all_skipped(rows)],
        **provenance(),
    }


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _sentences(ratios: dict) -> list[str]:
    best = ratios["best_feedbench_cpu"]
    if best is None:
        return ["No feedbench CPU pipeline (pil, albumentations) was measured."]
    rate = f"{best}, {ratios['best_feedbench_cpu_images_per_sec']:.0f} img/s"
    return [
        f"- Best feedbench CPU pipeline ({rate}) ÷ naive torchvision: "
        f"**{_times(ratios['feedbench_cpu_over_naive'])}**.",
        f"- Best feedbench CPU pipeline ÷ DALI on the CPU: **{_times(ratios['feedbench_cpu_over_dali_cpu'])}**.",
        f"- Best feedbench CPU pipeline ÷ decode-only limit: "
        f"**{_times(ratios['feedbench_cpu_over_decode_only'])}**.",
    ]


def _rounds_sentence(report: dict) -> str:
    if not report["rounds"]:
        return "Rates and ratios are those of each row's best sweep point (no paired rounds were measured)."
    return (f"Then {report['rounds']} paired rounds: every row's best point measured for one window in turn, "
            "the order rotated each round. Rates: median (min–max) over the rounds; "
            "ratios: median of the per-round ratios.")


def markdown(report: dict) -> str:
    machine, pil = report["machine"], report["machine"]["pil"]
    size = "x".join(map(str, report["spec"]["size"]))
    lines = [
        f"# feedbench compare: {report['data_name']}, {size}, batch {report['spec']['batch']}",
        "",
        f"`{report['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; PIL: {pil['distribution']} {pil['version']}"
        f"{' (SIMD)' if pil.get('simd') else ''}; DALI: {machine['dali'] or 'not installed'}.",
        f"Data: {report['data']} ({report['dataset_images']} images). "
        f"Spec: rotate ±{report['spec']['rotate_degrees']:g}°, "
        f"resize to {size}, flip. Workers swept 1..{report['workers_max']}; "
        f"{report['repeats']} windows of {report['batches']} batches after {report['warmup']} warm-up batches.",
        _rounds_sentence(report),
        "",
        "| pipeline | best workers | img/s median (min–max) | × naive | × decode-only | skipped files |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [_table_row(row) for row in report["rows"]]
    lines += ["", *_sentences(report["ratios"]), ""]
    if report.get("chart") and _charted(report["rows"]):
        lines += [f"![img/s per pipeline]({report['chart']})", ""]
    lines += [f"Note: {note}" for note in report["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def _table_row(row: dict) -> str:
    skipped = "not reported" if row["skipped_files"] is None else row["skipped_files"]
    if row["failed"]:
        error = row["failed"].replace("|", "\\|")  # a pipe would end the cell
        return f"| {row['name']} | — | **failed**: {error} | — | — | {skipped} |"
    rate = row["images_per_sec"]
    workers = "as given" if row["best_workers"] is None else row["best_workers"]
    return (f"| {row['name']} | {workers} | {rate['median']:.1f} ({rate['min']:.1f}–{rate['max']:.1f}) "
            f"| {_times(row['ratio_to_naive'])} | {_times(row['ratio_to_decode_only'])} | {skipped} |")


def _charted(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["images_per_sec"] is not None]


def chart_png(report: dict) -> bytes:
    """Bar chart of median img/s per row, min/max error bars, decode-only limit as a line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = _charted(report["rows"])
    medians = np.array([row["images_per_sec"]["median"] for row in rows])
    errors = np.array([[m - row["images_per_sec"]["min"], row["images_per_sec"]["max"] - m]
                       for m, row in zip(medians, rows)]).T
    labels = [f"{row['name']}\n(w={'?' if row['best_workers'] is None else row['best_workers']})" for row in rows]
    figure = Figure(figsize=(max(6.0, 1.4 * len(rows)), 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.bar(range(len(rows)), medians, yerr=errors, capsize=4, color="tab:blue")
    limit = next((row for row in rows if row["name"] == DECODE_ONLY), None)
    if limit:
        axes.axhline(limit["images_per_sec"]["median"], color="tab:red", linestyle="--", label="decode-only limit")
        axes.legend(loc="upper right")
    axes.set_xticks(range(len(rows)), labels, fontsize=8)
    axes.set_ylabel("images/s (median, min–max)")
    axes.set_title(f"{report['data_name']}, {'x'.join(map(str, report['spec']['size']))}, "
                   f"batch {report['spec']['batch']}, {report['machine']['cores']} cores")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def output_stem(data_name: str, config: CompareConfig) -> str:
    size = str(config.size[0]) if config.size[0] == config.size[1] else "x".join(map(str, config.size))
    return f"compare-{data_name}-{size}-b{config.batch}-{os.cpu_count()}c"


def write_outputs(report: dict, config: CompareConfig) -> list[Path]:
    from feeding.io import write_atomic, write_json

    stem = Path(config.out) / output_stem(report["data_name"], config)
    written = [write_json(stem.with_suffix(".json"), report)]
    written.append(write_atomic(stem.with_suffix(".md"), markdown(report).encode()))
    if _charted(report["rows"]):
        written.append(write_atomic(stem.with_suffix(".png"), chart_png(report)))
    return written


# ---------------------------------------------------------------- command line


DESCRIPTION = """\
Every pipeline, each at its best worker count, on the same files: the naive torchvision loader
a typical user writes, the feedbench pipelines (pil, albumentations, dali on the CPU), this
machine's decode-only limit, and your own --loader. Writes a Markdown table, a chart and a JSON
to --out.

Unreadable files are skipped and counted in each row; a row that fails is reported as failed
and the other rows are kept.
Exit codes: 0 every row measured; 1 some row failed (the report is still written); 2 bad input;
130 interrupted (the rows measured so far are written)."""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedbench compare", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--data", help="competition layout, ImageFolder, or CSV manifest; "
                        "without it, the embedded sample")
    parser.add_argument("--workers-max", type=whole_number, default=2 * (os.cpu_count() or 1),
                        help="sweep workers 1..N (by default 2 x this machine's cores)")
    parser.add_argument("--batch", type=whole_number, default=64, help="images per batch")
    parser.add_argument("--size", type=size_arg, default="224", help="output size N or HxW")
    parser.add_argument("--rotate", type=float, default=10.0, help="rotate by up to ± this many degrees")
    parser.add_argument("--batches", type=whole_number, default=10, help="batches per timed window")
    parser.add_argument("--repeats", type=whole_number, default=3, help="timed windows per sweep point")
    parser.add_argument("--warmup", type=whole_number, default=2, help="batches before timing")
    parser.add_argument("--rounds", type=whole_number, default=5,
                        help="paired rounds over the rows' best points after the sweep")
    parser.add_argument("--loader", action="append", metavar="MODULE:FACTORY",
                        help="also measure your loader: factory() returns a DataLoader, an iterable of "
                        "(images, labels) batches, or a Dataset (swept in a DataLoader); repeatable")
    parser.add_argument("--out", default="results", help="directory for the .md, .png and .json")
    # A string default goes through ``type`` too: the help shows it as it is typed.
    parser.add_argument("--pipelines", nargs="+", type=listed(str), action=FlattenList, default=",".join(ROW_NAMES),
                        metavar="NAME", help="rows to measure, names between commas or spaces")
    return parser


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    try:
        settings = Settings(args.batches, args.repeats, args.warmup, args.rounds)
        return CompareConfig(data=args.data, workers_max=args.workers_max, batch=args.batch, size=args.size,
                             degrees=args.rotate, settings=settings, pipelines=tuple(args.pipelines),
                             loaders=tuple(args.loader or ()), out=args.out)
    except ValueError as error:
        raise CompareError(str(error)) from None


def _data_name(data: str | None, root: Path) -> str:
    if data is None:
        name = "sample"
    elif root.is_file():  # a CSV manifest
        name = root.stem
    else:
        name = root.parent.name if root.name == "train" else root.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "data"


def run_compare(config: CompareConfig, command: str) -> tuple[dict, bool]:
    """Measure every row; return the report and whether the run was interrupted."""
    from feeding.sample import resolve_data
    from feeding.io import display_path
    from feeding.sources import discover

    root = resolve_data(config.data)
    listed_samples = discover(root, on_bad="skip")  # a bad listing entry is a note, as an unreadable file is
    if config.batch > len(listed_samples):
        raise CompareError(f"--batch {config.batch} > the {len(listed_samples)} images of {display_path(root)}: "
                           "no row can make a full batch; lower --batch")
    # The rows are given the listing without its problems: those are the data's, noted once, not the rows'.
    samples = dataclasses.replace(listed_samples, problems=())
    notes: list[str] = [
        "naive: NaiveTorchvisionDataset (PIL open, torchvision RandomRotation before Resize, ToTensor, "
        "Normalize on the CPU) in DataLoader(shuffle=True, drop_last=True) with default collate; a file PIL "
        "cannot open is skipped for the next one, as a user's try/except does.",
        f"decode-only: full-resolution decode ({decode.jpeg_decoder()} for JPEGs, as the OpenCV pipeline) by "
        "persistent worker processes and by worker threads, the better of the two; the pixels are dropped, so "
        "collating full-size images is not measured.",
        "Every loader keeps its workers across epochs (the naive one too, though users rarely set "
        "persistent_workers): the timed windows span epochs, and the sample's short epochs would otherwise "
        "charge worker start-up that a real data set's long epochs amortize.",
    ]
    workers = tuple(range(1, config.workers_max + 1))
    users = [user_candidate(spec, config.batch, workers) for spec in config.loaders]  # bad input fails first
    candidates = builtin_candidates(samples, config, notes) + users
    rows, interrupted = measure_rows(candidates, config.settings)
    if interrupted:
        notes.append(f"interrupted: {len(rows)} of {len(candidates)} rows measured (the last may be partial).")
    elif rows:
        rows, interrupted = paired_rounds(rows, candidates, config.settings)
        if interrupted:
            notes.append("interrupted during the paired rounds: the figures are the sweep's, not paired.")
    notes += skipped_notes(rows, listed_samples.problems, root)
    data_name = _data_name(config.data, root)
    context = {"command": command, "data": display_path(root), "data_name": data_name,
               "chart": output_stem(data_name, config) + ".png",
               "dataset_images": len(samples), "interrupted": interrupted, "notes": notes,
               "listing_problems": [problem.to_dict() for problem in listed_samples.problems]}
    return build_report(rows, config, context), interrupted


def compare_main(argv: list[str]) -> int:
    """``feedbench compare ARGS``; returns the exit code (1: a row failed, 2: bad input, 130: interrupted)."""
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage and the reason (or --help)
        return int(exit_.code or 0)
    from bench.provenance import display_command

    command = display_command("feedbench compare", argv)
    try:
        config = config_from_args(args)
        report, interrupted = run_compare(config, command)
    except (CompareError, FeedError, MissingDependencyError, ValueError) as error:
        print(f"feedbench compare: error: {error}", file=sys.stderr)
        return 2
    written = write_outputs(report, config)
    print(markdown(report))
    print("wrote " + ", ".join(map(str, written)))
    if interrupted:
        print(f"feedbench compare: interrupted; wrote the {len(report['rows'])} row(s) measured so far",
              file=sys.stderr)
        return 130
    failed = [row for row in report["rows"] if row["failed"]]
    for row in failed:
        print(f"feedbench compare: {row['name']} failed: {row['failed']}", file=sys.stderr)
    return 1 if failed else 0
