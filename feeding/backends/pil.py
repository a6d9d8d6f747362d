"""The PIL backend (pillow-simd when installed): plan steps as PIL operations (``Op.pil``).

Crop and resize run as one resampling pass (``Image.resize(box=...)``); when
a centre crop, rotates or flips follow, the planner fuses them all into one
affine warp (``Image.transform``). A resize to at most half the size decodes at a reduced
JPEG scale (``draft``).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from feeding import affine, decode
from feeding.affine import Box, Shape
from feeding.backends.host import HostTransform


def _draft_target(source: Shape, box: Box, out: Shape) -> Shape:
    """The decoded size that keeps the crop box >= the output size after resizing."""
    return (math.ceil(source[0] * out[0] / box[2]), math.ceil(source[1] * out[1] / box[3]))


class PilTransform(HostTransform):
    def decode(self, path: str, data: bytes, rng: np.random.Generator) -> tuple[Image.Image, Shape, Box | None]:
        """The image (draft-reduced where the plan allows), its full size, and the first step's region."""
        source = decode.probe(path, self.max_pixels, data)
        first = self.plan.steps[0]
        box = first.region(source, rng)
        draft_to = None
        if self.plan.first_resamples and self.plan.decode_reduction(source, box[2:]) > 1:
            draft_to = _draft_target(source, box, first.out_shape(source))
        return decode.load_pil(path, self.max_pixels, draft_to=draft_to, data=data), source, box

    def augment(self, decoded: tuple[Image.Image, Shape, Box | None], rng: np.random.Generator) -> np.ndarray:
        image, source, box = decoded
        steps, fused = self.plan.steps, self.plan.fused_steps
        if fused:
            matrix = affine.warp_matrix(steps[:fused], source, box, (image.height, image.width), rng)
            height, width = affine.fused_shape(steps[:fused], source)
            image = image.transform((width, height), Image.AFFINE, affine.pil_affine_data(matrix),
                                    resample=Image.BILINEAR, fillcolor=(0, 0, 0))
        for i in range(fused, len(steps)):
            op = steps[i]
            if i == 0 and box is not None:
                # The region drawn when decoding, in source pixels: crop and resize in one pass from the
                # draft, and a shorter-side resize sized from the full source, not from the draft.
                image = op.pil(image, source, box)
            else:
                shape = (image.height, image.width)
                image = op.pil(image, shape, op.draw(shape, rng))
        return np.asarray(image)
