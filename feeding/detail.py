"""Test pictures with fine detail: energy near the Nyquist limit, where a shrink without antialiasing shows.

The fast augmentation paths replace resize + rotate + flip by one affine warp; a
warp that samples without a prefilter aliases when it shrinks (512 -> 224 px is
2.29x), while PIL's ``Image.resize`` filters first. On smooth pictures the two
agree to within a few levels, so a fidelity check needs pictures that carry what
real photographs do: fabric weave, hair, print and foliage. Each generator here
returns an HxWx3 uint8 RGB array drawn from a numpy Generator seeded by (kind, seed),
so the same arguments give identical pixels:

- ``fine_stripes``: patches of sinusoidal and square stripes, periods 2.2-8 px, at many angles.
- ``text_strokes``: a page of glyph-like polylines, 1-2 px dark strokes on light paper.
- ``noise_texture``: lightly blurred white noise (most of the energy) over a mid-frequency mottle.
- ``detail_photo``: smooth gradients and soft shapes with one region of each of the three above.

``high_frequency_share`` is the measure: the share of a picture's spectral power
(grey, mean removed) above a radial frequency, in cycles per pixel. The sample
data set (``feeding.sample``) draws its shirts, posters and foliage with the same
primitives (``stripe_wave``, ``glyph_strokes``, ``fine_noise``).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

DEFAULT_SHAPE = (512, 384)  # (height, width): the competition's photos
PERIODS = (2.2, 8.0)  # fine_stripes' shortest and longest period, px; Nyquist is 2 px
INK_PROBABILITY = 0.82  # share of a text line's cells that hold a glyph rather than a space

# Random streams, one tag per kind, first in the seed tuple (as in feeding.sample).
STRIPES, TEXT, NOISE, PHOTO = 1, 2, 3, 4

Shape = tuple[int, int]


def _rng(kind: int, seed: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng((kind, seed))


def _check_shape(shape: Shape) -> Shape:
    height, width = (int(v) for v in shape)
    if height < 8 or width < 8:
        raise ValueError(f"shape is (height, width) of at least 8 px each, got {shape}")
    return height, width


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- primitives


def stripe_wave(shape: Shape, period: float, angle: float, phase: float = 0.0, square: bool = False) -> np.ndarray:
    """(height, width) float32 stripes in [-1, 1]: ``period`` px across, crests at ``angle`` radians.

    Square stripes have harmonics above Nyquist, as a printed or woven pattern has.
    """
    height, width = shape
    xs = np.arange(width, dtype=np.float32)[None, :] * np.float32(math.cos(angle) * 2 * math.pi / period)
    ys = np.arange(height, dtype=np.float32)[:, None] * np.float32(math.sin(angle) * 2 * math.pi / period)
    wave = np.sin(xs + ys + np.float32(phase))
    return np.where(wave >= 0, np.float32(1), np.float32(-1)) if square else wave


def fine_noise(rng: np.random.Generator, shape: Shape, blur: float = 0.5) -> np.ndarray:
    """(height, width) float32 noise of unit standard deviation, white but for a light blur (sigma ``blur`` px).

    Sigma 0.5 keeps 73% of the amplitude at 0.25 cycles/px and 29% at Nyquist: a knit, grass or gravel.
    """
    noise = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), blur)
    return noise / max(float(noise.std()), 1e-6)


def smooth_noise(rng: np.random.Generator, shape: Shape, cells: int, channels: int = 1) -> np.ndarray:
    """(height, width, channels) float32 in about [0, 1]: a ``cells``-across random grid, bicubically enlarged."""
    height, width = shape
    grid = rng.random((max(2, cells * height // width) + 1, cells + 1, channels), dtype=np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)


def glyph_strokes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[float, float, float, float],
                  ink: tuple[int, int, int], line_height: float, width: int = 1) -> None:  # fmt: skip
    """Fill ``box`` (left, top, right, bottom, px) with lines of text-like glyphs in ``ink``.

    A glyph is a polyline through 2-5 nodes of a 3x4 lattice over its cell
    (0.62 ``line_height`` wide), as the strokes of a segment font are: straight
    and thin (``width`` px). A cell is a space with probability 1 - INK_PROBABILITY,
    so words run about five glyphs. Lines are ``line_height`` px high with 40%
    leading. Drawn with polylines rather than a font, so no Pillow version
    changes the pixels.
    """
    left, top, right, bottom = box
    cell_w, cell_h = 0.62 * line_height, line_height
    columns = int((right - left) // cell_w)
    rows = int((bottom - top) // (1.4 * line_height))
    if columns < 1 or rows < 1:
        return
    node_x = np.array([0.1, 0.45, 0.8]) * cell_w
    node_y = np.array([0.0, 0.3, 0.65, 1.0]) * cell_h
    for row in range(rows):
        y = top + row * 1.4 * line_height
        inked = rng.random(columns) < INK_PROBABILITY
        lengths = rng.integers(2, 6, columns)
        nodes = rng.integers(0, 12, (columns, 5))
        for column in np.flatnonzero(inked):
            x = left + column * cell_w
            chosen = nodes[column, : lengths[column]]
            points = [(x + node_x[n % 3], y + node_y[n // 3]) for n in chosen.tolist()]
            draw.line(points, fill=ink, width=width)


def _grey_power(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(power, radial frequency) over the half spectrum of the grey (ITU-R 601 luma, mean removed); the power
    is normalised so that it sums to the grey's variance, in squared levels (Parseval)."""
    pixels = np.asarray(image, np.float64)
    grey = pixels @ np.array([0.299, 0.587, 0.114]) if pixels.ndim == 3 else pixels
    power = np.abs(np.fft.rfft2(grey - grey.mean())) ** 2 / grey.size**2
    # rfft2 stores the columns 1..W/2-1 once for two conjugate halves: they count twice.
    power[:, 1 : (grey.shape[1] + 1) // 2] *= 2
    frequency = np.hypot(np.fft.fftfreq(grey.shape[0])[:, None], np.fft.rfftfreq(grey.shape[1])[None, :])
    return power, frequency


def high_frequency_share(image: np.ndarray, cutoff: float = 0.25) -> float:
    """Share of the spectral power of ``image``'s grey above ``cutoff`` cycles/px (radial, hypot(fy, fx)).

    A 2.29x shrink keeps up to 0.5 / 2.29 = 0.22 cycles/px of the original: power
    above 0.25 is what aliases without a prefilter. White noise scores 0.80 (the
    share of the frequency square outside that circle); a smooth gradient ~0.
    """
    power, frequency = _grey_power(image)
    total = float(power.sum())
    return 0.0 if total == 0 else float(power[frequency > cutoff].sum() / total)


def high_frequency_rms(image: np.ndarray, cutoff: float = 0.25) -> float:
    """Root mean square, in 8-bit levels, of the part of ``image``'s grey above ``cutoff`` cycles/px.

    The amplitude a shrink without a prefilter folds back: a nearest-neighbour
    shrink's PSNR against an antialiased one is roughly 20 log10(255 / rms).
    """
    power, frequency = _grey_power(image)
    return math.sqrt(float(power[frequency > cutoff].sum()))


# ---------------------------------------------------------------- pictures


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours at least 120 levels apart in brightness, so stripes between them keep their contrast."""
    dark = rng.uniform(0, 90, 3).astype(np.float32)
    light = rng.uniform(150, 255, 3).astype(np.float32)
    return (dark, light) if rng.random() < 0.5 else (light, dark)


def _stripes(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """A grid of stripe patches whose periods span PERIODS geometrically, in random places and angles."""
    height, width = shape
    rows, columns = max(1, round(height / 128)), max(1, round(width / 128))
    periods = rng.permutation(np.geomspace(*PERIODS, rows * columns))
    image = np.empty((height, width, 3), np.float32)
    row_edges = np.linspace(0, height, rows + 1).astype(int)
    column_edges = np.linspace(0, width, columns + 1).astype(int)
    for index, period in enumerate(periods.tolist()):
        top, bottom = row_edges[index // columns], row_edges[index // columns + 1]
        left, right = column_edges[index % columns], column_edges[index % columns + 1]
        wave = stripe_wave((bottom - top, right - left), period, rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi),
                           square=rng.random() < 0.4)  # fmt: skip
        first, second = _two_colours(rng)
        mix = (wave[..., None] + 1) / 2
        image[top:bottom, left:right] = first * (1 - mix) + second * mix
    return image


def _text(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """A page: paper with a faint gradient, blocks of text of a few sizes and a heading."""
    height, width = shape
    paper = rng.uniform(215, 250) + rng.uniform(-8, 8, 3)
    shade = np.linspace(-10, 10, height, dtype=np.float32)[:, None, None] * rng.uniform(-1, 1)
    page = Image.fromarray(_to_uint8(np.broadcast_to(paper + shade, (height, width, 3))))
    draw = ImageDraw.Draw(page)
    margin = max(2, width // 24)
    ink = tuple(int(v) for v in rng.uniform(10, 70, 3))
    heading = rng.uniform(14, 22)
    glyph_strokes(draw, rng, (margin, margin, width - margin, margin + 1.4 * heading), ink, heading, width=2)
    top = margin + 1.6 * heading
    while top < height - margin:
        line_height = rng.uniform(6, 13)
        block = rng.uniform(4, 9) * 1.4 * line_height
        glyph_strokes(draw, rng, (margin, top, width - margin, min(height - margin, top + block)), ink, line_height,
                      width=2 if line_height >= 10 else 1)  # fmt: skip
        top += block + line_height
    return np.asarray(page, np.float32)


def _noise(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """A base colour with fine luminance noise (most of the power), fine colour noise and a mid-frequency mottle."""
    base = rng.uniform(70, 190, 3).astype(np.float32)
    mottle = smooth_noise(rng, shape, cells=int(rng.integers(8, 17)), channels=3) - 0.5
    luminance = fine_noise(rng, shape, blur=rng.uniform(0.35, 0.5))[..., None]
    colour = np.stack([fine_noise(rng, shape) for _ in range(3)], axis=-1)
    return base + 40 * luminance + 12 * colour + 48 * mottle


def _photo(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Smooth gradients and blurred shapes, with a stripe, a text and a noise region where a photo has detail."""
    height, width = shape
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.arange(width)[None, :] * math.cos(angle) + np.arange(height)[:, None] * math.sin(angle))
    ramp = ((ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)).astype(np.float32)[..., None]
    first, second = rng.uniform(30, 225, (2, 3)).astype(np.float32)
    smooth = first * (1 - ramp) + second * ramp + 50 * (smooth_noise(rng, shape, cells=3, channels=3) - 0.5)
    canvas = Image.fromarray(_to_uint8(smooth))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 6))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.08, 0.3) * width, rng.uniform(0.08, 0.3) * height
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=tuple(int(v) for v in rng.integers(20, 236, 3)))
    image = cv2.GaussianBlur(np.asarray(canvas), (0, 0), max(1.0, min(shape) / 100)).astype(np.float32)
    # One region of each kind, one per horizontal band, in random order: a sign, a shirt, a hedge.
    bands = np.linspace(0, height, 4)
    for band, make in zip(rng.permutation(3).tolist(), (_stripes, _text, _noise)):
        band_top, band_height = bands[band], height / 3
        region_w, region_h = rng.uniform(0.4, 0.8) * width, rng.uniform(0.6, 0.95) * band_height
        left, top = int(rng.uniform(0, width - region_w)), int(band_top + rng.uniform(0, band_height - region_h))
        size = (int(region_h), int(region_w))
        mask = Image.new("L", size[::-1], 0)
        draw_shape = ImageDraw.Draw(mask).rectangle if rng.random() < 0.6 else ImageDraw.Draw(mask).ellipse
        draw_shape((0, 0, size[1] - 1, size[0] - 1), fill=255)
        window = image[top : top + size[0], left : left + size[1]]
        window[...] = np.where(np.asarray(mask)[..., None] > 0, make(rng, size), window)
    return image


