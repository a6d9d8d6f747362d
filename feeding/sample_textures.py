"""The sample photos' textures: room backdrops, posters with text-like strokes, foliage, hair and fabric.

They carry the fine detail real photographs have (stripes near the Nyquist limit, 1-px strands and
strokes, noise-like foliage), so that a shrink without antialiasing shows on the sample data too; the
primitives are ``feeding.detail``'s. ``feeding.sample`` draws the people and writes the files.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageDraw

from feeding.detail import fine_noise, glyph_strokes, stripe_wave

WIDTH, HEIGHT = 384, 512
BACKDROP_MARGIN = 32  # pixels a person's room is larger than a photo, so the photos are framed apart
FABRIC_PERIODS = (2.2, 4.0)  # a shirt's stripe or check period, px: just above Nyquist (2 px)
FABRIC_CONTRAST = 55.0  # levels either side of the shirt's colour
HAIR_STRANDS = 1400  # 1 px strands over a full-frame hair texture: about a third of its area
STRAND_CONTRAST = (18.0, 40.0)  # levels a dark or white hair strand is lighter or darker than the hair

Colour = tuple[int, int, int]


def jitter_colour(rng: np.random.Generator, base, spread: float) -> Colour:
    """``base`` with each channel moved by a normal draw of ``spread`` levels, clipped to 0..255."""
    jittered = np.asarray(base, np.float64) + rng.normal(0, spread, 3)
    return tuple(int(v) for v in np.clip(jittered, 0, 255))


def shade(colour: Colour, factor: float) -> Colour:
    """``colour`` times ``factor``, each channel at most 255."""
    return tuple(int(min(255, c * factor)) for c in colour)


def fractal_noise(rng: np.random.Generator, size: tuple[int, int], channels: int, octaves: int,
                  persistence: float = 0.55) -> np.ndarray:  # fmt: skip
    """(height, width, channels) float32 noise in [0, 1]: smooth blobs plus finer detail, like a photo's backdrop."""
    height, width = size
    total = np.zeros((height, width, channels), np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        cells = 2 ** (octave + 2)
        grid = rng.random((cells + 1, cells * width // height + 1, channels), dtype=np.float32)
        total += amplitude * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).reshape(total.shape)
        amplitude *= persistence
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def backdrop(rng: np.random.Generator, palette: tuple[Colour, Colour]) -> np.ndarray:
    """A room, BACKDROP_MARGIN larger than a photo: two colours mixed by fractal noise, a few blurred objects,
    and a sharp poster and plant on opposite sides of the head.

    Each photo crops it at a different offset.
    """
    size = (HEIGHT + BACKDROP_MARGIN, WIDTH + BACKDROP_MARGIN)
    mix = fractal_noise(rng, size, 1, octaves=7)
    tint = fractal_noise(rng, size, 3, octaves=4) - 0.5
    first, second = (np.asarray(c, np.float32) for c in palette)
    image = first * (1 - mix) + second * mix + 70 * tint
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 5))):  # furniture, frames, windows: edges a real photo has
        x0, y0 = rng.uniform(-60, size[1]), rng.uniform(-60, size[0])
        box = (x0, y0, x0 + rng.uniform(40, 220), y0 + rng.uniform(40, 260))
        fill = jitter_colour(rng, rng.integers(20, 236, 3), 0)
        (draw.rectangle if rng.random() < 0.6 else draw.ellipse)(box, fill=fill)
    # Blurred like a room out of focus; the poster and the plant are in focus, for their fine detail.
    room = cv2.GaussianBlur(np.asarray(canvas), (0, 0), 2.0)
    side = 1 if rng.random() < 0.5 else -1  # the plant's; the poster goes on the other side
    draw_foliage(room, rng, side)
    canvas = Image.fromarray(room)
    draw_poster(ImageDraw.Draw(canvas), rng, -side)
    return np.asarray(canvas)


def draw_poster(draw: ImageDraw.ImageDraw, rng: np.random.Generator, side: int) -> None:
    """A printed sheet on the wall, left (side -1) or right of the head: a heading and lines of 1-2 px strokes."""
    room_w = WIDTH + BACKDROP_MARGIN
    width, height = rng.uniform(100, 170), rng.uniform(120, 210)
    left = rng.uniform(0, 70) if side < 0 else room_w - width - rng.uniform(0, 70)
    top = rng.uniform(0, 180)
    paper = jitter_colour(rng, (236, 234, 226), 8)
    draw.rectangle((left, top, left + width, top + height), fill=paper, outline=shade(paper, 0.5), width=2)
    ink = jitter_colour(rng, (35, 32, 40), 12)
    heading = rng.uniform(11, 16)
    glyph_strokes(draw, rng, (left + 8, top + 8, left + width - 8, top + 8 + heading), ink, heading, width=2)
    line_height = rng.uniform(6, 10)
    body = (left + 8, top + 16 + 1.4 * heading, left + width - 8, top + height - 8)
    glyph_strokes(draw, rng, body, ink, line_height, width=2 if line_height >= 9 else 1)


