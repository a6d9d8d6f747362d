"""A deterministic synthetic stand-in for the mask-wearing competition data set.

The benchmark needs data that decodes like the real photos (384x512 JPEGs of
60-100 KB, 74 on average, with natural texture and fine detail: decode time grows
with the entropy coded, so flat colours would decode too fast) and that a small
CNN can learn (so a training curve means something), without a download. Each
person is a drawn face over a noisy room-like background; the 18 classes have
cues that survive a 64x64 resize: the mask's extent (mask state), long or short
hair (gender), hair colour and wrinkles (age group).

The photos also carry the fine detail real ones have, for the fidelity tests of
antialiasing (a warp that shrinks 512 -> 224 px without a prefilter aliases
where a picture has power near Nyquist, which smooth drawings lack): shirts of
2.2-4 px stripes, checks or knit, hair of 1 px strands, a printed poster of
1-2 px glyph strokes and a plant of fine noise on the wall (the primitives are
``feeding.detail``'s). None of it is a class cue: the strands only take the hair's colours.

The same (people, seed, eval_people) gives byte-identical files: every image is
drawn from a numpy Generator seeded by (seed, split, person, image).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from feeding.cache import cache_dir
from feeding.sample_textures import (
    HEIGHT, WIDTH, backdrop, clothing_texture, crop_photo, hair_texture, jitter_colour, shade,
)
from feeding.errors import FeedError
from feeding.sources import GENDER_NAMES, MASK_STEMS, age_group, mask_label

SAMPLE_VERSION = 2  # bump when the drawing changes: the cache directory and .complete name it

JPEG_QUALITY = 90
AGE_RANGES = ((18, 29), (30, 59), (60, 80))  # one per age group, both ends included
RACES = ("Asian", "Asian", "Asian", "White", "Black")  # mostly Asian, as in the competition
SKIN_TONES = {"Asian": (224, 188, 158), "White": (238, 204, 184), "Black": (140, 96, 72)}
MASK_COLOURS = (
    (238, 238, 238), (238, 238, 238), (140, 185, 225), (140, 185, 225),  # white and blue surgical masks are common
    (28, 28, 32), (150, 150, 155), (235, 170, 190), (40, 52, 92),
)  # fmt: skip
PATTERN_PROBABILITY = 0.25
CHIN_PROBABILITY = 0.25  # share of incorrect masks worn on the chin rather than under the nose
GRAIN_SIGMA = 5.0  # sensor-like noise, in 8-bit levels
SOFTEN_SIGMA = 0.5  # px, the camera's blur: leaves a 3 px period 58% of its contrast (version 1's 0.9: 17%)
TRAIN_SPLIT, EVAL_SPLIT = 0, 1  # keeps train and eval people's random streams apart

# Random streams, one tag per use. numpy seeds (1, 0) and (1, 0, 0) alike (trailing zeros
# are dropped), so the tag goes first and each use keeps one tuple length.
PEOPLE_ORDER, PERSON, PERSON_SHARED, PHOTO, EVAL_ORDER = 1, 2, 3, 4, 5

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Person:
    """What stays the same across one person's seven photos."""

    key: tuple[int, int, int]  # (seed, split, index): seeds this person's random streams
    person_id: str  # zero-padded, e.g. "000001"
    gender: int  # index into GENDER_NAMES
    age: int
    race: str
    skin: Colour
    hair_base: Colour
    clothes: Colour
    palette: tuple[Colour, Colour]  # the background's two main colours
    face_x: float  # face centre, pixels
    face_y: float
    scale: float  # face size relative to a 90x118 px half-axis face

    @property
    def folder(self) -> str:
        return f"{self.person_id}_{GENDER_NAMES[self.gender]}_{self.race}_{self.age}"

    @property
    def age_group(self) -> int:
        return age_group(self.age)


# ---------------------------------------------------------------- people


def _rng(stream: int, *numbers: int) -> np.random.Generator:
    return np.random.default_rng((stream, *numbers))


def _hair_base(rng: np.random.Generator, group: int) -> Colour:
    """Dark under 30, mid grey 30-59 (salt and pepper is added by the texture), white at 60+."""
    if group == 0:
        return jitter_colour(rng, (38, 28, 22), 10)
    if group == 1:
        return jitter_colour(rng, (118, 114, 110), 6)
    return jitter_colour(rng, (232, 230, 226), 6)


def _skin(rng: np.random.Generator, race: str) -> Colour:
    """Lighter or darker as a whole: independent channel noise would turn skin green or purple."""
    return jitter_colour(rng, np.asarray(SKIN_TONES[race]) * rng.uniform(0.88, 1.08), 4)


