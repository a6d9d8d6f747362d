"""Sizes and boxes of the geometric ops: argument forms, torchvision's shorter-side rounding, the centre
window and RandomResizedCrop's box (``feeding.ops.geometry`` holds the ops themselves). Pure functions."""
from __future__ import annotations

import math
import numbers

import numpy as np

from feeding import affine
from feeding.affine import Box, Shape

whole = affine.whole  # the box of a whole image


def plain_size(size):
    """A size as ``checks.size`` takes it: a 1-item sequence is its item (torchvision's), NumPy ints are ints."""
    if isinstance(size, (tuple, list)) and len(size) == 1:
        size = size[0]
    if isinstance(size, (tuple, list)):
        return tuple(plain_int(value) for value in size)
    return plain_int(size)


def plain_int(value):
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def float_pair(name: str, value) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}")
    return float(value[0]), float(value[1])


def check_range(name: str, lo: float, hi: float, lo_min: float) -> None:
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


def center_box(source: Shape, size: Shape) -> Box:
    """(top, left, height, width) of the central ``size`` window; may be negative if larger."""
    return (source[0] - size[0]) // 2, (source[1] - size[1]) // 2, size[0], size[1]


def draw_crop_box(source: Shape, scale: tuple[float, float], ratio: tuple[float, float],
                  rng: np.random.Generator) -> Box:
    """torchvision's RandomResizedCrop box: (top, left, height, width) in source pixels."""
    height, width = source
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: central crop with the aspect clamped into range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
