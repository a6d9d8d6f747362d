"""Crop, resize, rotate and flip composed into one affine warp: one resampling pass, not three.

Each geometric step is a 3x3 matrix mapping pixel centres of its input to
pixel centres of its output; their product, in the order the spec wrote them,
maps the decoded image straight to the output, and one bilinear warp (OpenCV
``warpAffine``, PIL ``Image.transform``, DALI ``warp_affine``) produces it. The
product of the written order is that order's own geometry: a rotation written
before an anisotropic resize stays a rigid rotation of the photo, as the
step-by-step pipeline gives it. Pure functions only: each op supplies its own
piece (``Op.warp`` in ``feeding.ops``); this module holds the geometry, the rule
of which steps one warp can do exactly, and their composition.

A bilinear warp does not antialias: it reads 2x2 pixels per output pixel, so
where it shrinks by more than ``FILTER_ABOVE`` it would alias fine detail (on
fine stripes, 29 dB PSNR against PIL's antialiased resize). Two things keep
every shrink filtered. The decoder shrinks first where it can (``decode_floor``,
``jpeg_scale``: libjpeg's 1/2, 1/4, 1/8 DCT scales, cheaper than a full decode);
for what remains, the warp draws into a canvas at the image's own scale (the
output's frame, ``filter_canvas``), and an antialiased resize shrinks the canvas
to the output: the resize after a rotate of the written order, in the output's axes.
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

# A bilinear warp shrinking an axis by more than this aliases visibly on fine detail (tests/test_fidelity.py
# measures the PSNR against PIL's antialiased resize); above it, the warp draws a larger canvas that an
# antialiased resize then shrinks (``filter_canvas``).
FILTER_ABOVE = 1.15
# The canvas is at most this many times the output's size per axis. On fine detail (feeding.detail) at
# 512x384 -> 224x224, median/worst PSNR against the reference: 41.7/37.4 dB at 2x, 38.9/34.5 at 1.75x,
# 34.4/31.1 at 1.5x, 47.1/43.7 uncapped (2.29x), 21.7/18.5 with no canvas. Its cost is its area: here the
# warp into 448x384 took 0.76 ms and PIL's shrink 0.45, against 0.24 ms for a warp straight to 224x224.
# Larger shrinks are the decoder's first (1/2, 1/4, 1/8).
CANVAS_MOST = 2.0

# What an op's ``warp_role`` does to the picture's frame. A step that cuts (a crop, a rotation's
# corners) leaves black outside its frame; a later step that reveals what lies outside its input's
# frame (a rotation's corners, a padding centre crop) would show that black in the step-by-step
# order, but one warp shows the source pixels there, which were never cut. Fusion stops before it.
CUTS = ("window", "crop", "turn")
REVEALS = ("crop", "turn")


def fusable_prefix(steps) -> int:
    """How many leading ``steps`` one warp does exactly as written: resizes, crops, rotates and flips
    in any order, up to a step that would reveal what an earlier one cut away (see ``REVEALS``).

    torchvision's eval ``Resize(256)``, ``CenterCrop(224)``, the benchmark's Rotate, Resize, Flip and
    RandomResizedCrop, Flip all fuse whole; RandomResizedCrop then Rotate fuses the crop only.
    """
    count, cut = 0, False
    for op in steps:
        role = op.warp_role
        if role is None or (cut and role in REVEALS):
            break
        cut = cut or role in CUTS
        count += 1
    return count


def fused_shape(steps, source: Shape) -> Shape:
    """The (height, width) in pixels that the fused ``steps`` give an image of ``source`` size."""
    shape = source
    for op in steps:
        shape = op.out_shape(shape)
    return shape


def draw_warp(steps, source: Shape, rng: np.random.Generator) -> tuple[Affine, Shape]:
    """The fused map of ``steps`` from ``source`` pixel centres to output pixel centres, and the output
    (height, width), drawing each step's randomness in the written order (as the step-by-step path does).

    Drawn before decoding: the map's shrink decides the decode scale (``decode_floor``).
    """
    total: Affine = IDENTITY
    shape = source
    for op in steps:
        piece = op.warp(shape, op.draw(shape, rng))
        if piece is not None:
            total = then(total, piece)
        shape = op.out_shape(shape)
    return total, shape


def warp_matrix(steps, source: Shape, decoded: Shape, rng: np.random.Generator) -> np.ndarray:
    """The 3x3 matrix from a ``decoded`` image (a reduced decode of ``source``) to the fused output."""
    piece, _ = draw_warp(steps, source, rng)
    return as_matrix(then(from_decoded(decoded, source), piece))


def from_decoded(decoded: Shape, source: Shape) -> Affine:
    """Pixel centres of a ``decoded`` image to those of the ``source`` it reduces (the identity if equal)."""
    return resize_piece(whole(decoded), source)


def shrink(piece: Affine) -> tuple[float, float]:
    """(vertical, horizontal) shrink of the input's axes: 2.0 where two input pixels meet in one output pixel."""
    a, b, _, d, e, _ = piece
    return 1.0 / max(math.hypot(b, e), 1e-12), 1.0 / max(math.hypot(a, d), 1e-12)


