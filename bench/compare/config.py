"""What one ``feedbench compare`` run measures: its rows (derived from the backends' capabilities), how
long each point is timed, and the frozen config argparse builds."""
from __future__ import annotations

import os
from dataclasses import dataclass

from feeding import checks
from feeding.backends import BACKENDS
from feeding.spec import AugSpec, Shape, train_spec
from feeding.spec_file import SpecFile

NAIVE = "naive"
DECODE_ONLY = "decode-only"
LITERAL = "literal"  # feedbench's PIL pipeline running the written order step by step: the reference's own work
# The backends measured without a cluster (Ray needs one), in BACKENDS order: pil, albumentations, dali.
BACKEND_ROWS = tuple(name for name, backend in BACKENDS.items() if not backend.needs_cluster)
# The feedbench CPU pipelines the headline figures use: those that load in the training process and leave a
# bad file out of its batch (pil, albumentations).
FEEDBENCH_CPU = tuple(name for name in BACKEND_ROWS if BACKENDS[name].loads_in_main and BACKENDS[name].skips_in_batch)
# The library built for GPU decode, measured here on its CPU path ("DALI on the CPU" in the headline).
GPU_LIBRARY_ON_CPU = next((name for name in BACKEND_ROWS if BACKENDS[name].gpu_decode), None)
ROW_NAMES = (NAIVE, *BACKEND_ROWS, LITERAL, DECODE_ONLY)
# A feedbench CPU pipeline is "feedbench"; another library's pipeline is a kind of its own ("dali").
KINDS = {NAIVE: "reference", **{name: "feedbench" if name in FEEDBENCH_CPU else name for name in BACKEND_ROWS},
         LITERAL: "literal", DECODE_ONLY: "limit"}  # fmt: skip


class CompareError(ValueError):
    """Bad input to ``feedbench compare``, stated so the user can act on it (exit code 2)."""


@dataclass(frozen=True)
class Settings:
    """How long each sweep point is measured: ``repeats`` windows of ``batches`` after ``warmup``."""

    batches: int = 10
    repeats: int = 3
    warmup: int = 2
    rounds: int = 5  # paired rounds over the rows' best points, after the sweep

    def __post_init__(self) -> None:
        checks.count("--batches", self.batches)
        checks.count("--repeats", self.repeats)
        checks.count("--warmup", self.warmup, minimum=0)
        checks.count("--rounds", self.rounds)

    @property
    def one_window(self) -> "Settings":
        return Settings(self.batches, 1, self.warmup, self.rounds)


@dataclass(frozen=True)
class CompareConfig:
    """One ``feedbench compare`` run; argparse only builds it. ``size`` is (height, width) in pixels.

    ``spec``: the ``--spec`` file; every row then runs its train section, and ``size`` is its
    output size (``degrees`` is unused). Without one, the benchmark spec at ``size`` and ``degrees``.
    """

    data: str | None = None  # None: the embedded sample data set
    workers_max: int = 2 * (os.cpu_count() or 1)
    batch: int = 64
    size: Shape = (224, 224)
    degrees: float = 10.0
    settings: Settings = Settings()
    pipelines: tuple[str, ...] = ROW_NAMES
    loaders: tuple[str, ...] = ()  # "module:factory" strings
    out: str = "results"
    spec: SpecFile | None = None

    def __post_init__(self) -> None:
        # Not checks.count: "--workers-max must be >= 1" is the sentence users (and tests) know.
        if self.workers_max < 1:
            raise CompareError(f"--workers-max must be >= 1, got {self.workers_max}")
        unknown = [name for name in self.pipelines if name not in ROW_NAMES]
        if unknown:  # every unknown name at once, not the first
            raise CompareError(f"unknown pipeline(s) {', '.join(unknown)}; choose from {', '.join(ROW_NAMES)}")
        checks.count("--batch", self.batch)
        if self.spec is not None and not isinstance(self.spec, SpecFile):
            raise TypeError(f"spec must be a SpecFile (feeding.spec_file.load_spec_file), got {self.spec!r}")
        size = self.spec.train.output_size if self.spec is not None else self.size
        object.__setattr__(self, "size", checks.size("--size", size))

    @property
    def augmentation(self) -> AugSpec:
        """What every row runs: the spec file's train section, else the benchmark spec."""
        return self.spec.train if self.spec is not None else train_spec(self.size, degrees=self.degrees)
