"""One training step, the same wherever it runs: ``training.fit``'s epochs, ``feedbench tune``'s
consumption measurement and its end-to-end check.

A step's speed depends on more than the model: the optimizer (AdamW keeps two buffers per
weight, SGD one), bfloat16 autocast, the memory format, cuDNN's autotuner, gradient
accumulation and how often the loss is read back to the host (each read waits for the device).
``StepConfig`` holds all of them; the tuner records it with its recommendation and
``training.fit --pipeline best`` trains with it, so the rate it measures is the rate predicted.

``TrainStep`` runs it on a torch device; ``SimStep`` runs it on the simulated accelerator
(``feeding.sim``), where the model's arithmetic is a wait on the device's thread.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace

import torch

from feeding import checks

OPTIMIZERS = ("adamw", "sgd", "adamp")


@dataclass(frozen=True)
class StepConfig:
    """How a step runs. ``loss_every``: read the loss back every N batches (1: every batch, as a
    ``loss.item()`` per step does; the epoch's last batch is always read)."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    amp: bool = False  # bfloat16 autocast (CUDA): float32's range, so no loss scaling
    channels_last: bool = False
    cudnn_benchmark: bool = False
    accum_steps: int = 1
    loss_every: int = 1

    def __post_init__(self) -> None:
        checks.choice("optimizer", self.optimizer, OPTIMIZERS)
        checks.positive("lr", self.lr)
        checks.number("weight_decay", self.weight_decay, minimum=0)
        for name in ("amp", "channels_last", "cudnn_benchmark"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        checks.count("accum_steps", self.accum_steps)
        checks.count("loss_every", self.loss_every)

    @classmethod
    def for_device(cls, device: str, **settings) -> StepConfig:
        """The fast defaults of ``device`` (CUDA: bf16, channels_last, cudnn.benchmark; elsewhere
        none of them), then ``settings`` where given (None: the default)."""
        cuda = str(device).startswith("cuda")
        defaults = {"amp": cuda, "channels_last": cuda, "cudnn_benchmark": cuda}
        given = {key: value for key, value in settings.items() if value is not None}
        return cls(**{**defaults, **given})

    def to_dict(self) -> dict:
        return asdict(self)

    def differences(self, other: StepConfig) -> list[str]:
        """'amp: True here, False there' for each setting that differs (what fit reports)."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{key}: {mine[key]!r} here, {theirs[key]!r} there" for key in mine if mine[key] != theirs[key]]

    def with_(self, **changes) -> StepConfig:
        return replace(self, **changes)


@contextlib.contextmanager
def step_settings(config: StepConfig, device: torch.device, threads: int | None = None):
    """cuDNN's autotuner (CUDA) and torch's CPU threads as the step wants them, restored after."""
    previous_benchmark, previous_threads = torch.backends.cudnn.benchmark, torch.get_num_threads()
    try:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
        if threads:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
        torch.set_num_threads(previous_threads)


def create_optimizer(model: torch.nn.Module, config: StepConfig) -> torch.optim.Optimizer:
    """timm's optimizer factory (AdamW, SGD with Nesterov momentum, AdamP)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)


class TrainStep:
    """Forward, loss and backward of one batch on a torch device; ``update`` steps the optimizer.

    ``run`` returns the loss as a device tensor, not read: reading it is the caller's choice
    (``loss_every``), since each read waits for the device.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn, config: StepConfig,
                 device: torch.device) -> None:
        self.model, self.optimizer, self.loss_fn, self.config = model, optimizer, loss_fn, config
        self.device = torch.device(device)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=memory_format)
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group (what the schedule set)."""
        return self.optimizer.param_groups[0]["lr"]

    def train(self) -> None:
        self.model.train()

    def run(self, images: torch.Tensor, labels: torch.Tensor, group: int = 1, sync_gradients: bool = True):
        """Forward and backward of one batch; its gradients scaled by 1/``group`` (the batches of its
        accumulation group). ``sync_gradients=False``: under DDP, no all-reduce on this batch."""
        no_sync = getattr(self.model, "no_sync", None) if not sync_gradients else None
        with no_sync() if no_sync else contextlib.nullcontext():
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.config.amp):
                loss = self.loss_fn(self.model(images), labels)
            (loss / group).backward()
        return loss.detach()

    def update(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def read(self, losses: list, counts: list[int]) -> float:
        """The summed loss x images of ``losses`` on the host: one read, one wait for the device."""
        weights = torch.tensor(counts, dtype=torch.float32, device=losses[0].device)
        return float((torch.stack(losses).float() * weights).sum().item())

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class SimStep:
    """A step on the simulated accelerator: the host's launch work, then the device's wait.

    Its loss is a ``feeding.sim.SimLoss``: reading it waits for that step, as a CUDA loss does.
    """

    def __init__(self, accelerator, config: StepConfig) -> None:
        self.accelerator, self.config = accelerator, config
        self.device = accelerator

    lr = 0.0

    def train(self) -> None:
        pass

    def run(self, images: torch.Tensor, labels: torch.Tensor, group: int = 1, sync_gradients: bool = True):
        from feeding.sim import SimLoss

        return SimLoss(self.accelerator, self.accelerator.launch(len(images), tuple(images.shape[-2:])))

    def update(self) -> None:
        pass

    def read(self, losses: list, counts: list[int]) -> float:
        """Waits for the last of ``losses`` (the device runs steps in order); a simulated loss is 0."""
        losses[-1].item()
        return 0.0

    def synchronize(self) -> None:
        self.accelerator.wait()
