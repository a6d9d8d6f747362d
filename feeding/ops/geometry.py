"""The geometric ops: resize, crops, rotate and flip, each with its draws, warp piece and backend forms.

See ``feeding.ops.base`` for what an op declares and implements. The crops' and
resizes' parameter is the box of their input they read (``region``); the rotate's
an angle, the flip's a yes or no.
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np
from PIL import Image

from feeding import affine, checks
from feeding.affine import Box, Shape
from feeding.ops.base import NO_SCALE, Op


# ---------------------------------------------------------------- sizes and boxes


def _plain(size):
    """A size as ``checks.size`` takes it: a 1-item sequence is its item (torchvision's), NumPy ints are ints."""
    if isinstance(size, (tuple, list)) and len(size) == 1:
        size = size[0]
    if isinstance(size, (tuple, list)):
        return tuple(_plain_int(value) for value in size)
    return _plain_int(size)


def _plain_int(value):
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


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


def whole(shape: Shape) -> Box:
    """The box of a whole ``shape`` image."""
    return (0, 0, *shape)


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


# ---------------------------------------------------------------- the backends' shared pieces


def _pil_resize_box(image: Image.Image, shape: Shape, box: Box, size: Shape) -> Image.Image:
    """Resize the box (in pixels of ``shape``) of ``image``, which may be a draft-reduced ``shape``, to ``size``."""
    sy, sx = image.height / shape[0], image.width / shape[1]
    top, left, h, w = box
    region = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    return image.resize((size[1], size[0]), Image.BILINEAR, box=region)


def resize_to(image: np.ndarray, shape: Shape) -> np.ndarray:
    """Resize to (height, width) pixels as ``A.Resize(area_for_downscale="image")`` does: area when shrinking."""
    import cv2

    if shape == image.shape[:2]:
        return image
    shrinks = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR)


def _resize_shorter_side(image: np.ndarray, op: "Resize", **_params) -> np.ndarray:
    return resize_to(image, op.out_shape(image.shape[:2]))


def _dali_resize(images, device: str, height, width):
    from nvidia.dali import fn, types

    return fn.resize(images, device=device, resize_x=width, resize_y=height, interp_type=types.INTERP_LINEAR,
                     antialias=True)


