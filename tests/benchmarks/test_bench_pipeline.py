"""pytest-benchmark groups: run with ``pytest --benchmark-only`` (skipped in the normal suite).

Each group isolates one choice the planner or a backend makes, timed on the
same 384x512 JPEGs, so the gain of each shows on its own. Compare within a
group (a ratio in one run), never against numbers from another machine.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feeding import FeedConfig, create_feeder, decode, discover
from feeding.device import normalize_uint8
from feeding.spec import train_spec

MAX_PIXELS = 64_000_000


@pytest.fixture(scope="module")
def jpeg(image_folder) -> str:
    return str(next(Path(image_folder, "class0").iterdir()))


@pytest.fixture(scope="module")
def jpeg_bytes(jpeg) -> bytes:
    return Path(jpeg).read_bytes()


@pytest.mark.benchmark(group="decode 384x512 JPEG")
@pytest.mark.parametrize("how", ["pil-full", "pil-draft-1/2", "load_cv2-full", "load_cv2-reduced-1/2"])
def test_decode(benchmark, how, jpeg, jpeg_bytes):
    calls = {
        "pil-full": lambda: decode.load_pil(jpeg, MAX_PIXELS, data=jpeg_bytes),
        "pil-draft-1/2": lambda: decode.load_pil(jpeg, MAX_PIXELS, draft_to=(192, 160), data=jpeg_bytes),
        "load_cv2-full": lambda: decode.load_cv2(jpeg, MAX_PIXELS, data=jpeg_bytes),
        "load_cv2-reduced-1/2": lambda: decode.load_cv2(jpeg, MAX_PIXELS, reduction=2, data=jpeg_bytes),
    }
    result = benchmark(calls[how])
    assert np.asarray(result).shape[-1] == 3


@pytest.mark.benchmark(group="PIL: rotate and resize order")
@pytest.mark.parametrize("order", ["rotate-then-resize (literal)", "resize-then-rotate (planned)"])
def test_op_order(benchmark, order, jpeg):
    image = decode.load_pil(jpeg, MAX_PIXELS)

    def literal():
        return image.rotate(7, resample=Image.BILINEAR).resize((224, 224), Image.BILINEAR)

    def planned():
        return image.resize((224, 224), Image.BILINEAR).rotate(7, resample=Image.BILINEAR)

    out = benchmark(literal if order.startswith("rotate") else planned)
    assert out.size == (224, 224)


@pytest.mark.benchmark(group="device step: uint8 -> normalized float")
@pytest.mark.parametrize("how", ["fused multiply-add", "divide then normalize"])
def test_normalize(benchmark, how):
    batch = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    if how.startswith("fused"):
        out = benchmark(normalize_uint8, batch, mean, std, torch.float32)
    else:
        out = benchmark(lambda: (batch.float() / 255 - mean) / std)
    assert out.dtype == torch.float32


@pytest.mark.benchmark(group="JPEG decoder: full-size 384x512 to RGB")
@pytest.mark.parametrize("how", ["PIL (pillow-simd)", "OpenCV imdecode", "libjpeg-turbo (simplejpeg)"])
def test_jpeg_decoder(benchmark, how, jpeg_bytes):
    if "libjpeg-turbo" in how:
        pytest.importorskip("simplejpeg")
    calls = {
        "PIL (pillow-simd)": lambda: np.asarray(Image.open(io.BytesIO(jpeg_bytes)).convert("RGB")),
        "OpenCV imdecode": lambda: decode._cv2_decode(jpeg_bytes, 1),
        "libjpeg-turbo (simplejpeg)": lambda: decode._turbo_jpeg(jpeg_bytes, 1),
    }
    assert benchmark(calls[how]).shape == (512, 384, 3)


@pytest.mark.benchmark(group="decode + warp of 24 different files: fresh vs reused memory")
@pytest.mark.parametrize("reuse", [False, True], ids=["new arrays", "reused scratch + warp target"])
def test_decode_memory_reuse(benchmark, reuse, image_folder):
    """In a loop over one file the allocator hands back the same pages; across files it does not."""
    import cv2

    from feeding import affine

    pytest.importorskip("simplejpeg")
    files = [p.read_bytes() for p in sorted(Path(image_folder).glob("*/*.jpg"))]
    matrix = affine.compose([affine.box_to_size((0, 0, 512, 384), (224, 224)), affine.rotation((224, 224), 7.0)])
    scratch, target = decode.Scratch(), np.empty((224, 224, 4), np.uint8)

    def epoch():
        for data in files:
            image = decode._turbo_jpeg(data, 1, "RGBX", scratch if reuse else None)
            cv2.warpAffine(image, matrix[:2], (224, 224), dst=target if reuse else None, flags=cv2.INTER_LINEAR)
        return len(files)

    assert benchmark(epoch) == 24


@pytest.mark.benchmark(group="decode + warp of 24 files: where the decode memory starts")
@pytest.mark.parametrize("placement", ["32-byte aligned", "Scratch (16 bytes off)"])
def test_decode_memory_placement(benchmark, placement, image_folder):
    import cv2

    from feeding import affine

    pytest.importorskip("simplejpeg")
    files = [p.read_bytes() for p in sorted(Path(image_folder).glob("*/*.jpg"))]
    matrix = affine.compose([affine.box_to_size((0, 0, 512, 384), (224, 224)), affine.rotation((224, 224), 7.0)])
    # On the boundary, libjpeg-turbo's AVX2 colour conversion stores past the caches (decode.SCRATCH_OFFSET).
    scratch = decode.Scratch(offset=0) if placement.startswith("32") else decode.Scratch()
    target = np.empty((224, 224, 4), np.uint8)

    def epoch():
        for data in files:
            image = decode._turbo_jpeg(data, 1, "RGBX", scratch)
            cv2.warpAffine(image, matrix[:2], (224, 224), dst=target, flags=cv2.INTER_LINEAR)
        return image.ctypes.data % 32

    assert benchmark(epoch) == (0 if placement.startswith("32") else decode.SCRATCH_OFFSET)


@pytest.mark.benchmark(group="JPEG header: size and orientation")
@pytest.mark.parametrize("how", ["PIL", "libjpeg-turbo (no APP1 segment)"])
def test_jpeg_header(benchmark, how, jpeg, jpeg_bytes):
    if how == "PIL":
        def call():
            with decode._open(jpeg, MAX_PIXELS, jpeg_bytes) as image:
                return decode._header(image)
    else:
        pytest.importorskip("simplejpeg")
        call = lambda: decode._plain_jpeg_header(jpeg, MAX_PIXELS, jpeg_bytes)
    assert benchmark(call).size == (512, 384)


@pytest.mark.benchmark(group="fused warp 384x512 -> 224: pixel format")
@pytest.mark.parametrize("channels", [3, 4], ids=["RGB (3 bytes)", "RGBX (4 bytes)"])
def test_warp_pixel_format(benchmark, channels, jpeg_bytes):
    import cv2

    from feeding import affine

    image = decode._cv2_decode(jpeg_bytes, 1)
    if channels == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA)
    matrix = affine.compose([affine.box_to_size((0, 0, 512, 384), (224, 224)), affine.rotation((224, 224), 7.0)])
    out = np.empty((224, 224, channels), np.uint8)
    benchmark(lambda: cv2.warpAffine(image, matrix[:2], (224, 224), dst=out, flags=cv2.INTER_LINEAR))
    assert out.shape == (224, 224, channels)


@pytest.mark.benchmark(group="collate: one 224x224 image into a batch of 64")
@pytest.mark.parametrize("how", ["NCHW (transposing copy)", "NHWC (contiguous copy)", "NHWC from RGBX (cvtColor)"])
def test_collate_layout(benchmark, how):
    import cv2

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    rgbx = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    if how.startswith("NCHW"):
        batch = np.empty((64, 3, 224, 224), np.uint8)
        benchmark(lambda: batch.__setitem__(5, rgb.transpose(2, 0, 1)))
        assert np.array_equal(batch[5].transpose(1, 2, 0), rgb)
    else:
        batch = np.empty((64, 224, 224, 3), np.uint8)
        if "RGBX" in how:
            benchmark(lambda: cv2.cvtColor(rgbx, cv2.COLOR_RGBA2RGB, dst=batch[5]))
        else:
            benchmark(lambda: batch.__setitem__(5, rgb))
        assert np.array_equal(batch[5], rgb)


@pytest.mark.benchmark(group="feeder: one epoch, 24 images, 2 workers")
@pytest.mark.parametrize("pipeline,literal,executor", [
    ("pil", True, "process"), ("pil", False, "process"), ("albumentations", False, "process"),
    ("albumentations", False, "thread"), ("dali", False, "auto")])  # fmt: skip
def test_feeder_epoch(benchmark, pipeline, literal, executor, image_folder):
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    config = FeedConfig(pipeline=pipeline, batch_size=8, workers=2, spec=train_spec((224, 224)),
                        literal_order=literal, executor=executor)
    with create_feeder(discover(image_folder), config) as feeder:
        next(iter(feeder))  # start the workers outside the timing
        images = benchmark.pedantic(lambda: sum(len(x) for x, _ in feeder), rounds=3, warmup_rounds=1)
    assert images == 24
