"""Run directories and interruptions: where a run writes, and what a Ctrl-C leaves and says.

A directory that holds a run (``RUN_FILES``, in it or in a ``fold*/``) is never written over by
a new run. Without ``--out`` a run takes the first free directory of the default series
(``runs/fit``, ``runs/fit-2``, ...), and ``--resume`` the newest run of it. A Ctrl-C during a
run becomes ``RunInterrupted`` (once the feeders are closed), which ``interrupted_message`` turns
into one line: where the run stood, what its last.pt holds, and the command that resumes it.
"""
from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from feeding.errors import FeedError
from training.checkpoint import BEST, LAST, saved_position

RUN_FILES = (LAST, BEST, "summary.json")  # any of them: the directory holds a run
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
EXIT_PREEMPTED = 143  # 128 + SIGTERM: what a scheduler that preempts the job expects back


class RunDirectoryError(FeedError):
    """A run directory that would be written over, or no run to resume."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, and where it stood: ``run_dir`` (what --out resumes), ``checkpoint_dir``
    (whose last.pt holds the progress: the run's, or a fold's), ``epoch`` (1-based; None: outside one)."""

    def __init__(self, run_dir: Path, checkpoint_dir: Path, epoch: int | None = None, fold: str | None = None):
        super().__init__(f"interrupted: {checkpoint_dir}")
        self.run_dir, self.checkpoint_dir, self.epoch, self.fold = Path(run_dir), Path(checkpoint_dir), epoch, fold


class RunPreempted(Exception):
    """A SIGTERM during a run, answered with a step checkpoint: ``checkpoint_dir``'s last.pt holds the update
    it stopped at (``where``, in words). Not a KeyboardInterrupt: the run stopped as asked, at a step."""

    def __init__(self, run_dir: Path, checkpoint_dir: Path, where: str, fold: str | None = None):
        super().__init__(f"preempted: {checkpoint_dir}")
        self.run_dir, self.checkpoint_dir, self.where, self.fold = Path(run_dir), Path(checkpoint_dir), where, fold


# ---------------------------------------------------------------- run directories


def run_files(directory: Path) -> list[str]:
    """What marks ``directory`` as holding a run: ``RUN_FILES`` in it or in its ``fold*/``, as relative paths."""
    folds = sorted(d for d in directory.glob("fold*") if d.is_dir()) if directory.is_dir() else []
    return [str(place.relative_to(directory) / name) for place in (directory, *folds) for name in RUN_FILES
            if (place / name).is_file()]


def _series(base: Path) -> Iterator[Path]:
    """``base``, ``base-2``, ``base-3``, ... (endless)."""
    yield base
    number = 2
    while True:
        yield base.with_name(f"{base.name}-{number}")
        number += 1


def _existing_series(base: Path) -> list[Path]:
    """The directories of ``base``'s series on disk (``base`` itself and ``base-N``, N >= 2)."""
    numbered = [d for d in base.parent.glob(f"{base.name}-*") if d.name[len(base.name) + 1:].isdigit()]
    return [d for d in (base, *numbered) if d.is_dir()]


def _resume_mtime(directory: Path, folds: bool) -> float | None:
    """When the run in ``directory`` last saved ``last.pt`` (a folds run: any fold's), or None."""
    checkpoints = list(directory.glob(f"fold*/{LAST}")) if folds else [directory / LAST]
    times = [c.stat().st_mtime for c in checkpoints if c.is_file()]
    return max(times) if times else None


def choose_run_dir(out: str | None, base: str, resume: bool, folds: bool) -> tuple[Path, str]:
    """The run directory and a sentence saying which one it is (and why, when it was chosen).

    ``out`` None: a new run takes the first directory of ``base``'s series that holds no run; a
    resumed one the run of the series with the newest ``last.pt``. An explicit ``out`` that holds
    a run is refused unless ``resume``.
    """
    kind = f"fold*/{LAST}" if folds else LAST
    return choose_directory(out, base, resume, run_files, lambda d: _resume_mtime(d, folds), f"run with a {kind}")


def choose_directory(out: str | None, base: str, resume: bool, holds: Callable[[Path], list[str]],
                     saved_at: Callable[[Path], float | None], resumable: str) -> tuple[Path, str]:
    """``choose_run_dir`` for any kind of run: ``holds(d)`` lists what marks ``d`` as holding one,
    ``saved_at(d)`` says when the one in ``d`` last saved what a resume reads (None: nothing), and
    ``resumable`` names that in the message when there is none ("run with a last.pt")."""
    if out is not None:
        directory = Path(out)
        found = holds(directory)
        if found and not resume:
            raise RunDirectoryError(f"{directory} already holds a run ({', '.join(found[:3])}); pass --resume "
                                    "to continue it, or another --out for a new run")
        return directory, f"run directory: {directory}"
    base_dir = Path(base)
    if resume:
        candidates = [(mtime, d) for d in _existing_series(base_dir) if (mtime := saved_at(d)) is not None]
        if not candidates:
            raise RunDirectoryError(f"--resume: no {resumable} in {base_dir} or {base_dir}-N to continue; "
                                    "pass --out DIR to name the run")
        directory = max(candidates)[1]
        return directory, f"run directory: {directory} (resuming the newest run of {base_dir}*)"
    directory = next(d for d in _series(base_dir) if not holds(d))
    why = "" if directory == base_dir else f" ({base_dir} holds an earlier run; --out names another)"
    return directory, f"run directory: {directory}{why}"


# ---------------------------------------------------------------- Ctrl-C


def resume_command(argv: list[str], run_dir: Path, program: str = "training.fit") -> str:
    """The command line that continues this run: ``argv`` with ``--resume --out run_dir``."""
    kept, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg == "--out":
            skip_value = True
        elif arg != "--resume" and not arg.startswith("--out="):
            kept.append(arg)
    return shlex.join(["python", "-m", program, *kept, "--resume", "--out", str(run_dir)])


@contextlib.contextmanager
def sigterm_requests():
    """While inside: a SIGTERM sets a flag (the function yielded reads it) instead of ending the process, so
    that the training loop can checkpoint at its next update and stop. Outside the main thread (where
    Python cannot take signals) the flag is never set."""
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread() or getattr(
            signal.getsignal(signal.SIGTERM), "stops_at_once", False):
        # (a caller's handler marked stops_at_once, training.hpo's, ends the run itself: it stays)
        yield asked.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: asked.set())
    try:
        yield asked.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def preempted_message(stop: RunPreempted, argv: list[str]) -> str:
    """One line for a SIGTERM: the checkpoint written and the command that resumes the run from it."""
    fold = f" ({stop.fold})" if stop.fold else ""
    return (f"training.fit: stopped by SIGTERM{fold}; {stop.checkpoint_dir / LAST} holds {stop.where} "
            f"(resume: {resume_command(argv, stop.run_dir)})")


def interrupted_message(stop: RunInterrupted, argv: list[str]) -> str:
    """One line for a Ctrl-C: where the run was, what its last.pt holds, and how to resume it."""
    where = ", ".join(part for part in (stop.fold, f"epoch {stop.epoch}" if stop.epoch else None) if part)
    checkpoint = stop.checkpoint_dir / LAST
    saved = saved_position(checkpoint)
    held = f"{checkpoint} holds {saved}" if saved else "no checkpoint yet"
    resumable = any(Path(name).name == LAST for name in run_files(stop.run_dir))
    how = f" (resume: {resume_command(argv, stop.run_dir)})" if resumable else ""
    return f"training.fit: interrupted{' in ' + where if where else ''}; {held}{how}"