def make_person(seed: int, split: int, index: int, gender: int, group: int) -> Person:
    rng = _rng(PERSON, seed, split, index)
    low, high = AGE_RANGES[group]
    race = RACES[rng.integers(len(RACES))]
    return Person(
        key=(seed, split, index),
        person_id=f"{index + 1:06d}",
        gender=gender,
        age=int(rng.integers(low, high + 1)),
        race=race,
        skin=_skin(rng, race),
        hair_base=_hair_base(rng, group),
        clothes=jitter_colour(rng, rng.integers(30, 226, 3), 0),
        palette=(jitter_colour(rng, rng.integers(40, 216, 3), 0), jitter_colour(rng, rng.integers(40, 216, 3), 0)),
        face_x=float(WIDTH / 2 + rng.normal(0, 14)),
        face_y=float(HEIGHT * 0.44 + rng.normal(0, 14)),
        scale=float(rng.uniform(0.92, 1.12)),
    )


def make_people(seed: int, split: int, count: int) -> list[Person]:
    """``count`` people with (gender, age group) spread evenly over the 6 combinations, in random order."""
    combos = _rng(PEOPLE_ORDER, seed, split).permutation(np.arange(count) % 6)
    return [make_person(seed, split, i, int(c) // 3, int(c) % 3) for i, c in enumerate(combos)]


# ---------------------------------------------------------------- drawing


@dataclass(frozen=True)
class Wardrobe:
    """What one person's seven photos share: the room (BACKDROP_MARGIN larger), the hair and the shirt fabric."""

    room: np.ndarray
    hair: Image.Image
    shirt: Image.Image


@dataclass(frozen=True)
class Face:
    """Where one photo's face is: centre and half-axes, pixels."""

    x: float
    y: float
    rx: float
    ry: float

    def at(self, dx: float, dy: float) -> tuple[float, float]:
        """A point given in face units (-1..1 across the face ellipse)."""
        return self.x + dx * self.rx, self.y + dy * self.ry

    def box(self, left: float, top: float, right: float, bottom: float) -> tuple[float, float, float, float]:
        return (*self.at(left, top), *self.at(right, bottom))


def draw_hair(canvas: Image.Image, texture: Image.Image, face: Face, gender: int, behind: bool) -> None:
    """Long hair falls behind the face to the shoulders (female); every head gets a top and sides."""
    shape = Image.new("L", canvas.size, 0)
    draw = ImageDraw.Draw(shape)
    if behind and gender == 1:
        draw.ellipse(face.box(-1.32, -1.22, 1.32, 0.9), fill=255)
        draw.rounded_rectangle(face.box(-1.32, -0.2, 1.32, 1.85), radius=0.3 * face.rx, fill=255)
    elif not behind:
        draw.chord(face.box(-1.08, -1.2, 1.08, -0.06), 180, 360, fill=255)
        if gender == 0:  # short sideburns down to the ears
            draw.rectangle(face.box(-1.0, -0.66, -0.86, -0.25), fill=255)
            draw.rectangle(face.box(0.86, -0.66, 1.0, -0.25), fill=255)
        else:  # locks framing the face
            draw.polygon([face.at(-1.08, -0.64), face.at(-0.7, -0.64), face.at(-0.98, 0.3)], fill=255)
            draw.polygon([face.at(1.08, -0.64), face.at(0.7, -0.64), face.at(0.98, 0.3)], fill=255)
    canvas.paste(texture, (0, 0), shape)


def draw_head(draw: ImageDraw.ImageDraw, face: Face, person: Person, eyebrow: Colour) -> None:
    """Ears (short hair only: long hair hides them), face, eyes, brows, nose and mouth."""
    skin = person.skin
    if person.gender == 0:
        draw.ellipse(face.box(-1.14, -0.3, -0.86, 0.22), fill=shade(skin, 0.92))
        draw.ellipse(face.box(0.86, -0.3, 1.14, 0.22), fill=shade(skin, 0.92))
    draw.ellipse(face.box(-1, -1, 1, 1), fill=skin)
    for side in (-1, 1):
        draw.ellipse(face.box(side * 0.38 - 0.17, -0.28, side * 0.38 + 0.17, -0.13), fill=(245, 245, 242))
        iris = face.at(side * 0.38, -0.205)
        radius = 0.075 * face.rx
        draw.ellipse((iris[0] - radius, iris[1] - radius, iris[0] + radius, iris[1] + radius), fill=(40, 30, 25))
        brow_width = max(3, int(0.07 * face.rx))
        draw.line([face.at(side * 0.2, -0.37), face.at(side * 0.58, -0.4)], fill=eyebrow, width=brow_width)
    draw.polygon([face.at(0, -0.12), face.at(-0.16, 0.3), face.at(0.16, 0.3)], fill=shade(skin, 0.78))
    for side in (-1, 1):
        draw.ellipse(face.box(side * 0.08 - 0.045, 0.25, side * 0.08 + 0.045, 0.31), fill=shade(skin, 0.45))
    draw.ellipse(face.box(-0.3, 0.47, 0.3, 0.64), fill=(178, 72, 78))
    draw.line([face.at(-0.28, 0.555), face.at(0.28, 0.555)], fill=(100, 35, 40), width=3)


def draw_wrinkles(draw: ImageDraw.ImageDraw, face: Face, person: Person) -> None:
    """Forehead lines, crow's feet and nose-to-mouth folds: many at 60+, a few at 30-59, none under 30."""
    if person.age_group == 0:
        return
    line = shade(person.skin, 0.6)
    width = max(2, int(0.035 * face.rx))
    foreheads = (-0.47,) if person.age_group == 1 else (-0.47, -0.53, -0.59)
    for y in foreheads:
        draw.arc(face.box(-0.45, y - 0.03, 0.45, y + 0.09), 200, 340, fill=line, width=width)
    for side in (-1, 1):
        draw.line([face.at(side * 0.2, 0.25), face.at(side * 0.37, 0.62)], fill=line, width=width)
        if person.age_group == 2:
            for dy in (-0.25, -0.19, -0.13):
                draw.line([face.at(side * 0.6, -0.2), face.at(side * 0.76, dy)], fill=line, width=width)
            draw.arc(face.box(side * 0.38 - 0.15, -0.16, side * 0.38 + 0.15, -0.04), 20, 160, fill=line, width=width)


def mask_outline(face: Face, top: float) -> list[tuple[float, float]]:
    """The part of a slightly enlarged face ellipse below ``top`` (face units), with a ridge over the nose."""
    start = math.asin(max(-1.0, min(1.0, top / 1.05)))
    angles = np.linspace(start, math.pi - start, 24)
    points = [face.at(1.06 * math.cos(a), 1.07 * math.sin(a)) for a in angles]
    return [*points, face.at(0, top - 0.07)]


def print_pattern(draw: ImageDraw.ImageDraw, rng: np.random.Generator, face: Face, top: float) -> None:
    """Diagonal stripes or scattered dots in a second colour, over the mask's area."""
    accent = jitter_colour(rng, rng.integers(0, 256, 3), 0)
    step = rng.uniform(10, 18)
    if rng.random() < 0.5:
        for x in np.arange(0, HEIGHT + WIDTH, step):
            draw.line([(x, 0), (x - HEIGHT, HEIGHT)], fill=accent, width=4)
        return
    for _ in range(int(face.rx * face.ry * (1.1 - top) / step**2)):
        x, y = face.at(rng.uniform(-1.1, 1.1), rng.uniform(top, 1.1))
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=accent)


def draw_mask(canvas: Image.Image, rng: np.random.Generator, face: Face, state: int) -> None:
    """State 0 covers nose and mouth; 1 sits under the nose or on the chin; 2 draws nothing."""
    if state == 2:
        return
    chin = state == 1 and rng.random() < CHIN_PROBABILITY
    top = -0.1 if state == 0 else 0.72 if chin else 0.38
    colour = jitter_colour(rng, MASK_COLOURS[rng.integers(len(MASK_COLOURS))], 8)
    outline = mask_outline(face, top)
    shape = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(shape).polygon(outline, fill=255)
    fabric = Image.new("RGB", canvas.size, colour)
    fabric_draw = ImageDraw.Draw(fabric)
    fold = shade(colour, 0.75) if sum(colour) > 200 else (70, 70, 75)  # a dark fold would not show on black
    if rng.random() < PATTERN_PROBABILITY:
        print_pattern(fabric_draw, rng, face, top)
    for level in np.linspace(top + 0.12, 0.95, 3 if not chin else 1):  # pleats
        fabric_draw.line([face.at(-1.1, level), face.at(1.1, level + 0.02)], fill=fold, width=3)
    canvas.paste(fabric, (0, 0), shape)
    loop = ImageDraw.Draw(canvas)
    loop_colour = shade(colour, 0.9)
    for side in (-1, 1):  # ear loops
        edge = face.at(side * 1.0, top + 0.15)
        loop.line([edge, face.at(side * 1.02, -0.15)], fill=loop_colour, width=3)
        loop.line([face.at(side * 1.0, min(0.85, top + 0.5)), face.at(side * 1.02, 0.1)], fill=loop_colour, width=3)


def photo_finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Soften the drawn edges, light from one side, and add grain, as a phone camera would."""
    soft = cv2.GaussianBlur(image, (0, 0), SOFTEN_SIGMA).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.linspace(-0.5, 0.5, WIDTH, dtype=np.float32)[None, :, None]
    ys = np.linspace(-0.5, 0.5, HEIGHT, dtype=np.float32)[:, None, None]
    light = 1.0 + rng.uniform(0.1, 0.3) * (math.cos(angle) * xs + math.sin(angle) * ys)
    soft *= light * rng.uniform(0.9, 1.08)
    soft += GRAIN_SIGMA * rng.standard_normal((HEIGHT, WIDTH, 1), dtype=np.float32)
    return np.clip(soft, 0, 255).astype(np.uint8)


def render(person: Person, state: int, wardrobe: Wardrobe, rng: np.random.Generator) -> np.ndarray:
    """One HEIGHTxWIDTHx3 uint8 photo of ``person`` in mask state ``state`` (0 wear, 1 incorrect, 2 none).

    ``wardrobe`` holds the person's room, hair and shirt; ``rng`` draws the
    framing, the mask and the grain.
    """
    scale = person.scale * rng.uniform(0.95, 1.05)
    face = Face(person.face_x + rng.normal(0, 8), person.face_y + rng.normal(0, 8), 90 * scale, 118 * scale)
    canvas = Image.fromarray(crop_photo(rng, wardrobe.room))
    draw = ImageDraw.Draw(canvas)
    shoulders = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(shoulders).ellipse(face.box(-2.2, 1.05, 2.2, 3.6), fill=255)
    canvas.paste(wardrobe.shirt, (0, 0), shoulders)
    draw_hair(canvas, wardrobe.hair, face, person.gender, behind=True)
    draw.rectangle(face.box(-0.4, 0.5, 0.4, 1.3), fill=shade(person.skin, 0.88))  # neck
    eyebrow = shade(person.hair_base, 0.8) if person.age_group < 2 else (205, 203, 200)
    draw_head(draw, face, person, eyebrow)
    draw_wrinkles(draw, face, person)
    draw_mask(canvas, rng, face, state)
    draw_hair(canvas, wardrobe.hair, face, person.gender, behind=False)
    return photo_finish(rng, np.asarray(canvas))


# ---------------------------------------------------------------- writing


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)


def photos(person: Person) -> Iterator[tuple[str, int, np.ndarray]]:
    """(stem, mask state, image) for the person's seven photos, in MASK_STEMS order."""
    # Drawn once a person: the competition's seven photos of a person share a room, a haircut and a shirt.
    shared = _rng(PERSON_SHARED, *person.key)
    room = backdrop(shared, person.palette)
    hair = hair_texture(shared, person.hair_base, person.age_group)
    wardrobe = Wardrobe(room, hair, clothing_texture(shared, person.clothes))
    for number, (stem, state) in enumerate(MASK_STEMS.items()):
        yield stem, state, render(person, state, wardrobe, _rng(PHOTO, *person.key, number))


def write_train(root: Path, people: list[Person]) -> None:
    """train/train.csv and train/images/<folder>/<stem>.jpg, seven photos a person."""
    images = root / "train" / "images"
    images.mkdir(parents=True)
    with open(root / "train" / "train.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "gender", "race", "age", "path"])
        for person in people:
            writer.writerow([person.person_id, GENDER_NAMES[person.gender], person.race, person.age, person.folder])
    for person in people:
        (images / person.folder).mkdir()
        for stem, _, image in photos(person):
            _save_jpeg(image, images / person.folder / f"{stem}.jpg")


def write_eval(root: Path, people: list[Person], seed: int) -> None:
    """eval/images/<sha1>.jpg, eval/info.csv with hidden answers (all 0) and eval/answers.csv with the truth."""
    images = root / "eval" / "images"
    images.mkdir(parents=True)
    rows = []
    for person in people:
        for stem, state, image in photos(person):
            name = hashlib.sha1(f"feedbench-sample-{person.key}-{stem}".encode()).hexdigest() + ".jpg"
            _save_jpeg(image, images / name)
            rows.append((name, mask_label(state, person.gender, person.age)))
    # Shuffled, so that neither the names nor the row order reveal whose photo it is.
    order = _rng(EVAL_ORDER, seed).permutation(len(rows))
    for file_name, hide in (("info.csv", True), ("answers.csv", False)):
        with open(root / "eval" / file_name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["ImageID", "ans"])
            writer.writerows((rows[i][0], 0 if hide else rows[i][1]) for i in order)


def _stamp(people: int, seed: int, eval_people: int) -> dict[str, int]:
    return {"people": people, "seed": seed, "eval_people": eval_people, "version": SAMPLE_VERSION}


def _read_stamp(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / ".complete").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _clear_for(out_dir: Path) -> None:
    """Make room for the new data set, refusing to delete anything that is not an earlier sample."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FeedError(f"{out_dir} exists and is not a directory")
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        return
    if _read_stamp(out_dir) is None:
        raise FeedError(f"{out_dir} is not empty and holds no sample data set; choose an empty or new directory")
    # Rename first, so the path never holds a half-deleted data set.
    trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, trash / "data")
    shutil.rmtree(trash, ignore_errors=True)


def write_sample(out_dir: str | os.PathLike, people: int = 60, seed: int = 0, eval_people: int = 12) -> Path:
    """Write the synthetic competition data set under ``out_dir`` and return ``out_dir``.

    Idempotent: if ``out_dir/.complete`` names the same (people, seed, eval_people,
    SAMPLE_VERSION) it returns at once. The data set is built in a temporary
    directory beside ``out_dir`` and renamed into place with ``.complete``
    already inside, so an interrupted run never leaves a half data set that
    looks done.
    """
    if people < 1 or eval_people < 0 or seed < 0:
        raise ValueError(f"need people >= 1, eval_people >= 0 and seed >= 0, got {people}, {eval_people} and {seed}")
    out_dir = Path(out_dir)
    stamp = _stamp(people, seed, eval_people)
    if _read_stamp(out_dir) == stamp:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(out_dir):  # ranks of one torchrun job: one writes, the others wait for its stamp
        if _read_stamp(out_dir) != stamp:
            _build(out_dir, people, seed, eval_people, stamp)
    return out_dir


@contextlib.contextmanager
def _writer_lock(out_dir: Path):
    """An exclusive lock on ``out_dir``'s parent directory for as long as one process builds it (flock on the
    directory itself: no lock file is left beside the data). Without it, a second process that found no
    stamp would build too, and clearing the way for its copy would delete the finished one a first
    process is already reading."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (one process at a time is then the user's to ensure)
        yield
        return
    handle = os.open(out_dir.parent, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the lock


def _build(out_dir: Path, people: int, seed: int, eval_people: int, stamp: dict) -> None:
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        write_train(building, make_people(seed, TRAIN_SPLIT, people))
        if eval_people:
            write_eval(building, make_people(seed, EVAL_SPLIT, eval_people), seed)
        (building / ".complete").write_text(json.dumps(stamp), encoding="utf-8")
        _clear_for(out_dir)
        try:
            os.rename(building, out_dir)
        except OSError:
            if _read_stamp(out_dir) != stamp:  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


def default_sample_dir(people: int = 60, seed: int = 0) -> Path:
    """The cache directory for a sample of ``people`` people from ``seed``."""
    return cache_dir("sample", f"v{SAMPLE_VERSION}-p{people}-s{seed}")


def ensure_sample(people: int = 60, seed: int = 0) -> Path:
    """The default sample, written on first use (used when the user passes no --data)."""
    return write_sample(default_sample_dir(people, seed), people=people, seed=seed)


def resolve_data(data: str | None) -> Path:
    """The data a command was given, or the embedded sample (generated once into the cache), said on stderr."""
    if data is not None:
        return Path(data)
    print("no --data given; using the sample data set (generated once into the cache)", file=sys.stderr)
    return ensure_sample()


def main(argv: list[str] | None = None) -> int:
    from feeding.options import plain_text

    parser = argparse.ArgumentParser(prog="python -m feeding.sample", description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("out_dir", type=Path, help="directory to write (created; must be empty or an earlier sample)")
    parser.add_argument("--people", type=int, default=60, help="training people, 7 images each (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--eval-people", type=int, default=12, help="held-out people in eval/ (default 12)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out_dir = write_sample(args.out_dir, people=args.people, seed=args.seed, eval_people=args.eval_people)
    print(f"sample data set in {out_dir} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