def fine_stripes(shape: Shape = DEFAULT_SHAPE, seed: int = 0) -> np.ndarray:
    """HxWx3 uint8: ~128 px patches of two-colour stripes, periods 2.2-8 px, random angles, 40% square."""
    shape = _check_shape(shape)
    return _to_uint8(_stripes(_rng(STRIPES, seed), shape))


def text_strokes(shape: Shape = DEFAULT_SHAPE, seed: int = 0) -> np.ndarray:
    """HxWx3 uint8: a page of glyph-like strokes, 1 px (lines under 10 px high) or 2 px wide, dark on light."""
    shape = _check_shape(shape)
    return _to_uint8(_text(_rng(TEXT, seed), shape))


def noise_texture(shape: Shape = DEFAULT_SHAPE, seed: int = 0) -> np.ndarray:
    """HxWx3 uint8: band-limited noise, most of its power above 0.25 cycles/px, over a mid-frequency mottle."""
    shape = _check_shape(shape)
    return _to_uint8(_noise(_rng(NOISE, seed), shape))


def detail_photo(shape: Shape = DEFAULT_SHAPE, seed: int = 0) -> np.ndarray:
    """HxWx3 uint8: a stand-in for a photograph: smooth areas, plus one stripe, one text and one noise region."""
    shape = _check_shape(shape)
    return _to_uint8(_photo(_rng(PHOTO, seed), shape))


KINDS: dict[str, Callable[[Shape, int], np.ndarray]] = {
    "stripes": fine_stripes, "text": text_strokes, "noise": noise_texture, "photo": detail_photo,
}  # fmt: skip


def _kind_of(index: int) -> str:
    return tuple(KINDS)[index % len(KINDS)]


def detail_set(n: int, shape: Shape = DEFAULT_SHAPE, seed: int = 0) -> list[np.ndarray]:
    """``n`` pictures cycling through KINDS (stripes, text, noise, photo); picture i is drawn with seed ``seed + i``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [KINDS[_kind_of(i)](shape, seed + i) for i in range(n)]


def write_detail_jpegs(folder: str | Path, n: int, shape: Shape = DEFAULT_SHAPE, seed: int = 0,
                       quality: int = 95) -> list[Path]:  # fmt: skip
    """Write ``detail_set(n, shape, seed)`` as ``folder/<i>-<kind>.jpg`` (Pillow's default 4:2:0 chroma) and
    return the paths, in order. Not atomic: these are test and cache data."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(detail_set(n, shape, seed)):
        path = folder / f"{index:03d}-{_kind_of(index)}.jpg"
        Image.fromarray(image).save(path, format="JPEG", quality=quality)
        paths.append(path)
    return paths