def _dali_shorter_side_shape(images, shorter: int):
    """Per-sample (height, width) of ``shorter_side_shape``, as float DALI nodes on the CPU.

    Not ``fn.resize(resize_shorter=...)``: it rounds the longer side to the
    nearest pixel, where torchvision (and the host backends) truncate.
    """
    from nvidia.dali import fn, types
    from nvidia.dali import math as dali_math

    shape = images.shape()  # HWC, int64, on the CPU (named arguments must live there)
    height, width = shape[0], shape[1]
    short = dali_math.min(height, width)
    return (fn.cast(shorter * height // short, dtype=types.FLOAT),
            fn.cast(shorter * width // short, dtype=types.FLOAT))


# ---------------------------------------------------------------- the ops


@dataclass(frozen=True)
class Resize(Op):
    """Resize, antialiased when shrinking, as ``torchvision.transforms.Resize``.

    ``size`` (height, width) in pixels: exactly that size. An int (or a 1-item
    sequence): the shorter side becomes ``size`` pixels and the aspect ratio is
    kept, so the output size depends on the image (see ``shorter_side_shape``).
    """

    size: int | Shape

    relative_cost = 1.0
    reduces = True
    resamples = True
    warp_role = "resize"

    def __post_init__(self) -> None:
        size = _plain(self.size)
        pair = isinstance(size, (tuple, list))
        try:
            size = checks.size("Resize.size", size) if pair else checks.count("Resize.size", size)
        except ValueError:  # in Resize's words: an int is the shorter side here, not a square
            raise ValueError("Resize.size must be a positive int (the shorter side) or a (height, width) pair, "
                             f"got {self.size!r}") from None
        object.__setattr__(self, "size", size)

    @property
    def keeps_aspect(self) -> bool:
        """True for ``Resize(int)``: the shorter side is set, the output shape follows the image."""
        return isinstance(self.size, int)

    @property
    def fixes_size(self) -> bool:
        return not self.keeps_aspect

    def out_shape(self, shape: Shape) -> Shape:
        return shorter_side_shape(shape, self.size) if self.keeps_aspect else self.size

    def region(self, shape, rng):
        return whole(shape)

    def warp(self, shape, box, scale=NO_SCALE):
        return affine.resize_piece(box, self.out_shape(shape), scale)

    def pil(self, image, shape, box):
        return _pil_resize_box(image, shape, box, self.out_shape(shape))

    def albumentations(self):
        import albumentations as A
        import cv2

        if self.keeps_aspect:
            # Not SmallestMaxSize: it rounds the longer side to nearest, where torchvision truncates.
            return [A.Lambda(image=functools.partial(_resize_shorter_side, op=self), p=1.0)]
        return [A.Resize(*self.size, interpolation=cv2.INTER_LINEAR, area_for_downscale="image")]

    def dali(self, images, device):
        height, width = _dali_shorter_side_shape(images, self.size) if self.keeps_aspect else self.size
        return _dali_resize(images, device, height, width)


@dataclass(frozen=True)
class RandomResizedCrop(Op):
    """Crop a random area fraction ``scale`` with aspect ``ratio``, resize to ``size``."""

    size: Shape  # an int means a square, as torchvision's
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    relative_cost = 1.0
    reduces = True
    fixes_size = True
    resamples = True
    is_random = True
    warp_role = "window"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", checks.size("RandomResizedCrop.size", _plain(self.size)))
        object.__setattr__(self, "scale", _float_pair("RandomResizedCrop.scale", self.scale))
        object.__setattr__(self, "ratio", _float_pair("RandomResizedCrop.ratio", self.ratio))
        _check_range("RandomResizedCrop.scale", *self.scale, lo_min=1e-6)
        if self.scale[1] > 1.0:
            raise ValueError(f"RandomResizedCrop.scale upper bound must be <= 1, got {self.scale}")
        _check_range("RandomResizedCrop.ratio", *self.ratio, lo_min=1e-6)

    def out_shape(self, shape: Shape) -> Shape:
        return self.size

    def region(self, shape, rng):
        return draw_crop_box(shape, self.scale, self.ratio, rng)

    def warp(self, shape, box, scale=NO_SCALE):
        return affine.resize_piece(box, self.size, scale)

    def pil(self, image, shape, box):
        return _pil_resize_box(image, shape, box, self.size)

    def albumentations(self):
        import albumentations as A
        import cv2

        return [A.RandomResizedCrop(size=self.size, scale=self.scale, ratio=self.ratio,
                                    interpolation=cv2.INTER_LINEAR, area_for_downscale="image")]

    def dali(self, images, device):
        from nvidia.dali import fn, types

        return fn.random_resized_crop(images, device=device, size=self.size, random_area=self.scale,
                                      random_aspect_ratio=self.ratio, interp_type=types.INTERP_LINEAR,
                                      antialias=True)

    def dali_decode(self, encoded, decoder, device):
        from nvidia.dali import fn, types

        # Region-of-interest decode: only the crop window is decoded.
        images = fn.decoders.image_random_crop(encoded, device=decoder, output_type=types.RGB,
                                               random_area=self.scale, random_aspect_ratio=self.ratio)
        return _dali_resize(images, device, *self.size)


@dataclass(frozen=True)
class CenterCrop(Op):
    """Cut the central ``size`` window (no resampling; pads with black if larger)."""

    size: Shape  # an int means a square, as torchvision's

    relative_cost = 0.1
    reduces = True
    fixes_size = True
    warp_role = "crop"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", checks.size("CenterCrop.size", _plain(self.size)))

    def out_shape(self, shape: Shape) -> Shape:
        return self.size

    def region(self, shape, rng):
        return center_box(shape, self.size)

    def warp(self, shape, box, scale=NO_SCALE):
        return affine.shift_piece(box, scale)

    def pil(self, image, shape, box):
        top, left, h, w = box
        return image.crop((left, top, left + w, top + h))

    def albumentations(self):
        import albumentations as A
        import cv2

        return [A.CenterCrop(*self.size, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, fill=0)]

    def dali(self, images, device):
        from nvidia.dali import fn

        # rounding="truncate" puts the window at (H - h) // 2 as center_box does. (Not
        # fn.decoders.image_crop as a first step: it fails on a window larger than the image.)
        return fn.crop(images, device=device, crop=self.size, rounding="truncate", out_of_bounds_policy="pad",
                       fill_values=0)


@dataclass(frozen=True)
class Rotate(Op):
    """Rotate about the centre by an angle drawn uniformly from ±``degrees``; black fill."""

    degrees: float

    relative_cost = 2.0
    warp_role = "turn"

    def __post_init__(self) -> None:
        checks.number("Rotate.degrees", self.degrees, 0, 180)

    @property
    def is_random(self) -> bool:
        return self.degrees > 0

    def draw(self, shape, rng) -> float:
        """The angle in degrees, counter-clockwise."""
        return float(rng.uniform(-self.degrees, self.degrees)) if self.degrees else 0.0

    def warp(self, shape, angle, scale=NO_SCALE):
        return affine.rotation_piece(shape, angle) if angle else None

    def pil(self, image, shape, angle):
        return image.rotate(angle, resample=Image.BILINEAR, fillcolor=(0, 0, 0)) if angle else image

    def albumentations(self):
        import albumentations as A
        import cv2

        if not self.degrees:
            return []
        return [A.Rotate(limit=(-self.degrees, self.degrees), interpolation=cv2.INTER_LINEAR,
                         border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)]

    def dali(self, images, device):
        from nvidia.dali import fn, types

        if not self.degrees:
            return images
        return fn.rotate(images, device=device, angle=fn.random.uniform(range=(-self.degrees, self.degrees)),
                         keep_size=True, fill_value=0, interp_type=types.INTERP_LINEAR)


@dataclass(frozen=True)
class HorizontalFlip(Op):
    """Mirror left-right with probability ``p``."""

    p: float = 0.5

    relative_cost = 0.2
    warp_role = "mirror"

    def __post_init__(self) -> None:
        checks.number("HorizontalFlip.p", self.p, 0, 1)

    @property
    def is_random(self) -> bool:
        return 0 < self.p < 1

    def draw(self, shape, rng) -> bool:
        """Whether this image is mirrored."""
        return bool(rng.random() < self.p)

    def warp(self, shape, flip, scale=NO_SCALE):
        return affine.mirror_piece(shape) if flip else None

    def pil(self, image, shape, flip):
        return image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image

    def albumentations(self):
        import albumentations as A

        return [A.HorizontalFlip(p=self.p)] if self.p else []

    def dali(self, images, device):
        from nvidia.dali import fn

        return images if self.p == 0 else fn.flip(images, device=device, horizontal=self._dali_draw())

    def dali_mirror(self):
        return 0 if self.p == 0 else self._dali_draw()

    def _dali_draw(self):
        from nvidia.dali import fn

        return 1 if self.p >= 1 else fn.random.coin_flip(probability=self.p)
