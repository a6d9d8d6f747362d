"""feeding.detail: deterministic pictures with power near Nyquist, where a shrink without a prefilter aliases."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import textured_image
from tests.imaging import (
    DEFAULT_SHAPE,
    KINDS,
    detail_set,
    high_frequency_rms,
    high_frequency_share,
    psnr,
    shrink_psnr,
    write_detail_jpegs,
)
from tests.odd_images import gradient


@pytest.fixture(scope="module")
def pictures() -> dict[str, np.ndarray]:
    """Two of each kind at the default 512x384 (seeds 0 and 1), by name."""
    return {f"{kind}-{seed}": make(DEFAULT_SHAPE, seed) for kind, make in KINDS.items() for seed in (0, 1)}


@pytest.fixture(scope="module")
def smooth() -> dict[str, np.ndarray]:
    """The smooth pictures earlier parity tests used: ramps with mild noise, and the conftest texture."""
    return {"gradient": gradient(*DEFAULT_SHAPE),
            "textured": np.asarray(textured_image(np.random.default_rng(0), (200, 40, 40)))}  # fmt: skip


# ---------------------------------------------------------------- the pictures


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_seed_same_pixels_at_any_shape(kind: str) -> None:
    make = KINDS[kind]
    for shape in ((512, 384), (97, 61)):
        first = make(shape, 5)
        assert first.shape == (*shape, 3) and first.dtype == np.uint8
        assert np.array_equal(first, make(shape, 5))
        assert not np.array_equal(first, make(shape, 6))
        assert first.std() > 20  # not flat


def test_default_shape_is_the_competitions() -> None:
    assert KINDS["photo"]().shape == (512, 384, 3)


def test_detail_set_cycles_the_kinds_with_seed_plus_index() -> None:
    shape = (64, 48)
    images = detail_set(5, shape, seed=3)
    expected = [make(shape, 3 + i) for i, make in enumerate([*KINDS.values(), KINDS["stripes"]])]
    assert len(images) == 5 and all(np.array_equal(a, b) for a, b in zip(images, expected))
    assert detail_set(0, shape) == []


@pytest.mark.parametrize("bad", [dict(shape=(4, 64)), dict(seed=-1)])
def test_bad_shape_or_seed_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        KINDS["stripes"](**{"shape": (64, 64), "seed": 0, **bad})


def test_jpegs_are_written_in_order_and_keep_their_detail(tmp_path: Path) -> None:
    paths = write_detail_jpegs(tmp_path / "detail", 4, shape=(128, 96), seed=2)
    assert [p.name for p in paths] == ["000-stripes.jpg", "001-text.jpg", "002-noise.jpg", "003-photo.jpg"]
    for path, image in zip(paths, detail_set(4, (128, 96), seed=2)):
        with Image.open(path) as decoded:
            assert (decoded.format, decoded.size) == ("JPEG", (96, 128))
            pixels = np.asarray(decoded.convert("RGB"))
        assert psnr(pixels, image) > 25  # quality 95; chroma is halved (4:2:0), luma is kept
        assert high_frequency_rms(pixels) > 0.8 * high_frequency_rms(image)


# ---------------------------------------------------------------- the measure


def test_measure_of_known_spectra() -> None:
    rng = np.random.default_rng(0)
    assert high_frequency_share(rng.normal(128, 20, (256, 192))) == pytest.approx(1 - math.pi / 16, abs=0.01)
    assert high_frequency_share(np.full((64, 48, 3), 90, np.uint8)) == 0.0
    x = np.arange(192)[None, :].repeat(256, axis=0)
    fine, coarse = (100 + 50 * np.sin(2 * np.pi * x / period) for period in (3, 8))
    assert high_frequency_share(fine) > 0.99 and high_frequency_share(coarse) < 0.01
    assert high_frequency_rms(fine) == pytest.approx(50 / math.sqrt(2), rel=0.01)  # an amplitude A sine: A / sqrt 2


# ---------------------------------------------------------------- what makes them useful


def test_power_near_nyquist_that_smooth_pictures_lack(pictures, smooth) -> None:
    """rms above 0.25 cycles/px: 25-51 levels here (measured), 4 for the gradient and 7 for the texture."""
    for name, image in pictures.items():
        assert high_frequency_rms(image) > 20, name
        if not name.startswith("photo"):  # a photo is smooth where it has no detail region
            assert high_frequency_share(image) > 0.3, name
    assert high_frequency_share(pictures["noise-0"]) > 0.5 and high_frequency_share(pictures["noise-1"]) > 0.5
    for name, image in smooth.items():
        assert high_frequency_rms(image) < 10, name


def test_shrink_without_prefilter_aliases_on_detail_only(pictures, smooth) -> None:
    """Measured: detail 11-19 dB (nearest) and 18-25 dB (bilinear); smooth 27-34 dB and 33-40 dB."""
    for name, image in pictures.items():
        nearest, bilinear = shrink_psnr(image)
        assert nearest < 21 and bilinear < 27, (name, nearest, bilinear)
    for name, image in smooth.items():
        nearest, bilinear = shrink_psnr(image)
        assert nearest > 25 and bilinear > 32, (name, nearest, bilinear)
