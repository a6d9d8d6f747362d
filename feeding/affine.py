"""Crop, resize, rotate and flip composed into one affine warp: one resampling pass, not three.

Each geometric step is a 3x3 matrix mapping pixel centres of its input to
pixel centres of its output; their product maps the decoded image straight to
the output, and one bilinear warp (OpenCV ``warpAffine``, PIL
``Image.transform``) produces it. Pure functions only.

A warp samples without antialiasing, so it is used only while the shrink it
does is below DECODE-time reduction's threshold (2x): beyond that the decoder
shrinks first (libjpeg's 1/2, 1/4, 1/8 scales average DCT blocks), and the
warp does the rest. At the 1.7x of 384x512 -> 224 the warp stays above 34 dB
PSNR against PIL's antialiased resize on the sample data (tests check 30 dB).
"""
from __future__ import annotations

import math

import numpy as np

from feeding.plan import Plan
from feeding.spec import CenterCrop, HorizontalFlip, RandomResizedCrop, Resize, Rotate, Shape

Box = tuple[int, int, int, int]  # top, left, height, width in source pixels
FUSABLE_FIRST = (Resize, RandomResizedCrop, CenterCrop)
FUSABLE_AFTER = (Rotate, HorizontalFlip)


def fusable_prefix(plan: Plan) -> int:
    """How many leading plan steps one warp can do: a crop/resize, then rotates and flips.

    A centre crop right after a resize is a shift, so it joins the warp
    (torchvision's eval ``Resize(256)``, ``CenterCrop(224)``); only flips may
    follow it there: a rotate of the crop leaves black corners where the warp
    would show what the crop cut away.
    """
    steps = plan.steps
    if not steps or not isinstance(steps[0], FUSABLE_FIRST):
        return 0
    count, after = 1, FUSABLE_AFTER
    if isinstance(steps[0], Resize) and len(steps) > 1 and isinstance(steps[1], CenterCrop):
        count, after = 2, (HorizontalFlip,)
    while count < len(steps) and isinstance(steps[count], after):
        count += 1
    return count


def fused_shape(steps, source: Shape) -> Shape:
    """The (height, width) in pixels that the fused ``steps`` give an image of ``source`` size."""
    shape = source
    for op in steps:
        shape = op.out_shape(shape)
    return shape


# The pieces are built as 2x3 tuples of floats, (a, b, c, d, e, f) for [[a, b, c], [d, e, f], [0, 0, 1]],
# and composed in plain Python: per image, numpy's small-array overhead cost more than the arithmetic
# (~20 us of Python holding the GIL, which worker threads share). The 3x3 arrays are their public form.
Affine = tuple[float, float, float, float, float, float]


def _box_to_size(box: Box, out: Shape, scale: tuple[float, float]) -> Affine:
    top, left, height, width = box
    sy, sx = scale
    ky, kx = out[0] / (height * sy), out[1] / (width * sx)
    # pixel centres: x_out + 0.5 = kx * (x_src + 0.5 - left * sx)
    return (kx, 0.0, kx * (0.5 - left * sx) - 0.5, 0.0, ky, ky * (0.5 - top * sy) - 0.5)


def _crop_to_size(box: Box, scale: tuple[float, float]) -> Affine:
    top, left, _, _ = box
    return (1.0, 0.0, -left * scale[1], 0.0, 1.0, -top * scale[0])


def _rotation(shape: Shape, degrees: float) -> Affine:
    height, width = shape
    cx, cy = (width - 1) / 2, (height - 1) / 2
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # y points down, so counter-clockwise on screen is this matrix.
    return (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def _mirror(shape: Shape) -> Affine:
    return (-1.0, 0.0, shape[1] - 1.0, 0.0, 1.0, 0.0)


def _then(first: Affine, second: Affine) -> Affine:
    """``first``, then ``second``: the product second @ first."""
    a1, b1, c1, d1, e1, f1 = first
    a2, b2, c2, d2, e2, f2 = second
    return (a2 * a1 + b2 * d1, a2 * b1 + b2 * e1, a2 * c1 + b2 * f1 + c2,
            d2 * a1 + e2 * d1, d2 * b1 + e2 * e1, d2 * c1 + e2 * f1 + f2)


def _matrix(affine: Affine) -> np.ndarray:
    return np.array([affine[:3], affine[3:], (0.0, 0.0, 1.0)], dtype=np.float64)


def box_to_size(box: Box, out: Shape, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Map the box (in source pixels, times ``scale`` for a reduced decode) onto an ``out`` image."""
    return _matrix(_box_to_size(box, out, scale))


def crop_to_size(box: Box, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """A crop without resampling: a shift (the box may reach outside: black)."""
    return _matrix(_crop_to_size(box, scale))


def rotation(shape: Shape, degrees: float) -> np.ndarray:
    """Counter-clockwise rotation about the image centre (as PIL's and OpenCV's), same size."""
    return _matrix(_rotation(shape, degrees))


def mirror(shape: Shape) -> np.ndarray:
    return _matrix(_mirror(shape))


def compose(matrices: list[np.ndarray]) -> np.ndarray:
    """The matrix of applying ``matrices`` in order (first one first)."""
    total = np.eye(3)
    for matrix in matrices:
        total = matrix @ total
    return total


def first_box(plan: Plan, source: Shape, rng: np.random.Generator) -> Box:
    """The source region the first step reads: a random crop's box (drawn now), a centre crop, or all."""
    from feeding.plan import center_box, draw_crop_box

    first = plan.steps[0]
    if isinstance(first, RandomResizedCrop):
        return draw_crop_box(source, first.scale, first.ratio, rng)
    if isinstance(first, CenterCrop):
        return center_box(source, first.size)
    return (0, 0, *source)


def warp_matrix(steps, source: Shape, box: Box, decoded: Shape, rng: np.random.Generator) -> np.ndarray:
    """The fused 3x3 matrix of ``steps`` (see ``fusable_prefix``), drawing their randomness.

    ``decoded`` is the decoded image's shape (smaller than ``source`` after a
    decode-time reduction). Draws happen in step order, as the unfused path draws them.
    The warp's output size is ``fused_shape(steps, source)``.
    """
    from feeding.plan import center_box, draw_angle, draw_flip

    first = steps[0]
    out = first.out_shape(source)  # a shorter-side resize: from the full source, as torchvision sizes it
    scale = (decoded[0] / source[0], decoded[1] / source[1])
    total = _crop_to_size(box, scale) if isinstance(first, CenterCrop) else _box_to_size(box, out, scale)
    for op in steps[1:]:
        if isinstance(op, CenterCrop):
            total = _then(total, _crop_to_size(center_box(out, op.size), (1.0, 1.0)))
            out = op.size
        elif isinstance(op, Rotate):
            angle = draw_angle(op, rng)
            if angle:
                total = _then(total, _rotation(out, angle))
        elif draw_flip(op, rng):
            total = _then(total, _mirror(out))
    return _matrix(total)


def pil_affine_data(matrix: np.ndarray) -> tuple[float, ...]:
    """PIL ``Image.transform(AFFINE)`` data: the output->input map, in PIL's pixel-edge coordinates."""
    to_edges = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    inverse = np.linalg.inv(to_edges @ matrix @ np.linalg.inv(to_edges))
    return tuple(inverse[:2].ravel())
