"""The geometric ops: resize, crops, rotate and flip, each with its draws, warp piece and backend forms.

See ``feeding.ops.base`` for what an op declares and implements. The crops' and
resizes' parameter is the box of their input they read (``region``); the rotate's
an angle, the flip's a yes or no.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from feeding import affine, checks
from feeding.affine import Box, Shape
from feeding.ops.base import Op
from feeding.ops.boxes import center_box, check_range, draw_crop_box, float_pair, plain_size, shorter_side_shape, whole
from feeding.ops.dali_forms import (
    dali_box_piece, dali_crop_box, dali_resize, dali_shape, dali_shorter_side_shape, dali_then, dali_xy,
)


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
        size = plain_size(self.size)
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

    def warp(self, shape, box):
        return affine.resize_piece(box, self.out_shape(shape))

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
        from nvidia.dali import fn, types

        if not self.keeps_aspect:
            return dali_resize(images, device, *self.size)
        height, width = dali_shorter_side_shape(dali_shape(images), self.size)
        return dali_resize(images, device, fn.cast(height, dtype=types.FLOAT), fn.cast(width, dtype=types.FLOAT))

    def dali_warp(self, total, shape):
        out = dali_shorter_side_shape(shape, self.size) if self.keeps_aspect else self.size
        return dali_box_piece(total, ((0, 0), shape), out), out


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
    warp_role = "window"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", checks.size("RandomResizedCrop.size", plain_size(self.size)))
        object.__setattr__(self, "scale", float_pair("RandomResizedCrop.scale", self.scale))
        object.__setattr__(self, "ratio", float_pair("RandomResizedCrop.ratio", self.ratio))
        check_range("RandomResizedCrop.scale", *self.scale, lo_min=1e-6)
        if self.scale[1] > 1.0:
            raise ValueError(f"RandomResizedCrop.scale upper bound must be <= 1, got {self.scale}")
        check_range("RandomResizedCrop.ratio", *self.ratio, lo_min=1e-6)

    def out_shape(self, shape: Shape) -> Shape:
        return self.size

    @property
    def is_random(self) -> bool:
        """False only for the whole area at one aspect ratio: the box is then the same for every draw."""
        return not (self.scale == (1.0, 1.0) and self.ratio[0] == self.ratio[1])

    def pinned(self) -> "RandomResizedCrop":
        """The whole area at the lower aspect ratio: the box every draw (and every library) agrees on."""
        return dataclasses.replace(self, scale=(1.0, 1.0), ratio=(self.ratio[0], self.ratio[0]))

    def region(self, shape, rng):
        return draw_crop_box(shape, self.scale, self.ratio, rng)

    def warp(self, shape, box):
        return affine.resize_piece(box, self.size)

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

    def dali_warp(self, total, shape):
        return dali_box_piece(total, dali_crop_box(shape, self.scale, self.ratio), self.size), self.size

    def dali_decode(self, encoded, decoder, device):
        from nvidia.dali import fn, types

        # Region-of-interest decode: only the crop window is decoded.
        images = fn.decoders.image_random_crop(encoded, device=decoder, output_type=types.RGB,
                                               random_area=self.scale, random_aspect_ratio=self.ratio)
        return dali_resize(images, device, *self.size)


@dataclass(frozen=True)
class CenterCrop(Op):
    """Cut the central ``size`` window (no resampling; pads with black if larger)."""

    size: Shape  # an int means a square, as torchvision's

    relative_cost = 0.1
    reduces = True
    fixes_size = True
    warp_role = "crop"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", checks.size("CenterCrop.size", plain_size(self.size)))

    def out_shape(self, shape: Shape) -> Shape:
        return self.size

    def region(self, shape, rng):
        return center_box(shape, self.size)

    def warp(self, shape, box):
        return affine.shift_piece(box)

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

    def dali_warp(self, total, shape):
        from nvidia.dali import fn
        from nvidia.dali import math as dali_math

        # center_box's floor division: DALI's integer // truncates towards zero (a padding crop's is negative).
        top, left = (dali_math.floor((side - size) / 2) for side, size in zip(shape, self.size))
        return dali_then(total, fn.transforms.translation, offset=dali_xy(-left, -top)), self.size


@dataclass(frozen=True)
class Rotate(Op):
    """Rotate about the centre, counter-clockwise, by an angle drawn uniformly in degrees; black fill.

    As torchvision's ``RandomRotation``: ``Rotate(10)`` draws from [-10, 10], ``Rotate((lo, hi))``
    from [lo, hi], and ``Rotate((10, 10))`` always turns 10 degrees (and draws nothing).
    """

    degrees: float | tuple[float, float]

    relative_cost = 2.0
    warp_role = "turn"

    def __post_init__(self) -> None:
        limits = checks.span("Rotate.degrees", self.degrees, 0.0, -180.0, 180.0)
        if not isinstance(self.degrees, (tuple, list)):
            limits = (-limits[1], limits[1])  # a number is a symmetric range, whatever the clamp says
        object.__setattr__(self, "degrees", limits if isinstance(self.degrees, (tuple, list)) else self.degrees)
        object.__setattr__(self, "_limits", limits)

    @property
    def limits(self) -> tuple[float, float]:
        """(low, high) in degrees, counter-clockwise positive."""
        return self._limits

    @property
    def is_random(self) -> bool:
        return self.limits[0] != self.limits[1]

    def pinned(self) -> "Rotate":
        return Rotate((self.limits[1], self.limits[1]))

    def draw(self, shape, rng) -> float:
        """The angle in degrees, counter-clockwise."""
        low, high = self.limits
        return float(rng.uniform(low, high)) if low != high else low

    def warp(self, shape, angle):
        return affine.rotation_piece(shape, angle) if angle else None

    def pil(self, image, shape, angle):
        return image.rotate(angle, resample=Image.BILINEAR, fillcolor=(0, 0, 0)) if angle else image

    def albumentations(self):
        import albumentations as A
        import cv2

        if self.limits == (0.0, 0.0):
            return []
        # OpenCV's angles, as PIL's, turn counter-clockwise (y down, so getRotationMatrix2D's sign).
        return [A.Rotate(limit=self.limits, interpolation=cv2.INTER_LINEAR,
                         border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)]

    def dali(self, images, device):
        from nvidia.dali import fn, types

        low, high = self.limits
        if (low, high) == (0.0, 0.0):
            return images
        angle = fn.random.uniform(range=(low, high)) if low != high else low
        return fn.rotate(images, device=device, angle=angle, keep_size=True, fill_value=0,
                         interp_type=types.INTERP_LINEAR)

    def dali_warp(self, total, shape):
        from nvidia.dali import fn

        low, high = self.limits
        if (low, high) == (0.0, 0.0):
            return total, shape
        # fn.transforms.rotation turns clockwise on screen (y down) for a positive angle: ours, negated.
        angle = fn.random.uniform(range=(-high, -low)) if low != high else -low
        height, width = shape
        return dali_then(total, fn.transforms.rotation, angle=angle, center=dali_xy(width / 2, height / 2)), shape


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

    def pinned(self) -> "HorizontalFlip":
        return HorizontalFlip(1.0 if self.p > 0 else 0.0)

    def draw(self, shape, rng) -> bool:
        """Whether this image is mirrored."""
        return bool(rng.random() < self.p)

    def warp(self, shape, flip):
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

    def dali_warp(self, total, shape):
        from nvidia.dali import fn

        if self.p == 0:
            return total, shape
        flip = self._dali_draw()  # 1, or a per-sample 0 or 1
        sign = -1 if isinstance(flip, int) else 1 - 2 * flip
        height, width = shape
        return dali_then(total, fn.transforms.scale, scale=dali_xy(sign, 1),
                          center=dali_xy(width / 2, height / 2)), shape

    def _dali_draw(self):
        from nvidia.dali import fn

        return 1 if self.p >= 1 else fn.random.coin_flip(probability=self.p)
