"""The PIL backend (pillow-simd when installed): plan steps as PIL operations.

Crop and resize run as one resampling pass (``Image.resize(box=...)``); when
a centre crop, rotates or flips follow, the planner fuses them all into one
affine warp (``Image.transform``). A resize to at most half the size decodes at a reduced
JPEG scale (``draft``).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

from feeding import affine, decode
from feeding.backends.host import HostTransform
from feeding.plan import center_box, draw_angle, draw_crop_box, draw_flip, draw_jitter
from feeding.spec import CenterCrop, ColorJitter, HorizontalFlip, RandomResizedCrop, Resize, Rotate, Shape

Box = tuple[int, int, int, int]  # top, left, height, width


def _draft_target(source: Shape, box: Box, out: Shape) -> Shape:
    """The decoded size that keeps the crop box >= the output size after resizing."""
    return (math.ceil(source[0] * out[0] / box[2]), math.ceil(source[1] * out[1] / box[3]))


class PilTransform(HostTransform):
    def decode(self, path: str, data: bytes, rng: np.random.Generator) -> tuple[Image.Image, Shape, Box]:
        """The image (draft-reduced where the plan allows), its full size, and the first crop box."""
        source = decode.probe(path, self.max_pixels, data)
        first = self.plan.steps[0]
        box: Box = affine.first_box(self.plan, source, rng)
        draft_to = None
        if self.plan.first_resamples and self.plan.decode_reduction(source, box[2:]) > 1:
            draft_to = _draft_target(source, box, first.out_shape(source))
        return decode.load_pil(path, self.max_pixels, draft_to=draft_to, data=data), source, box

    def augment(self, decoded: tuple[Image.Image, Shape, Box], rng: np.random.Generator) -> np.ndarray:
        image, source, box = decoded
        fused = self.plan.fused_steps
        if fused:
            matrix = affine.warp_matrix(self.plan.steps[:fused], source, box, (image.height, image.width), rng)
            height, width = affine.fused_shape(self.plan.steps[:fused], source)
            image = image.transform((width, height), Image.AFFINE, affine.pil_affine_data(matrix),
                                    resample=Image.BILINEAR, fillcolor=(0, 0, 0))
        for i, op in enumerate(self.plan.steps):
            if i < fused:
                continue
            if i == 0 and isinstance(op, (Resize, RandomResizedCrop)):
                # Crop and resize in one pass; a shorter-side resize is sized from the full source, not the draft.
                image = _resize_box(image, source, box, op.out_shape(source))
            else:
                image = _apply(image, op, rng)
        return np.asarray(image)


def _resize_box(image: Image.Image, source: Shape, box: Box, size: Shape) -> Image.Image:
    """Resize the box (in source pixels) of a possibly draft-reduced image to ``size``."""
    sy, sx = image.height / source[0], image.width / source[1]
    top, left, h, w = box
    region = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    return image.resize((size[1], size[0]), Image.BILINEAR, box=region)


def _apply(image: Image.Image, op, rng: np.random.Generator) -> Image.Image:
    if isinstance(op, Resize):
        height, width = op.out_shape((image.height, image.width))
        return image.resize((width, height), Image.BILINEAR)
    if isinstance(op, RandomResizedCrop):
        box = draw_crop_box((image.height, image.width), op.scale, op.ratio, rng)
        return _resize_box(image, (image.height, image.width), box, op.size)
    if isinstance(op, CenterCrop):
        top, left, h, w = center_box((image.height, image.width), op.size)
        return image.crop((left, top, left + w, top + h))
    if isinstance(op, Rotate):
        angle = draw_angle(op, rng)
        return image.rotate(angle, resample=Image.BILINEAR, fillcolor=(0, 0, 0)) if angle else image
    if isinstance(op, HorizontalFlip):
        return image.transpose(Image.FLIP_LEFT_RIGHT) if draw_flip(op, rng) else image
    if isinstance(op, ColorJitter):
        brightness, contrast, saturation = draw_jitter(op, rng)
        for enhancer, factor in ((ImageEnhance.Brightness, brightness), (ImageEnhance.Contrast, contrast),
                                 (ImageEnhance.Color, saturation)):
            if factor != 1.0:
                image = enhancer(image).enhance(factor)
        return image
    raise TypeError(f"the PIL backend has no implementation of {op!r}")
