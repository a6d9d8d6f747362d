"""The one declarative augmentation spec that every backend compiles.

An op is a frozen, self-validating dataclass that knows two things the planner
needs: the image shape it outputs for a given input shape, and a rough cost per
output pixel. Shapes are always ``(height, width)`` in pixels.

``Normalize`` is part of the spec but never runs in a worker: batches travel as
uint8 and are normalized on the device (see ``feeding.device``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

Shape = tuple[int, int]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_size(name: str, size: Shape) -> Shape:
    if (
        not isinstance(size, tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise ValueError(f"{name}.size must be a (height, width) pair of positive ints, got {size!r}")
    return size


def _check_range(name: str, lo: float, hi: float, lo_min: float) -> None:
    if not (lo_min <= lo <= hi):
        raise ValueError(f"{name}: need {lo_min} <= low <= high, got ({lo}, {hi})")


@dataclass(frozen=True)
class Resize:
    """Resize to exactly ``size`` (height, width), antialiased when shrinking."""

    size: Shape

    def __post_init__(self) -> None:
        _check_size("Resize", self.size)

    def out_shape(self, shape: Shape) -> Shape:
        return self.size

    relative_cost = 1.0
    reduces = True
    is_random = False


@dataclass(frozen=True)
class RandomResizedCrop:
    """Crop a random area fraction ``scale`` with aspect ``ratio``, resize to ``size``."""

    size: Shape
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        _check_size("RandomResizedCrop", self.size)
        _check_range("RandomResizedCrop.scale", *self.scale, lo_min=1e-6)
        if self.scale[1] > 1.0:
            raise ValueError(f"RandomResizedCrop.scale upper bound must be <= 1, got {self.scale}")
        _check_range("RandomResizedCrop.ratio", *self.ratio, lo_min=1e-6)

    def out_shape(self, shape: Shape) -> Shape:
        return self.size

    relative_cost = 1.0
    reduces = True
    is_random = True


@dataclass(frozen=True)
class CenterCrop:
    """Cut the central ``size`` window (no resampling; pads with black if larger)."""

    size: Shape

    def __post_init__(self) -> None:
        _check_size("CenterCrop", self.size)

    def out_shape(self, shape: Shape) -> Shape:
        return self.size

    relative_cost = 0.1
    reduces = True
    is_random = False


@dataclass(frozen=True)
class Rotate:
    """Rotate about the centre by an angle drawn uniformly from ±``degrees``; black fill."""

    degrees: float

    def __post_init__(self) -> None:
        if not 0 <= self.degrees <= 180:
            raise ValueError(f"Rotate.degrees must be within [0, 180], got {self.degrees}")

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    relative_cost = 2.0
    reduces = False

    @property
    def is_random(self) -> bool:
        return self.degrees > 0


@dataclass(frozen=True)
class HorizontalFlip:
    """Mirror left-right with probability ``p``."""

    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.p <= 1:
            raise ValueError(f"HorizontalFlip.p must be within [0, 1], got {self.p}")

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    relative_cost = 0.2
    reduces = False

    @property
    def is_random(self) -> bool:
        return 0 < self.p < 1


@dataclass(frozen=True)
class ColorJitter:
    """Scale brightness, contrast and saturation by factors drawn from [1-x, 1+x]."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"ColorJitter.{name} must be within [0, 1), got {value}")

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    relative_cost = 1.5
    reduces = False

    @property
    def is_random(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation))


@dataclass(frozen=True)
class Normalize:
    """(x/255 - mean) / std per channel; runs on the device after transfer."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("Normalize.mean and .std need 3 values (RGB)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalize.std must be positive, got {self.std}")

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    relative_cost = 0.0
    reduces = False
    is_random = False


Op = Union[Resize, RandomResizedCrop, CenterCrop, Rotate, HorizontalFlip, ColorJitter, Normalize]
HOST_OPS = (Resize, RandomResizedCrop, CenterCrop, Rotate, HorizontalFlip, ColorJitter)


@dataclass(frozen=True)
class AugSpec:
    """An ordered list of ops, validated when built.

    The spec must fix the output shape (a Resize, RandomResizedCrop or
    CenterCrop must appear), so batches can be stacked. At most one Normalize,
    and it must come last.
    """

    ops: tuple[Op, ...]
    normalize: Normalize | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.ops, tuple):
            raise TypeError("AugSpec.ops must be a tuple of ops")
        for op in self.ops:
            if not isinstance(op, (*HOST_OPS, Normalize)):
                raise TypeError(f"unknown op {op!r}; known: {[c.__name__ for c in (*HOST_OPS, Normalize)]}")
        norms = [i for i, op in enumerate(self.ops) if isinstance(op, Normalize)]
        if len(norms) > 1 or (norms and norms[0] != len(self.ops) - 1):
            raise ValueError("Normalize may appear once, as the last op (it runs on the device)")
        if not any(op.reduces for op in self.ops):
            raise ValueError(
                "the spec must fix the output size: add Resize, RandomResizedCrop or CenterCrop"
            )
        object.__setattr__(self, "normalize", self.ops[norms[0]] if norms else None)

    @property
    def host_ops(self) -> tuple[Op, ...]:
        """The ops that run in the feeder (everything but Normalize)."""
        return tuple(op for op in self.ops if not isinstance(op, Normalize))

    @property
    def output_size(self) -> Shape:
        shape: Shape = (1, 1)
        for op in self.host_ops:
            shape = op.out_shape(shape)
        return shape

    @property
    def is_deterministic(self) -> bool:
        return not any(op.is_random for op in self.ops)


def train_spec(size: Shape = (224, 224), degrees: float = 10.0) -> AugSpec:
    """The benchmark spec of the project: resize, rotate ±degrees, flip, normalize."""
    return AugSpec((Rotate(degrees), Resize(size), HorizontalFlip(0.5), Normalize()))


def eval_spec(size: Shape = (224, 224)) -> AugSpec:
    """Deterministic evaluation spec: resize then normalize."""
    return AugSpec((Resize(size), Normalize()))


def parse_size(text: str) -> Shape:
    """Parse ``"224"`` or ``"HxW"`` (e.g. ``"256x192"``) into (height, width)."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size must be N or HxW with positive integers, got {text!r}") from None
    if len(values) == 1:
        values = (values[0], values[0])
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"size must be N or HxW with positive integers, got {text!r}")
    return values  # type: ignore[return-value]
