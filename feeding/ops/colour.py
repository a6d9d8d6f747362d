"""The colour ops: ColorJitter in the feeder, Normalize on the device.

See ``feeding.ops.base`` for what an op declares and implements. ``Normalize`` is
part of the spec but never runs in a worker: batches travel as uint8 and are
normalized on the device (see ``feeding.device``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from PIL import ImageEnhance

from feeding import checks
from feeding.ops.base import Op

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _dali_factor(low: float, high: float):
    """A per-sample factor drawn from [low, high] (a constant where they are equal)."""
    from nvidia.dali import fn

    return fn.random.uniform(range=(low, high)) if low != high else low


_JITTER_FIELDS = ("brightness", "contrast", "saturation")
_LEVELS = np.arange(256, dtype=np.float32)
# ITU-R 601 luma, as PIL's convert("L") and OpenCV's RGB2GRAY weigh the channels.
_LUMA = (0.299, 0.587, 0.114)


def _blend_lut(factor: float, towards: float, lut: np.ndarray) -> np.ndarray:
    """PIL's ``Image.blend(degenerate, image, factor)`` on levels: towards + factor * (v - towards), clipped."""
    return np.floor(np.clip(towards + factor * (lut - towards), 0, 255))  # PIL truncates each blend


@dataclass(frozen=True)
class ColorJitter(Op):
    """Scale brightness, contrast and saturation by random factors, as PIL's ImageEnhance does.

    Each field is torchvision's: a number x draws the factor from [max(0, 1 - x), 1 + x], a
    (low, high) pair from [low, high] (``(1.2, 1.2)``: always 1.2, no draw). Applied in the order
    brightness, contrast, saturation (torchvision draws an order per image; the three are
    linear in the pixel values, so orders differ only where a step clips). Contrast pivots on
    the image's mean grey, so it depends on the whole image: a crop or black corners before it
    change its result, which is why the planner never moves it.
    """

    brightness: float | tuple[float, float] = 0.0
    contrast: float | tuple[float, float] = 0.0
    saturation: float | tuple[float, float] = 0.0

    relative_cost = 1.5

    def __post_init__(self) -> None:
        ranges = {}
        for name in _JITTER_FIELDS:
            value = getattr(self, name)
            ranges[name] = checks.span(f"ColorJitter.{name}", value, 1.0, 0.0, math.inf)
            if isinstance(value, (tuple, list)):
                object.__setattr__(self, name, ranges[name])
        object.__setattr__(self, "_ranges", ranges)

    def factor_range(self, name: str) -> tuple[float, float]:
        """(low, high) of the factor ``name`` ("brightness", "contrast" or "saturation") is drawn from."""
        return self._ranges[name]

    @property
    def is_random(self) -> bool:
        return any(low != high for low, high in self._ranges.values())

    @property
    def changes_nothing(self) -> bool:
        return all(r == (1.0, 1.0) for r in self._ranges.values())

    def pinned(self) -> "ColorJitter":
        return ColorJitter(*((high, high) for _, high in (self._ranges[name] for name in _JITTER_FIELDS)))

    def draw(self, shape, rng) -> tuple[float, float, float]:
        """(brightness, contrast, saturation) factors, drawn in that order (a fixed one draws nothing)."""
        return tuple(  # type: ignore[return-value]
            float(rng.uniform(low, high)) if low != high else low
            for low, high in (self._ranges[name] for name in _JITTER_FIELDS)
        )

    def pil(self, image, shape, factors):
        for enhancer, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), factors):
            if factor != 1.0:
                image = enhancer(image).enhance(factor)
        return image

    def opencv(self, image: np.ndarray, factors) -> np.ndarray:
        """The same three steps on an HxWx3 (or RGBX HxWx4) uint8 array, with OpenCV calls that release
        the GIL: brightness and contrast as one 256-level lookup table, saturation as one weighted sum
        with the grey image. Within one level of ``pil`` (rounding)."""
        import cv2

        brightness, contrast, saturation = factors
        if brightness != 1.0 or contrast != 1.0:
            lut = _blend_lut(brightness, 0.0, _LEVELS)
            if contrast != 1.0:
                # The pivot is the mean grey of the brightened image, rounded as PIL's ImageStat gives it.
                means = cv2.mean(image)
                grey = sum(w * m for w, m in zip(_LUMA, means[:3]))
                mean = int(float(np.interp(grey, _LEVELS, lut)) + 0.5)
                lut = _blend_lut(contrast, float(mean), lut)
            image = cv2.LUT(image, lut.astype(np.uint8))
        if saturation != 1.0:
            rgbx = image.shape[2] == 4
            grey = cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY if rgbx else cv2.COLOR_RGB2GRAY)
            grey = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGBA if rgbx else cv2.COLOR_GRAY2RGB)
            image = cv2.addWeighted(image, saturation, grey, 1.0 - saturation, -0.5)  # -0.5: PIL truncates
        return image

    def albumentations(self):
        import albumentations as A

        if self.changes_nothing:
            return []
        ranges = self._ranges
        return [A.ColorJitter(brightness=ranges["brightness"], contrast=ranges["contrast"],
                              saturation=ranges["saturation"], hue=(0.0, 0.0), p=1.0)]

    def dali(self, images, device):
        from nvidia.dali import fn, types

        # As PIL's ImageEnhance (the PIL backend): brightness scales, contrast pivots
        # on the image's mean grey, saturation blends with the grey image.
        brightness, contrast, saturation = (self._ranges[name] for name in _JITTER_FIELDS)
        if brightness != (1.0, 1.0) or contrast != (1.0, 1.0):
            mean_grey = fn.reductions.mean(
                fn.color_space_conversion(images, device=device, image_type=types.RGB, output_type=types.GRAY))
            if device == "gpu":
                mean_grey = mean_grey.cpu()  # named arguments must live on the CPU (one scalar per image)
            images = fn.brightness_contrast(images, device=device, brightness=_dali_factor(*brightness),
                                            contrast=_dali_factor(*contrast), contrast_center=mean_grey)
        if saturation != (1.0, 1.0):
            images = fn.saturation(images, device=device, saturation=_dali_factor(*saturation))
        return images


@dataclass(frozen=True)
class Normalize(Op):
    """(x/255 - mean) / std per channel; runs on the device after transfer."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    relative_cost = 0.0
    on_device = True

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("Normalize.mean and .std need 3 values (RGB)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalize.std must be positive, got {self.std}")
