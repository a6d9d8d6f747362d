"""pytest-benchmark groups for the techniques that keep the fast paths faithful (``pytest --benchmark-only``).

Each group times one technique against what it replaces, on the same 384x512 JPEG
(fine detail from ``feeding.detail``, so the work is the real one): what the
fidelity costs or saves shows as a ratio within the group, in one run.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from feeding import affine, decode, detail
from feeding.backends.albu import AlbumentationsTransform, antialiased_shrink, compile_albumentations
from feeding.plan import make_plan
from feeding.spec import AugSpec, ColorJitter, HorizontalFlip, RandomResizedCrop, Resize, Rotate

MAX_PIXELS = 64_000_000
BENCHMARK = AugSpec([Rotate((10, 10)), Resize((224, 224)), HorizontalFlip(1.0)])
CROPS = AugSpec([RandomResizedCrop(224), HorizontalFlip(0.5), ColorJitter(0.4, 0.4, 0.4)])


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    from tests.odd_images import write_odd_images

    return write_odd_images(tmp_path_factory.mktemp("odd"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[str, bytes]:
    path = detail.write_detail_jpegs(tmp_path_factory.mktemp("bench-detail"), 4, seed=1)[3]  # detail_photo
    return str(path), path.read_bytes()


def _augment(transform, path, data):
    """The transform's decode + augment, as a worker runs them, fresh draws each round."""
    rng = np.random.default_rng(0)
    return lambda: transform.augment(transform.decode(path, data, rng), rng)


@pytest.mark.benchmark(group="written order Rotate, Resize, Flip 384x512 -> 224: decode + geometry")
@pytest.mark.parametrize("how", ["fused warp + antialiased canvas", "fused warp, no filter (aliases)",
                                 "albumentations step by step", "reordered: resize first (a shear)"])
def test_written_order_geometry(benchmark, how, photo, monkeypatch):
    if how.startswith("fused warp, no filter"):
        monkeypatch.setattr(affine, "filter_canvas", lambda piece, out, *args: None)
    plan = {"albumentations step by step": make_plan(BENCHMARK, literal=True),
            "reordered: resize first (a shear)": make_plan(BENCHMARK, reorder=True)}.get(how, make_plan(BENCHMARK))
    out = benchmark(_augment(AlbumentationsTransform(plan, MAX_PIXELS), *photo))
    assert out.shape[:2] == (224, 224)


@pytest.mark.benchmark(group="antialiased shrink of the warp canvas 512x384 -> 224x224")
@pytest.mark.parametrize("how", ["PIL bilinear (antialiased)", "OpenCV INTER_AREA", "OpenCV INTER_LINEAR (aliases)"])
def test_canvas_shrink(benchmark, how, photo):
    import cv2

    canvas = decode.load_cv2(photo[0], MAX_PIXELS, data=photo[1], rgbx=True)
    calls = {"PIL bilinear (antialiased)": lambda: antialiased_shrink(canvas, (224, 224)),
             "OpenCV INTER_AREA": lambda: cv2.resize(canvas, (224, 224), interpolation=cv2.INTER_AREA),
             "OpenCV INTER_LINEAR (aliases)": lambda: cv2.resize(canvas, (224, 224), interpolation=cv2.INTER_LINEAR)}
    assert benchmark(calls[how]).shape[:2] == (224, 224)


@pytest.mark.benchmark(group="JPEG DCT scaling for a 112x112 output: what the decode costs")
@pytest.mark.parametrize("eighths", [8, 5, 4], ids=["full 512x384", "5/8 (not used: truncates detail)", "1/2"])
def test_dct_scaling(benchmark, eighths, photo):
    pytest.importorskip("simplejpeg")
    image = benchmark(lambda: decode._turbo_jpeg(photo[1], 1, eighths=eighths if eighths < 8 else None))
    assert image.shape[:2] == (512 * eighths // 8, 384 * eighths // 8)


@pytest.mark.benchmark(group="ColorJitter on 224x224 uint8")
@pytest.mark.parametrize("how", ["OpenCV lookup tables (feedbench)", "albumentations", "PIL ImageEnhance"])
def test_colour_jitter(benchmark, how):
    picture = np.ascontiguousarray(detail.detail_photo((224, 224), seed=2))
    jitter, factors = ColorJitter(0.4, 0.4, 0.4), (1.2, 0.8, 1.3)
    if how.startswith("OpenCV"):
        call = lambda: jitter.opencv(picture, factors)
    elif how == "albumentations":
        compose = compile_albumentations(make_plan(AugSpec([Resize((224, 224)), jitter]), fuse=False), start=1)
        call = lambda: compose(image=picture)["image"]
    else:
        image = Image.fromarray(picture)
        call = lambda: np.asarray(ImageEnhance.Color(ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(
            1.2)).enhance(0.8)).enhance(1.3))
    assert np.asarray(benchmark(call)).shape[:2] == (224, 224)


@pytest.mark.benchmark(group="RandomResizedCrop + flip + ColorJitter: decode + augment")
@pytest.mark.parametrize("how", ["fused (box drawn before the decode)", "albumentations step by step"])
def test_crops_and_colour(benchmark, how, photo):
    plan = make_plan(CROPS, literal=how.startswith("albumentations"))
    transform = AlbumentationsTransform(plan, MAX_PIXELS)
    assert transform.fully_fused == how.startswith("fused")
    assert benchmark(_augment(transform, *photo)).shape[:2] == (224, 224)


@pytest.mark.benchmark(group="JPEG header with EXIF orientation")
@pytest.mark.parametrize("how", ["PIL (takes the warnings lock)", "libjpeg-turbo + EXIF tag (no lock)"])
def test_exif_header(benchmark, how, odd):
    pytest.importorskip("simplejpeg")
    path = str(odd["exif6_jpeg"])
    data = odd["exif6_jpeg"].read_bytes()
    if how.startswith("PIL"):
        def call():
            with decode._open(path, MAX_PIXELS, data) as image:
                return decode._header(image)
    else:
        call = lambda: decode._plain_jpeg_header(path, MAX_PIXELS, data)
    assert benchmark(call).orientation == 6
