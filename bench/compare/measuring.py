"""Measuring rows: each row swept over its worker counts, then paired rounds over the rows' best points.

Every loader is timed by ``measure_feeder`` (a plain DataLoader through ``as_feeder``), so every row
has the same warm-up, first-batch and window rules. A row whose loader raises is kept as failed,
with its error, and the next row is measured.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

from bench.compare.config import Settings
from bench.compare.rows import LoaderMaker, RowSpec
from bench.interrupt import CtrlC
from bench.measure import FeedMeasurement, as_feeder, measure_feeder
from bench.stats import Summary, summarize
from feeding.errors import BadFile
from feeding.feeder import Feeder



@contextmanager
def _quiet_worker_advice() -> Iterator[None]:
    with warnings.catch_warnings():
        # The sweep tries more workers than cores on purpose (workers that block on I/O);
        # torch's advice against it (given at construction and at iter()) is noise here.
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        yield


def measure_point(make: LoaderMaker, workers: int | None, executor: str | None, settings: Settings,
                  name: str) -> "SweepPoint":
    """Build the loader and measure its steady-state img/s; also say who made its batches
    and which files it skipped."""
    with _quiet_worker_advice():
        loader = make(workers, executor)
        try:
            measured = measure_feeder(as_feeder(loader, name), settings.batches, settings.repeats, settings.warmup,
                                      whole_epochs=True)
            return SweepPoint(workers, measured, getattr(loader, "executor", executor), skipped_by(loader))
        finally:
            # A feeder built for this point releases its workers and pipeline now, not at collection;
            # a user's loader is theirs to keep (the paired rounds measure it again).
            if isinstance(loader, Feeder):
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
    """One (workers, executor) point of a row's sweep, measured in img/s."""

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
class Row:
    """A measured row: its sweep points, the img/s of its best point in each paired round, or its error."""

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


def sweep(spec: RowSpec, settings: Settings) -> Iterator[SweepPoint]:
    """``spec`` measured at each of its (workers, executor) points, one at a time."""
    for workers, executor in spec.points:
        yield measure_point(spec.make, workers, executor, settings, spec.name)


def measure_rows(specs: list[RowSpec], settings: Settings, ctrl_c: CtrlC | None = None) -> tuple[list[Row], bool]:
    """All rows, and whether the run was interrupted (then the rows measured so far).

    A row whose loader raises is kept as failed, with its error, and the next row is measured; but
    an error after a Ctrl-C (``ctrl_c`` pressed: a worker it stopped) is the interrupt, not the row's.
    """
    from tqdm import tqdm

    ctrl_c = ctrl_c or CtrlC()
    rows: list[Row] = []
    total = sum(len(spec.points) for spec in specs)
    with tqdm(total=total, desc="compare", unit="point", file=sys.stderr) as bar:
        for spec in specs:
            points: list[SweepPoint] = []
            bar.set_postfix_str(spec.name)
            try:
                with ctrl_c.errors_are_interrupts():
                    for point in sweep(spec, settings):
                        points.append(point)
                        bar.update()
                        ctrl_c.check()  # one that Python swallowed as the point's workers started
            except KeyboardInterrupt:
                return _kept(rows, spec, points), True
            except Exception as error:  # noqa: BLE001 - a pipeline or a user's loader may fail in any way
                rows.append(Row(spec.name, spec.kind, tuple(points)).failing(error))
                bar.update(len(spec.points) - len(points))
                continue
            rows.append(Row(spec.name, spec.kind, tuple(points)))
    return rows, False


def _kept(rows: list[Row], spec: RowSpec, points: list[SweepPoint]) -> list[Row]:
    """The rows measured before a Ctrl-C, with the interrupted row's points where it has some."""
    return [*rows, Row(spec.name, spec.kind, tuple(points))] if points else rows


def paired_rounds(rows: list[Row], specs: list[RowSpec], settings: Settings,
                  ctrl_c: CtrlC | None = None) -> tuple[list[Row], bool]:
    """Each row's best point measured once per round, the rows in turn; the rows with their rounds,
    and whether the run was interrupted (then the rows as swept, without rounds). An error after a
    Ctrl-C (``ctrl_c`` pressed) is the interrupt, as in ``measure_rows``."""
    from tqdm import tqdm

    ctrl_c = ctrl_c or CtrlC()
    makers = {spec.name: spec.make for spec in specs}
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
                            with ctrl_c.errors_are_interrupts():
                                point = measure_point(makers[row.name], row.best.workers, row.best.executor,
                                                      settings.one_window, row.name)
                            rates[row.name].append(point.measured.images_per_sec.median)
                        except Exception as error:  # noqa: BLE001 - as in the sweep
                            errors[row.name] = error
                    bar.update()
                    ctrl_c.check()
        except KeyboardInterrupt:
            return rows, True
    return [_with_rounds(row, rates.get(row.name, ()), errors.get(row.name)) for row in rows], False


def _with_rounds(row: Row, rates: Iterable[float], error: Exception | None) -> Row:
    if error is not None:
        return row.failing(error)
    return dataclasses.replace(row, rounds=tuple(rates)) if row.measured else row

