"""The one declarative augmentation spec that every backend compiles.

``AugSpec`` is an ordered tuple of ops (``feeding.ops``: each op's declaration of
the image shape it outputs and its rough cost, its random draws, and its form in
every backend). This module validates the list as a whole: that it fixes the
output size, so batches can be stacked, and that Normalize comes last. Shapes are
always ``(height, width)`` in pixels.

The ops are importable from here as well (``from feeding.spec import Resize``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from feeding.checks import parse_size
from feeding.ops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    ColorJitter,
    HorizontalFlip,
    Normalize,
    Op,
    RandomResizedCrop,
    Resize,
    Rotate,
    Shape,
    shorter_side_shape,
)


def _fixed_output_size(ops: tuple[Op, ...]) -> Shape:
    """The output (height, width) that ``ops`` (in this order) give every image; ValueError if it varies."""
    shape: Shape | None = None  # None: still the image's own size, so it varies from image to image
    keeps_aspect: Op | None = None
    for op in ops:
        if op.fixes_size:
            shape = op.out_shape((1, 1))
        elif shape is not None:
            shape = op.out_shape(shape)  # a shorter-side Resize of a known shape is known
        elif op.keeps_aspect:
            keeps_aspect = op
    if shape is not None:
        return shape
    if keeps_aspect is not None:
        raise ValueError(
            f"{type(keeps_aspect).__name__}({keeps_aspect.size}) keeps each image's aspect ratio, so the output "
            f"size varies: add a CenterCrop or RandomResizedCrop after it, or give Resize((h, w))"
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
            if not isinstance(op, Op):
                raise TypeError(f"unknown op {op!r}; known: {[c.__name__ for c in Op.registry]}")
        norms = [i for i, op in enumerate(self.ops) if isinstance(op, Normalize)]
        if len(norms) > 1 or (norms and norms[0] != len(self.ops) - 1):
            raise ValueError("Normalize may appear once, as the last op (it runs on the device)")
        _fixed_output_size(self.host_ops)
        object.__setattr__(self, "normalize", self.ops[norms[0]] if norms else None)

    @property
    def host_ops(self) -> tuple[Op, ...]:
        """The ops that run in the feeder (everything but Normalize, which runs on the device)."""
        return tuple(op for op in self.ops if not op.on_device)

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


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "AugSpec", "CenterCrop", "ColorJitter", "HorizontalFlip", "Normalize", "Op",
    "RandomResizedCrop", "Resize", "Rotate", "Shape", "eval_spec", "parse_size", "shorter_side_shape", "train_spec",
]