def decode_floor(piece: Affine, source: Shape) -> Shape:
    """The smallest decoded (height, width) that keeps every axis at or above the output's resolution."""
    fy, fx = shrink(piece)
    return (math.ceil(source[0] / fy - 1e-6) if fy > 1 else source[0],
            math.ceil(source[1] / fx - 1e-6) if fx > 1 else source[1])


# libjpeg's DCT scales used, in eighths. libjpeg-turbo also decodes at 3/8, 5/8, 6/8 and 7/8, and 5/8
# would serve 512x384 -> 224x224 (320x240) for 0.3 ms less decode, but those scales truncate the
# block's spectrum: on fine stripes the output lost 4 dB (35 against 39 dB PSNR) and crops 10 dB
# against a full decode. 1/2, 1/4 and 1/8 lost nothing measurable.
DCT_EIGHTHS = (1, 2, 4, 8)


def jpeg_scale(source: Shape, floor: Shape) -> tuple[int, Shape]:
    """libjpeg's DCT scaling: the fewest eighths M (of ``DCT_EIGHTHS``) whose decode, ceil(side * M / 8),
    is at least ``floor`` on both axes, and that decoded (height, width)."""
    for eighths in DCT_EIGHTHS:
        shape = (math.ceil(source[0] * eighths / 8), math.ceil(source[1] * eighths / 8))
        if shape[0] >= floor[0] and shape[1] >= floor[1]:
            return eighths, shape
    return 8, source


def axis_box(piece: Affine, image: Shape, out: Shape) -> tuple[tuple[float, float, float, float], bool] | None:
    """Where ``piece`` only scales, shifts and mirrors (no rotation) and the output reads inside the image:
    the (left, top, right, bottom) box of ``image``, in pixel-edge units, that an antialiased resize
    stretches onto ``out`` (PIL's ``resize(box=...)``: one filtered pass, no warp), and whether the result
    is then mirrored left-right. None where a warp is needed (a rotation, or a box reaching outside)."""
    a, b, c, d, e, f = piece
    if b or d or not a or not e or e < 0:
        return None
    # Pixel centres x_out = a * x + c are pixel edges u_out = a * u + c + (1 - a) / 2.
    cx, cy = c + (1 - a) / 2, f + (1 - e) / 2
    xs = sorted(((0 - cx) / a, (out[1] - cx) / a))
    ys = ((0 - cy) / e, (out[0] - cy) / e)
    tolerance = 1e-6
    if xs[0] < -tolerance or ys[0] < -tolerance or xs[1] > image[1] + tolerance or ys[1] > image[0] + tolerance:
        return None
    box = (max(0.0, xs[0]), max(0.0, ys[0]), min(float(image[1]), xs[1]), min(float(image[0]), ys[1]))
    return box, a < 0


def spread(piece: Affine) -> tuple[float, float]:
    """(vertical, horizontal): input pixels per output pixel along the output's axes (2.0: a 2x shrink)."""
    back = invert(piece)
    return math.hypot(back[1], back[4]), math.hypot(back[0], back[3])


def filter_canvas(piece: Affine, out: Shape, above: float = FILTER_ABOVE, most: float = CANVAS_MOST) -> Shape | None:
    """Where ``piece`` shrinks by more than ``above`` along an output axis: the larger canvas to warp into,
    the output's frame at the input's own scale, so that the warp runs near 1:1 and an antialiased resize of
    the canvas down to ``out`` is the filter (in the output's axes, as a resize after a rotate
    filters). None where the warp alone is sharp enough."""
    gy, gx = spread(piece)
    if max(gy, gx) <= above:
        return None
    return (max(out[0], math.ceil(out[0] * min(gy, most) - 1e-6)),
            max(out[1], math.ceil(out[1] * min(gx, most) - 1e-6)))


# ---------------------------------------------------------------- the pieces


IDENTITY: Affine = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def whole(shape: Shape) -> Box:
    """The box of a whole ``shape`` image."""
    return (0, 0, *shape)


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


def invert(piece: Affine) -> Affine:
    """The inverse map (output pixel centres back to input ones)."""
    a, b, c, d, e, f = piece
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return (ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f))


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
