"""One tuning run's settings: ``TuneConfig``, frozen and validated when built (``feeding.checks``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from feeding import checks
from feeding.backends import PIPELINES, capabilities
from feeding.checks import Shape
from feeding.sim import is_sim
from feeding.spec import AugSpec, train_spec
from feeding.spec_file import SpecFile
from training.step import StepConfig

MIN_MEASURE_S = 20.0  # below this budget (seconds) nothing meaningful can be measured
ON_BAD = ("skip", "fail")
# A pipeline that needs a cluster is tuned only where one answers (the CLI asks RAY_ADDRESS):
# a local start of it is no tuning.
LOCAL_PIPELINES = tuple(name for name in PIPELINES if not capabilities(name).needs_cluster)
DEFAULT_SIZES: tuple[Shape, ...] = ((224, 224), (192, 192), (160, 160), (128, 128))


def _host_cores() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class TuneConfig:
    """One tuning run; validated when built. Sizes are (height, width) in pixels, times in seconds.

    ``spec``: the ``--spec`` file, whose train section every measured feed runs; it fixes the
    shape, so ``sizes`` is its output size alone (None: DEFAULT_SIZES, or the spec's).
    """

    data: str | None = None
    model: str = "resnet18"
    device: str = "cpu"
    sizes: tuple[Shape, ...] | None = None
    budget_s: float = 300.0
    pipelines: tuple[str, ...] = LOCAL_PIPELINES
    workers_max: int = field(default_factory=lambda: 2 * _host_cores())
    batches: tuple[int, ...] | None = None  # default: (32,) on the CPU, (64, 128, 256) on a GPU
    feed_batches: int = 8  # batches per timed window on the feed side (at least the read-ahead)
    consume_steps: int = 4  # timed training steps per consumption point
    e2e_batches: int = 8
    e2e_min_s: float = 3.0  # and at least this long: 8 batches at GPU rates is a fraction of a second
    exhaustive: bool = False
    isolate: bool = False  # each measurement in a fresh interpreter (slower; no state carried over)
    out: str = "results"
    seed: int = 0
    ranks: int = 1  # training processes on this host (torchrun --nproc-per-node): they share its cores
    on_bad: str = "skip"  # a bad listing row or unreadable file: "skip" (left out, reported) or "fail"
    step: StepConfig | None = None  # the training step measured (training.step); None: the device's defaults
    checked: int = 3  # the best predicted setups checked end to end with the real loop; the pick is the fastest
    spec: SpecFile | None = None

    def __post_init__(self) -> None:
        self._check_sizes()
        for name in self.pipelines:
            checks.choice("pipeline", name, PIPELINES)
        checks.number("--budget-s", self.budget_s)
        if self.budget_s < MIN_MEASURE_S:
            raise ValueError(f"--budget-s {self.budget_s:g} is too small to measure anything; give at least "
                             f"{MIN_MEASURE_S:g} s (300 s gives a full search on 2 cores)")
        checks.device("--device", self.device, simulated=True)
        if self.step is None:
            object.__setattr__(self, "step", StepConfig.for_device(self.device))
        if self.batches is None:
            # On the CPU a step's cost per image hardly depends on the batch; on a GPU it does
            # (the simulated device's does not: one batch size measures it).
            object.__setattr__(self, "batches", (32,) if self.on_cpu else (64,) if self.simulated else (64, 128, 256))
        if not self.batches:
            raise ValueError("--batches needs at least one batch size")
        for batch in self.batches:
            checks.count("--batches", batch)
        checks.count("--ranks", self.ranks)
        if self.ranks > _host_cores():
            raise ValueError(f"--ranks {self.ranks} is more than this host's {os.cpu_count()} cores")
        checks.count("--workers-max", self.workers_max)
        # A rank's workers beyond twice its share of the cores only take cores from the other ranks.
        object.__setattr__(self, "workers_max", min(self.workers_max, 2 * self.cores))
        checks.count("feed_batches", self.feed_batches)
        checks.count("consume_steps", self.consume_steps)
        checks.count("--e2e-batches", self.e2e_batches)
        checks.number("--e2e-min-s", self.e2e_min_s, minimum=0)
        checks.choice("--on-bad", self.on_bad, ON_BAD)
        checks.count("--checked", self.checked)
        if self.simulated:
            self._check_simulated_rate()

    def _check_sizes(self) -> None:
        """The candidate shapes: the given ones, or the spec's output size alone (a spec fixes the shape)."""
        if self.spec is not None and not isinstance(self.spec, SpecFile):
            raise TypeError(f"spec must be a SpecFile (feeding.spec_file.load_spec_file), got {self.spec!r}")
        fixed = (self.spec.train.output_size,) if self.spec is not None else None
        sizes = self.sizes if self.sizes is not None else fixed or DEFAULT_SIZES
        if not sizes:
            raise ValueError("--sizes needs at least one size")
        sizes = tuple(checks.size("--sizes", size) for size in sizes)
        if fixed is not None and sizes != fixed:
            raise ValueError(f"--sizes: the spec {self.spec.name} fixes the shape at {fixed[0][0]}x{fixed[0][1]}; "
                             "drop --sizes (or --spec)")
        object.__setattr__(self, "sizes", sizes)

    def spec_at(self, size: Shape) -> AugSpec:
        """What a measured feed at ``size`` runs: the spec file's train section, else the benchmark spec."""
        return self.spec.train if self.spec is not None else train_spec(size)

    def _check_simulated_rate(self) -> None:
        """A simulated device so slow that its own steps outlast the budget cannot be measured against."""
        from feeding.sim import SimSpec

        spec, batch, size = SimSpec.parse(self.device), max(self.batches), max(self.sizes, key=lambda s: s[0] * s[1])
        steps = 1 + self.consume_steps + self.e2e_batches * self.checked  # warm-up, timed, end-to-end checks
        needed = steps * spec.step_seconds(batch, size)
        if needed > self.budget_s:
            raise ValueError(f"{self.device} trains a batch of {batch} at {size[0]}x{size[1]} in "
                             f"{spec.step_seconds(batch, size):.1f} s: its {steps} measured steps need "
                             f"{needed:.0f} s, more than the {self.budget_s:g} s budget; raise --budget-s or R")

    @property
    def cores(self) -> int:
        """The cores one rank can count on: this host's, split between its ranks."""
        return max(1, _host_cores() // self.ranks)

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"

    @property
    def simulated(self) -> bool:
        """``sim:R``: the simulated accelerator (feeding.sim)."""
        return is_sim(self.device)

    @property
    def gpu_reserve_bytes(self) -> int:
        """GPU memory (bytes) the tuned pipelines' pools want beside the model: the largest, since
        one pipeline runs at a time."""
        return max((capabilities(name).gpu_reserve_bytes for name in self.pipelines), default=0)
