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
    def decode(self, path: str, data: bytes, rng: np.random.Generator) -> tuple[Image.Image, Shape, object]:
        """The image (draft-reduced where the plan allows), its full size, and the first step's draw: for a
        fused warp its whole map (drawn first: its shrink decides the draft scale), else the first region."""
        source = decode.probe(path, self.max_pixels, data)
        if self.plan.fused_steps:
            drawn = affine.draw_warp(self.plan.steps[:self.plan.fused_steps], source, rng)
            floor = affine.decode_floor(drawn[0], source)
            draft_to = floor if floor != source else None
            return decode.load_pil(path, self.max_pixels, draft_to=draft_to, data=data), source, drawn
        first = self.plan.steps[0]
        box = first.region(source, rng)
        draft_to = None
        if self.plan.first_resamples and self.plan.decode_reduction(source, box[2:]) > 1:
            draft_to = _draft_target(source, box, first.out_shape(source))
        return decode.load_pil(path, self.max_pixels, draft_to=draft_to, data=data), source, box

    def augment(self, decoded: tuple[Image.Image, Shape, object], rng: np.random.Generator) -> np.ndarray:
        image, source, drawn = decoded
        steps, fused = self.plan.steps, self.plan.fused_steps
        if fused:
            image = _warp(image, source, *drawn)
        for i in range(fused, len(steps)):
            op = steps[i]
            if i == 0 and drawn is not None:
                # The region drawn when decoding, in source pixels: crop and resize in one pass from the
                # draft, and a shorter-side resize sized from the full source, not from the draft.
                image = op.pil(image, source, drawn)
            else:
                shape = (image.height, image.width)
                image = op.pil(image, shape, op.draw(shape, rng))
        return np.asarray(image)


def _warp(image: Image.Image, source: Shape, piece: affine.Affine, out: Shape) -> Image.Image:
    """One ``Image.transform`` of the fused map; where it shrinks, into a canvas at the image's own scale
    that PIL's antialiased resize then shrinks to the output."""
    piece = affine.then(affine.from_decoded((image.height, image.width), source), piece)
    aligned = affine.axis_box(piece, (image.height, image.width), out)
    if aligned is not None:  # no rotation: one antialiased crop-and-resize, no warp
        box, mirrored = aligned
        image = image.resize((out[1], out[0]), Image.BILINEAR, box=box)
        return image.transpose(Image.FLIP_LEFT_RIGHT) if mirrored else image
    canvas = affine.filter_canvas(piece, out)
    size = canvas or out
    if canvas is not None:
        piece = affine.then(piece, affine.resize_piece(affine.whole(out), canvas))
    image = image.transform((size[1], size[0]), Image.AFFINE, affine.pil_affine_data(affine.as_matrix(piece)),
                            resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    return image if canvas is None else image.resize((out[1], out[0]), Image.BILINEAR)