def draw_foliage(room: np.ndarray, rng: np.random.Generator, side: int) -> None:
    """A pot plant or a knitted throw, left (side -1) or right, in place: a colour with fine noise, 45 levels rms."""
    room_h, room_w = room.shape[:2]
    width, height = int(rng.uniform(90, 160)), int(rng.uniform(120, 240))
    left = int(rng.uniform(0, 60)) if side < 0 else int(room_w - width - rng.uniform(0, 60))
    top = int(rng.uniform(room_h * 0.25, room_h - height))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse((0, 0, width - 1, height - 1), fill=255)
    leaves = (70, 120, 60) if rng.random() < 0.6 else rng.integers(40, 216, 3)
    base = np.asarray(jitter_colour(rng, leaves, 12), np.float32)
    texture = base + 45 * fine_noise(rng, (height, width))[..., None]
    window = room[top : top + height, left : left + width]
    window[...] = np.where(np.asarray(mask)[..., None] > 0, np.clip(texture, 0, 255).astype(np.uint8), window)


def crop_photo(rng: np.random.Generator, room: np.ndarray) -> np.ndarray:
    top, left = rng.integers(0, BACKDROP_MARGIN + 1, 2)
    return np.ascontiguousarray(room[top : top + HEIGHT, left : left + WIDTH])


def hair_texture(rng: np.random.Generator, base: Colour, group: int) -> Image.Image:
    """Vertical streaks under HAIR_STRANDS 1 px strands; for 30-59 both alternate dark and grey (salt and pepper)."""
    streaks = rng.random((HEIGHT // 2, WIDTH // 4), dtype=np.float32)
    streaks = cv2.resize(streaks, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)[..., None]
    base_array = np.asarray(base, np.float32)
    if group == 1:
        dark, light = np.asarray((45, 38, 34), np.float32), np.asarray((200, 198, 195), np.float32)
        image = np.where(streaks < 0.45, dark, np.where(streaks > 0.6, light, base_array))
    else:
        image = base_array * (0.8 + 0.35 * streaks)
    texture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw_strands(ImageDraw.Draw(texture), rng, base, group)
    return texture


def draw_strands(draw: ImageDraw.ImageDraw, rng: np.random.Generator, base: Colour, group: int) -> None:
    """HAIR_STRANDS falling strands, 1 px wide and 20-90 px long, half darker and half lighter than ``base``
    (for 30-59, dark and grey)."""
    count = HAIR_STRANDS
    x, y = rng.uniform(0, WIDTH, count), rng.uniform(-40, HEIGHT, count)
    length, drift, bend = rng.uniform(20, 90, count), rng.normal(0, 8, count), rng.normal(0, 3, count)
    lighter = rng.random(count) < 0.5
    if group == 1:
        shades = np.where(lighter[:, None], (200, 198, 195), (45, 38, 34))
    else:  # dark or white hair stays low in contrast, or its strands would pass for salt and pepper
        offset = np.where(lighter, 1, -1) * rng.uniform(*STRAND_CONTRAST, count)
        shades = np.clip(np.asarray(base, np.float64) + offset[:, None], 0, 255)
    # Three points a strand (top, a bent middle, the end), flat x, y as ImageDraw.line takes them.
    polylines = np.stack([x, y, x + drift / 2 + bend, y + length / 2, x + drift, y + length], axis=1)
    for points, shade in zip(polylines.tolist(), shades.astype(int).tolist()):
        draw.line(points, fill=tuple(shade), width=1)


def clothing_texture(rng: np.random.Generator, colour: Colour) -> Image.Image:
    """A full-frame shirt fabric in ``colour``: fine stripes, checks (two stripe sets) or a knit (fine noise).

    Stripe periods are FABRIC_PERIODS at any angle: the weave of clothes in a photo, close to Nyquist.
    """
    size = (HEIGHT, WIDTH)
    kind = int(rng.integers(3))
    angle = rng.uniform(0, math.pi)

    def stripes(turn: float, square: bool = False) -> np.ndarray:
        return stripe_wave(size, rng.uniform(*FABRIC_PERIODS), angle + turn, rng.uniform(0, 2 * math.pi), square)

    if kind == 0:
        pattern = stripes(0.0, square=rng.random() < 0.5)
    elif kind == 1:
        pattern = (stripes(0.0) + stripes(math.pi / 2)) / 2
    else:
        pattern = np.clip(fine_noise(rng, size) / 2, -1, 1)
    image = np.asarray(colour, np.float32) + FABRIC_CONTRAST * pattern[..., None]
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
