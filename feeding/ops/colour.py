"""The colour ops: ColorJitter in the feeder, Normalize on the device.

See ``feeding.ops.base`` for what an op declares and implements. ``Normalize`` is
part of the spec but never runs in a worker: batches travel as uint8 and are
normalized on the device (see ``feeding.device``).
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import ImageEnhance

from feeding import checks
from feeding.ops.base import Op

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _dali_uniform_factor(amount: float):
    """A per-sample factor drawn from [1 - amount, 1 + amount]."""
    from nvidia.dali import fn

    return fn.random.uniform(range=(1.0 - amount, 1.0 + amount))


@dataclass(frozen=True)
class ColorJitter(Op):
    """Scale brightness, contrast and saturation by factors drawn from [1-x, 1+x]."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    relative_cost = 1.5

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            checks.number(f"ColorJitter.{name}", getattr(self, name), 0, 1, open_maximum=True)

    @property
    def is_random(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation))

    def draw(self, shape, rng) -> tuple[float, float, float]:
        """(brightness, contrast, saturation) factors, each within [1-x, 1+x]."""
        return tuple(  # type: ignore[return-value]
            float(rng.uniform(1 - x, 1 + x)) if x else 1.0 for x in (self.brightness, self.contrast, self.saturation)
        )

    def pil(self, image, shape, factors):
        for enhancer, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), factors):
            if factor != 1.0:
                image = enhancer(image).enhance(factor)
        return image

    def albumentations(self):
        import albumentations as A

        if not self.is_random:
            return []
        return [A.ColorJitter(brightness=(1 - self.brightness, 1 + self.brightness),
                              contrast=(1 - self.contrast, 1 + self.contrast),
                              saturation=(1 - self.saturation, 1 + self.saturation), hue=(0.0, 0.0), p=1.0)]

    def dali(self, images, device):
        from nvidia.dali import fn, types

        # As PIL's ImageEnhance (the PIL backend): brightness scales, contrast pivots
        # on the image's mean grey, saturation blends with the grey image.
        if self.brightness or self.contrast:
            mean_grey = fn.reductions.mean(
                fn.color_space_conversion(images, device=device, image_type=types.RGB, output_type=types.GRAY))
            if device == "gpu":
                mean_grey = mean_grey.cpu()  # named arguments must live on the CPU (one scalar per image)
            images = fn.brightness_contrast(
                images, device=device,
                brightness=_dali_uniform_factor(self.brightness) if self.brightness else 1.0,
                contrast=_dali_uniform_factor(self.contrast) if self.contrast else 1.0,
                contrast_center=mean_grey)
        if self.saturation:
            images = fn.saturation(images, device=device, saturation=_dali_uniform_factor(self.saturation))
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
