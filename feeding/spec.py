"""The one declarative augmentation spec that every backend compiles.

An op is a frozen, self-validating dataclass that knows two things the planner
needs: the image shape it outputs for a given input shape, and a rough cost per
output pixel. Shapes are always ``(height, width)`` in pixels.

``Normalize`` is part of the spec but never runs in a worker: batches travel as
uint8 and are normalized on the device (see ``feeding.device``).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Union

Shape = tuple[int, int]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_side(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _check_size(name: str, size) -> Shape:
    """A (height, width) pair of positive ints (a list is taken as torchvision takes it), as a tuple."""
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(_is_side(v) for v in size):
        raise ValueError(f"{name}.size must be a (height, width) pair of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _square_or_pair(name: str, size) -> Shape:
    """torchvision's crop sizes: an int (or a 1-item sequence) is a square, else (height, width)."""
    if isinstance(size, (tuple, list)) and len(size) == 1:
        size = size[0]
    if _is_side(size):
        return int(size), int(size)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return _check_size(name, size)
    raise ValueError(f"{name}.size must be a positive int (a square) or a (height, width) pair, got {size!r}")


def _float_pair(name: str, value) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}")
    return float(value[0]), float(value[1])


def _check_range(name: str, lo: float, hi: float, lo_min: float) -> None:
    if not (lo_min <= lo <= hi):
        raise ValueError(f"{name}: need {lo_min} <= low <= high, got ({lo}, {hi})")


def shorter_side_shape(shape: Shape, shorter: int) -> Shape:
    """The (height, width) in pixels after scaling ``shape``'s shorter side to ``shorter``.

    torchvision's rounding (``_compute_resized_output_size``): the longer side is
    ``int(shorter * long / short)``. Floor division gives the same integer
    (a non-integral quotient lies at least 1/short from any integer, far beyond
    a float's error) and keeps the shorter side exact; the DALI graph uses it too.
    """
    height, width = shape
    short = min(height, width)
    return shorter * height // short, shorter * width // short


@dataclass(frozen=True)
class Resize:
    """Resize, antialiased when shrinking, as ``torchvision.transforms.Resize``.

    ``size`` (height, width) in pixels: exactly that size. An int (or a 1-item
    sequence): the shorter side becomes ``size`` pixels and the aspect ratio is
    kept, so the output size depends on the image (see ``shorter_side_shape``).
    """

    size: int | Shape

    def __post_init__(self) -> None:
        size = self.size
        if isinstance(size, (tuple, list)) and len(size) == 1:
            size = size[0]
        if _is_side(size):
            object.__setattr__(self, "size", int(size))
        elif isinstance(size, (tuple, list)) and len(size) == 2:
            object.__setattr__(self, "size", _check_size("Resize", size))
        else:
            raise ValueError(
                f"Resize.size must be a positive int (the shorter side) or a (height, width) pair, got {size!r}"
            )

    @property
    def keeps_aspect(self) -> bool:
        """True for ``Resize(int)``: the shorter side is set, the output shape follows the image."""
        return isinstance(self.size, int)

    @property
    def fixes_size(self) -> bool:
        return not self.keeps_aspect

    def out_shape(self, shape: Shape) -> Shape:
        return shorter_side_shape(shape, self.size) if self.keeps_aspect else self.size

    relative_cost = 1.0
    reduces = True
    is_random = False


@dataclass(frozen=True)
class RandomResizedCrop:
    """Crop a random area fraction ``scale`` with aspect ``ratio``, resize to ``size``."""

    size: Shape  # an int means a square, as torchvision's
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _square_or_pair("RandomResizedCrop", self.size))
        object.__setattr__(self, "scale", _float_pair("RandomResizedCrop.scale", self.scale))
        object.__setattr__(self, "ratio", _float_pair("RandomResizedCrop.ratio", self.ratio))
        _check_range("RandomResizedCrop.scale", *self.scale, lo_min=1e-6)
        if self.scale[1] > 1.0:
            raise ValueError(f"RandomResizedCrop.scale upper bound must be <= 1, got {self.scale}")
        _check_range("RandomResizedCrop.ratio", *self.ratio, lo_min=1e-6)

    def out_shape(self, shape: Shape) -> Shape:
        return self.size

    relative_cost = 1.0
    reduces = True
    fixes_size = True
    is_random = True


@dataclass(frozen=True)
class CenterCrop:
    """Cut the central ``size`` window (no resampling; pads with black if larger)."""

    size: Shape  # an int means a square, as torchvision's

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _square_or_pair("CenterCrop", self.size))

    def out_shape(self, shape: Shape) -> Shape:
        return self.size

    relative_cost = 0.1
    reduces = True
    fixes_size = True
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
    fixes_size = False

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
    fixes_size = False

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
    fixes_size = False

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
    fixes_size = False
    is_random = False


Op = Union[Resize, RandomResizedCrop, CenterCrop, Rotate, HorizontalFlip, ColorJitter, Normalize]
HOST_OPS = (Resize, RandomResizedCrop, CenterCrop, Rotate, HorizontalFlip, ColorJitter)


def _fixed_output_size(ops: tuple[Op, ...]) -> Shape:
    """The output (height, width) that ``ops`` (in this order) give every image; ValueError if it varies."""
    shape: Shape | None = None  # None: still the image's own size, so it varies from image to image
    keeps_aspect: Resize | None = None
    for op in ops:
        if op.fixes_size:
            shape = op.out_shape((1, 1))
        elif shape is not None:
            shape = op.out_shape(shape)  # a shorter-side Resize of a known shape is known
        elif isinstance(op, Resize):
            keeps_aspect = op
    if shape is not None:
        return shape
    if keeps_aspect is not None:
        raise ValueError(
            f"Resize({keeps_aspect.size}) keeps each image's aspect ratio, so the output size varies: "
            f"add a CenterCrop or RandomResizedCrop after it, or give Resize((h, w))"
        )
    raise ValueError("the spec must fix the output size: add Resize, RandomResizedCrop or CenterCrop")


@dataclass(frozen=True)
class AugSpec:
    """An ordered list of ops, validated when built (a list is stored as a tuple, as Compose takes one).

    The spec must fix the output shape, so batches can be stacked: a
    Resize((h, w)), RandomResizedCrop or CenterCrop must appear, and a
    shorter-side Resize(int) must be followed by one of them unless it comes
    after one. At most one Normalize, and it must come last.
    """

    ops: tuple[Op, ...]
    normalize: Normalize | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if isinstance(self.ops, list):
            object.__setattr__(self, "ops", tuple(self.ops))
        if not isinstance(self.ops, tuple):
            raise TypeError(f"AugSpec takes a list or tuple of ops, got {type(self.ops).__name__}")
        for op in self.ops:
            if not isinstance(op, (*HOST_OPS, Normalize)):
                raise TypeError(f"unknown op {op!r}; known: {[c.__name__ for c in (*HOST_OPS, Normalize)]}")
        norms = [i for i, op in enumerate(self.ops) if isinstance(op, Normalize)]
        if len(norms) > 1 or (norms and norms[0] != len(self.ops) - 1):
            raise ValueError("Normalize may appear once, as the last op (it runs on the device)")
        _fixed_output_size(self.host_ops)
        object.__setattr__(self, "normalize", self.ops[norms[0]] if norms else None)

    @property
    def host_ops(self) -> tuple[Op, ...]:
        """The ops that run in the feeder (everything but Normalize)."""
        return tuple(op for op in self.ops if not isinstance(op, Normalize))

    @property
    def output_size(self) -> Shape:
        """(height, width) in pixels of every image the spec delivers."""
        return _fixed_output_size(self.host_ops)

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
