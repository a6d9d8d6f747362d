"""The DALI forms shared by the geometric ops (``feeding.ops.geometry``): resizes, per-sample shapes, and
the warp pieces as ``fn.transforms`` nodes. DALI is imported inside each function: importing this module
imports none of it."""
from __future__ import annotations

import numbers

from feeding.affine import Shape


def dali_resize(images, device: str, height, width):
    from nvidia.dali import fn, types

    return fn.resize(images, device=device, resize_x=width, resize_y=height, interp_type=types.INTERP_LINEAR,
                     antialias=True)


def dali_shape(images):
    """Per-sample (height, width) in pixels of HWC ``images``: int64 DALI nodes on the CPU (named arguments
    must live there)."""
    shape = images.shape()
    return shape[0], shape[1]


def dali_shorter_side_shape(shape, shorter: int):
    """``shorter_side_shape`` of per-sample (height, width) int64 DALI nodes, as int64 nodes.

    Not ``fn.resize(resize_shorter=...)``: it rounds the longer side to the
    nearest pixel, where torchvision (and the host backends) truncate.
    """
    from nvidia.dali import math as dali_math

    height, width = shape
    short = dali_math.min(height, width)
    return shorter * height // short, shorter * width // short


# The DALI forms of the warp pieces. They are the pieces of ``Op.warp`` in the coordinates of DALI's
# ``warp_affine`` and ``fn.transforms``: (x, y) order, (0, 0) at the first pixel's corner, so pixel centres
# sit at +0.5 (the host's pieces map centres; tests/test_dali.py checks the two agree). There a resize is
# a plain scale, a crop a shift, a rotation turns about (W / 2, H / 2) and a mirror maps x to W - x. Each
# piece is a DALI transform appended to the running map (``fn.transforms.*`` take it as their input), and
# each argument is a number where the shape is known when the graph is built, else a per-sample node.


def dali_xy(x, y):
    """An (x, y) argument of DALI's transforms: a list of two numbers, or a per-sample float vector."""
    from nvidia.dali import fn, types

    if isinstance(x, numbers.Real) and isinstance(y, numbers.Real):
        return [float(x), float(y)]
    return fn.stack(*(types.Constant(float(v), dtype=types.FLOAT) if isinstance(v, numbers.Real)
                      else fn.cast(v, dtype=types.FLOAT) for v in (x, y)))


def dali_then(total, transform, **arguments):
    """``transform`` (an ``fn.transforms`` operator) applied after the map ``total`` (None: the identity)."""
    return transform(**arguments) if total is None else transform(total, **arguments)


def dali_box_piece(total, box, out: Shape):
    """``affine.resize_piece``: the box ((top, left), (height, width)) stretched onto ``out``, after ``total``."""
    from nvidia.dali import fn

    (top, left), (height, width) = box
    return dali_then(total, fn.transforms.crop, from_start=dali_xy(left, top),
                      from_end=dali_xy(plus_length(left, width), plus_length(top, height)), to_start=[0.0, 0.0],
                      to_end=dali_xy(out[1], out[0]))


def plus_length(offset, length):
    """``offset + length``, without a DALI node where the offset is the number 0."""
    return length if isinstance(offset, numbers.Real) and offset == 0 else offset + length


def dali_crop_box(shape, scale, ratio):
    """A RandomResizedCrop box of per-sample ``shape``: ((top, left), (height, width)) int nodes, drawn by
    DALI's own sampler (the one ``fn.random_resized_crop`` uses): area uniform in ``scale``, log-uniform
    aspect in ``ratio``, 10 tries, then a fallback of its own (not quite torchvision's)."""
    from nvidia.dali import fn, types

    height, width = shape
    sizes = fn.stack(*(types.Constant(int(v), dtype=types.INT64) if isinstance(v, numbers.Integral) else v
                       for v in (height, width)))
    anchor, window = fn.random_crop_generator(sizes, random_area=list(scale), random_aspect_ratio=list(ratio))
    return (anchor[0], anchor[1]), (window[0], window[1])
