"""Measure what the model consumes: training steps per second on synthetic batches.

The feed side (``bench.measure``) says how many images/sec a pipeline delivers to the device;
this side says how many images/sec the training step takes, with the batch already on the
device so no data wait is counted. The step is the one ``training.fit`` runs
(``training.step``: optimizer, bf16 autocast, memory format, cudnn.benchmark, accumulation and
how often the loss is read back), so that the prediction and the training run measure the same
program. As in timm's ``benchmark.py``: warm-up steps, then timed steps, the device
synchronized where the loss is read.

Besides the rate, the host's share of a step: the training process's main thread time per
step (``thread_time``: the kernel launches on CUDA, the launch on the simulated device; on the
CPU the step itself) and the process's CPU time per image (all its threads: on the CPU, what
the model takes from the cores the loader's workers need).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch

from bench.stats import Summary, summarize
from feeding import checks
from feeding.checks import Shape
from feeding.sim import is_sim
from training.models import build_model
from training.step import SimStep, StepConfig, TrainStep, create_optimizer, step_settings


@dataclass(frozen=True)
class ConsumeConfig:
    """What to train on which device, and how long to time it.

    ``model`` is a timm name (built untrained, never downloaded) or ``"package.module:factory"``.
    ``device``: cpu, cuda[:N] or sim:R (the simulated accelerator). ``size`` is (height, width)
    in pixels. ``threads`` sets torch's intra-op CPU threads for the measurement only (None:
    leave as is). ``step``: how each step runs (default ``StepConfig.for_device(device)``, with
    ``amp`` and ``channels_last`` where given); ``resolved()`` fills it in.
    """

    model: str = "resnet18"
    device: str = "cpu"
    batch_size: int = 64
    size: Shape = (224, 224)
    num_classes: int = 18
    warmup: int = 2
    steps: int = 5
    threads: int | None = None
    channels_last: bool | None = None
    amp: bool | None = None
    step: StepConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must be a timm model name or 'package.module:factory', got an empty name")
        checks.available_device("device", self.device, simulated=True)
        for name in ("batch_size", "num_classes", "steps"):
            checks.count(name, getattr(self, name))
        checks.count("threads", self.threads, allow_none=True)
        checks.count("warmup", self.warmup, minimum=0)
        object.__setattr__(self, "size", checks.size("size", self.size))
        for name in ("channels_last", "amp"):
            if getattr(self, name) not in (None, True, False):
                value = getattr(self, name)
                raise ValueError(f"{name} must be True, False or None (device default), got {value!r}")

    def resolved(self) -> ConsumeConfig:
        """The same config with its step filled in, and ``amp``/``channels_last`` the step's."""
        step = self.step or StepConfig.for_device(self.device, amp=self.amp, channels_last=self.channels_last)
        return replace(self, step=step, amp=step.amp, channels_last=step.channels_last)

    @property
    def simulated(self) -> bool:
        return is_sim(self.device)


@dataclass(frozen=True)
class ConsumeMeasurement:
    """Training throughput over the timed steps (img/s, ms per step), the host's share of a step,
    and peak memory (bytes)."""

    images_per_sec: Summary  # batch_size / seconds, one value per timed step (or read-back group)
    step_ms: Summary
    peak_memory_bytes: int | None  # bench.capacity: absolute on CUDA, RSS growth on CPU, None simulated
    batch_size: int
    size: Shape
    device: str
    model: str
    threads: int  # torch intra-op threads in effect during the steps
    channels_last: bool
    amp: bool
    optimizer: str = "adamw"
    host_ms_per_step: float = 0.0  # the main thread's CPU time per step (launching, or computing on the CPU)
    cpu_s_per_image: float = 0.0  # the process's CPU time per image, all threads (core-seconds)
    step: dict | None = None  # the StepConfig measured

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_batch(config: ConsumeConfig, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as the device step receives it, made on the device (no transfer timed): normalized-like
    floats on a torch device (channels_last where the step says), uint8 for the simulated one."""
    if config.simulated:
        return torch.zeros(batch_size, 3, *config.size, dtype=torch.uint8), torch.zeros(batch_size, dtype=torch.int64)
    device = torch.device(config.device)
    images = torch.randn(batch_size, 3, *config.size, device=device)
    if config.step.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, config.num_classes, (batch_size,), device=device)
    return images, labels


def training_step(config: ConsumeConfig, model: torch.nn.Module | None = None):
    """The step ``config`` describes (resolved), ready to run: a TrainStep on a torch device with
    a fresh optimizer and cross-entropy, or a SimStep on a new simulated accelerator."""
    if config.simulated:
        from feeding.sim import SimAccelerator, SimSpec

        return SimStep(SimAccelerator(SimSpec.parse(config.device)), config.step)
    model = model if model is not None else build_model(config.model, config.num_classes)
    device = torch.device(config.device)
    step = TrainStep(model, create_optimizer(model, config.step), torch.nn.CrossEntropyLoss(), config.step, device)
    step.train()
    return step


def run_steps(step, images: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
    """``steps`` training steps on one batch, read back every ``loss_every`` (and at the end);
    the wall seconds of each read-back group, each ended by its read (a synchronization)."""
    every = step.config.loss_every
    seconds, pending, started = [], [], time.perf_counter()
    for number in range(steps):
        pending.append(step.run(images, labels))
        step.update()
        if len(pending) == every or number + 1 == steps:
            step.read(pending, [len(labels)] * len(pending))
            now = time.perf_counter()
            seconds += [(now - started) / len(pending)] * len(pending)
            pending, started = [], now
    return seconds


def measure_consumption(config: ConsumeConfig, model: torch.nn.Module | None = None) -> ConsumeMeasurement:
    """Images/sec the training step takes, over ``config.steps`` timed steps after ``config.warmup``.

    ``model`` (default: ``build_model(config.model, ...)``) is moved to the device and trained in
    place: its weights change. The peak memory covers warm-up and timed steps.
    """
    from bench.capacity import PeakMemory

    config = config.resolved()
    step_device = torch.device("cpu" if config.simulated else config.device)
    with step_settings(config.step, step_device, config.threads):
        step = training_step(config, model)
        images, labels = synthetic_batch(config, config.batch_size)
        peak = PeakMemory(step_device) if not config.simulated else None
        if config.warmup:
            run_steps(step, images, labels, config.warmup)
        thread0, process0 = time.thread_time(), time.process_time()
        seconds = run_steps(step, images, labels, config.steps)
        host_s, process_s = time.thread_time() - thread0, time.process_time() - process0
        threads = torch.get_num_threads()
        peak_bytes = peak.read() if peak is not None else None
        if config.simulated:
            step.accelerator.close()
    return ConsumeMeasurement(
        images_per_sec=summarize(config.batch_size / s for s in seconds),
        step_ms=summarize(s * 1000 for s in seconds),
        peak_memory_bytes=peak_bytes,
        batch_size=config.batch_size,
        size=config.size,
        device=config.device,
        model=config.model,
        threads=threads,
        channels_last=config.step.channels_last,
        amp=config.step.amp,
        optimizer=config.step.optimizer,
        host_ms_per_step=1000 * host_s / config.steps,
        cpu_s_per_image=process_s / (config.steps * config.batch_size),
        step=config.step.to_dict(),
    )
