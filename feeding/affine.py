"""Crop, resize, rotate and flip composed into one affine warp: one resampling pass, not three.

Each geometric step is a 3x3 matrix mapping pixel centres of its input to
pixel centres of its output; their product maps the decoded image straight to
the output, and one bilinear warp (OpenCV ``warpAffine``, PIL
``Image.transform``) produces it. Pure functions only: each op supplies its own
piece (``Op.warp`` in ``feeding.ops``); this module holds the geometry, the rule
of which steps one warp can do, and their composition.

A warp samples without antialiasing, so it is used only while the shrink it
does is below DECODE-time reduction's threshold (2x): beyond that the decoder
shrinks first (libjpeg's 1/2, 1/4, 1/8 scales average DCT blocks), and the
warp does the rest. At the 1.7x of 384x512 -> 224 the warp stays above 34 dB
PSNR against PIL's antialiased resize on the sample data (tests check 30 dB).
"""
from __future__ import annotations

import math

import numpy as np

from feeding.checks import Shape  # (height, width) in pixels

Box = tuple[int, int, int, int]  # top, left, height, width in source pixels
# The pieces are built as 2x3 tuples of floats, (a, b, c, d, e, f) for [[a, b, c], [d, e, f], [0, 0, 1]],
# and composed in plain Python: per image, numpy's small-array overhead cost more than the arithmetic
# (~20 us of Python holding the GIL, which worker threads share). The 3x3 arrays are their public form.
Affine = tuple[float, float, float, float, float, float]

# An op's ``warp_role``: where in a warp it may stand.
LEADS = ("resize", "window", "crop")  # a resize of the whole input, a resize of a window of it, a crop
FOLLOWS = ("turn", "mirror")  # a rotation and a flip about the centre, same size


def fusable_prefix(steps) -> int:
    """How many leading ``steps`` one warp can do: a crop/resize, then rotates and flips.

    A centre crop right after a resize is a shift, so it joins the warp
    (torchvision's eval ``Resize(256)``, ``CenterCrop(224)``); only flips may
    follow it there: a rotate of the crop leaves black corners where the warp
    would show what the crop cut away.
    """
    if not steps or steps[0].warp_role not in LEADS:
        return 0
    count, after = 1, FOLLOWS
    if steps[0].warp_role == "resize" and len(steps) > 1 and steps[1].warp_role == "crop":
        count, after = 2, ("mirror",)
    while count < len(steps) and steps[count].warp_role in after:
        count += 1
    return count


def fused_shape(steps, source: Shape) -> Shape:
    """The (height, width) in pixels that the fused ``steps`` give an image of ``source`` size."""
    shape = source
    for op in steps:
        shape = op.out_shape(shape)
    return shape


def warp_matrix(steps, source: Shape, box: Box, decoded: Shape, rng: np.random.Generator) -> np.ndarray:
    """The fused 3x3 matrix of ``steps`` (see ``fusable_prefix``), drawing their randomness.

    ``box`` is the first step's region of the source (``Op.region``, drawn when
    decoding); ``decoded`` the decoded image's shape (smaller than ``source`` after
    a decode-time reduction). Draws happen in step order, as the unfused path
    draws them. The warp's output size is ``fused_shape(steps, source)``.
    """
    first = steps[0]
    total = first.warp(source, box, (decoded[0] / source[0], decoded[1] / source[1]))
    shape = first.out_shape(source)  # a shorter-side resize: from the full source, as torchvision sizes it
    for op in steps[1:]:
        piece = op.warp(shape, op.draw(shape, rng))
        if piece is not None:
            total = then(total, piece)
        shape = op.out_shape(shape)
    return as_matrix(total)


# ---------------------------------------------------------------- the pieces


def resize_piece(box: Box, out: Shape, scale: tuple[float, float] = (1.0, 1.0)) -> Affine:
    """The box (in input pixels, times ``scale`` for a reduced decode) stretched onto an ``out`` image."""
    top, left, height, width = box
    sy, sx = scale
    ky, kx = out[0] / (height * sy), out[1] / (width * sx)
    # pixel centres: x_out + 0.5 = kx * (x_src + 0.5 - left * sx)
    return (kx, 0.0, kx * (0.5 - left * sx) - 0.5, 0.0, ky, ky * (0.5 - top * sy) - 0.5)


def shift_piece(box: Box, scale: tuple[float, float] = (1.0, 1.0)) -> Affine:
    """A crop without resampling: a shift (the box may reach outside: black)."""
    top, left, _, _ = box
    return (1.0, 0.0, -left * scale[1], 0.0, 1.0, -top * scale[0])


def rotation_piece(shape: Shape, degrees: float) -> Affine:
    """Counter-clockwise rotation about the image centre (as PIL's and OpenCV's), same size."""
    height, width = shape
    cx, cy = (width - 1) / 2, (height - 1) / 2
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # y points down, so counter-clockwise on screen is this matrix.
    return (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def mirror_piece(shape: Shape) -> Affine:
    """Left-right mirror of a ``shape`` image."""
    return (-1.0, 0.0, shape[1] - 1.0, 0.0, 1.0, 0.0)


def then(first: Affine, second: Affine) -> Affine:
    """``first``, then ``second``: the product second @ first."""
    a1, b1, c1, d1, e1, f1 = first
    a2, b2, c2, d2, e2, f2 = second
    return (a2 * a1 + b2 * d1, a2 * b1 + b2 * e1, a2 * c1 + b2 * f1 + c2,
            d2 * a1 + e2 * d1, d2 * b1 + e2 * e1, d2 * c1 + e2 * f1 + f2)


def as_matrix(piece: Affine) -> np.ndarray:
    return np.array([piece[:3], piece[3:], (0.0, 0.0, 1.0)], dtype=np.float64)


def box_to_size(box: Box, out: Shape, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """``resize_piece`` as a 3x3 matrix."""
    return as_matrix(resize_piece(box, out, scale))


def crop_to_size(box: Box, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """``shift_piece`` as a 3x3 matrix."""
    return as_matrix(shift_piece(box, scale))


def rotation(shape: Shape, degrees: float) -> np.ndarray:
    """``rotation_piece`` as a 3x3 matrix."""
    return as_matrix(rotation_piece(shape, degrees))


def mirror(shape: Shape) -> np.ndarray:
    """``mirror_piece`` as a 3x3 matrix."""
    return as_matrix(mirror_piece(shape))


def compose(matrices: list[np.ndarray]) -> np.ndarray:
    """The matrix of applying ``matrices`` in order (first one first)."""
    total = np.eye(3)
    for matrix in matrices:
        total = matrix @ total
    return total


def pil_affine_data(matrix: np.ndarray) -> tuple[float, ...]:
    """PIL ``Image.transform(AFFINE)`` data: the output->input map, in PIL's pixel-edge coordinates."""
    to_edges = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    inverse = np.linalg.inv(to_edges @ matrix @ np.linalg.inv(to_edges))
    return tuple(inverse[:2].ravel())
