"""The DALI backend on generated images, on the CPU (the GPU test skips without CUDA)."""
from __future__ import annotations

import gc
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from feeding import affine, decode, fidelity  # noqa: E402
from feeding.backends.dali import DaliFeeder  # noqa: E402
from feeding.backends.dali_files import dali_reads_as_pil, transcode_for_dali  # noqa: E402
from feeding.backends.dali_graph import fused_map, process_images, warp_steps  # noqa: E402
from feeding.detail import detail_set, write_detail_jpegs  # noqa: E402
from feeding.errors import FeedError  # noqa: E402
from feeding.factory import create_feeder  # noqa: E402
from feeding.feeder import FeedConfig  # noqa: E402
from feeding.ops.dali_forms import dali_shape  # noqa: E402
from feeding.plan import make_plan  # noqa: E402
from feeding.sources import Samples, discover  # noqa: E402
from feeding.spec import (  # noqa: E402
    AugSpec,
    CenterCrop,
    ColorJitter,
    HorizontalFlip,
    Normalize,
    RandomResizedCrop,
    Resize,
    Rotate,
    train_spec,
)

from tests.conftest import dominant_channel, write_image_folder  # noqa: E402
from tests.imaging import psnr  # noqa: E402
from tests.odd_images import write_bad_files, write_odd_images  # noqa: E402

RESIZE_ONLY = AugSpec((Resize((224, 224)),))
PER_CLASS = 13  # 3 classes x 13 = 39 images: batches of 8 leave a short last batch


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """39 textured 384x512 (WxH) JPEGs in 3 class folders; class k is tinted towards channel k."""
    return write_image_folder(tmp_path_factory.mktemp("dali_folder"), per_class=PER_CLASS)


@pytest.fixture(scope="module")
def numbered(folder) -> Samples:
    """The same files, each with its own label: a label names the file it came from."""
    samples = discover(folder)
    n = len(samples)
    return Samples(paths=samples.paths, labels=np.arange(n, dtype=np.int64), groups=samples.groups,
                   classes=tuple(str(i) for i in range(n)), root=samples.root, layout="csv")


def config(**overrides) -> FeedConfig:
    settings = dict(pipeline="dali", batch_size=8, workers=2, spec=RESIZE_ONLY, drop_last=False, seed=3)
    return FeedConfig(**{**settings, **overrides})


def epoch_labels(feeder) -> list[list[int]]:
    return [labels.tolist() for _, labels in feeder]


# ---------------------------------------------------------------- the contract


def test_batches_are_uint8_nchw_with_the_labels_of_their_files(folder):
    feeder = create_feeder(discover(folder), config(spec=train_spec()))
    assert isinstance(feeder, DaliFeeder)
    batches = list(feeder)
    assert [len(labels) for _, labels in batches] == [8, 8, 8, 8, 7]
    for images, labels in batches:
        assert images.dtype == torch.uint8 and images.device.type == "cpu"
        # A dense (N, 3, H, W) batch, channels_last in memory (HWC, as DALI made it), as the host pipelines'.
        assert images.shape == (len(labels), 3, 224, 224) and images.is_contiguous(memory_format=torch.channels_last)
        assert labels.dtype == torch.int64 and labels.shape == (len(images),)
        assert (dominant_channel(images.numpy()) == labels.numpy()).all()


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("batch_size", [8, 13, 50])  # short last batch, none, one short batch
def test_len_is_the_number_of_batches_delivered(numbered, drop_last, batch_size):
    if drop_last and batch_size > 39:  # not one full batch: refused when built, not an empty epoch
        with pytest.raises(FeedError, match=f"batch {batch_size} > 39 usable images"):
            DaliFeeder(numbered, config(batch_size=batch_size, drop_last=drop_last))
        return
    feeder = DaliFeeder(numbered, config(batch_size=batch_size, drop_last=drop_last))
    for _ in range(2):
        sizes = [len(labels) for _, labels in feeder]
        assert len(sizes) == len(feeder)
        assert all(size == batch_size for size in sizes[:-1])
        if drop_last:
            assert all(size == batch_size for size in sizes)
            assert sum(sizes) == 39 - 39 % batch_size
        else:
            assert sum(sizes) == 39


def test_every_sample_once_per_epoch_new_order_each_epoch_same_for_the_seed(numbered):
    first = DaliFeeder(numbered, config())
    epochs = [sum(epoch_labels(first), []) for _ in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(39))
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    again = DaliFeeder(numbered, config())
    assert [sum(epoch_labels(again), []) for _ in range(3)] == epochs
    other_seed = DaliFeeder(numbered, config(seed=4))
    assert sum(epoch_labels(other_seed), []) != epochs[0]


def test_no_shuffle_reads_in_order_and_each_shard_keeps_its_slice(numbered):
    feeder = DaliFeeder(numbered, config(shuffle=False))
    assert sum(epoch_labels(feeder), []) == list(range(39))
    assert sum(epoch_labels(feeder), []) == list(range(39))
    second_shard = DaliFeeder(numbered, config(shuffle=False, shard_id=1, num_shards=2))
    for _ in range(2):  # its slice is 19..38; the 20th image is left out to match shard 0's 19
        assert sum(epoch_labels(second_shard), []) == list(range(19, 38))


def test_same_seed_same_augmented_images(numbered):
    """Random ops (rotate, flip, jitter) draw the same values for the same seed, with 2 threads."""
    spec = AugSpec((Rotate(15), Resize((64, 64)), HorizontalFlip(0.5), ColorJitter(0.3, 0.3, 0.3)))
    runs = []
    for _ in range(2):
        feeder = DaliFeeder(numbered, config(spec=spec))
        runs.append([images.clone() for _ in range(2) for images, _ in feeder])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert not torch.equal(runs[0][0], runs[0][len(runs[0]) // 2])  # epochs differ


def test_set_epoch_on_a_fresh_feeder_gives_that_epoch(numbered):
    spec = AugSpec((Resize((32, 32)), Rotate(20)))
    reference = DaliFeeder(numbered, config(spec=spec))
    epochs = [[(images.clone(), labels) for images, labels in reference] for _ in range(3)]

    fresh = DaliFeeder(numbered, config(spec=spec))
    fresh.set_epoch(2)  # replays epochs 0 and 1
    again = list(fresh)
    assert [labels.tolist() for _, labels in again] == [labels.tolist() for _, labels in epochs[2]]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(again, epochs[2]))

    fresh.set_epoch(1)  # backwards: rebuilds the pipeline, replays epoch 0
    assert [labels.tolist() for _, labels in fresh] == [labels.tolist() for _, labels in epochs[1]]
    assert fresh.epoch == 2


def test_leaving_an_epoch_early_does_not_shift_the_next(numbered):
    reference = DaliFeeder(numbered, config())
    expected = [epoch_labels(reference) for _ in range(2)]
    feeder = DaliFeeder(numbered, config())
    for _ in zip(range(2), feeder):
        pass  # two batches of epoch 0, then stop
    assert epoch_labels(feeder) == expected[1]


def test_batches_do_not_alias_buffers_dali_reuses(numbered):
    feeder = DaliFeeder(numbered, config(batch_size=4, prefetch_factor=2))
    held = [(images, images.clone()) for _ in range(2) for images, _ in feeder]
    assert all(torch.equal(kept, copy) for kept, copy in held)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("batch_size", [8, 19])  # 19: shard 0 (19 images) would end a batch before shard 1 (20)
def test_two_shards_are_disjoint_and_take_the_same_number_of_steps(numbered, batch_size, drop_last):
    """DALI shards by global rank; each rank delivers n // 2 images, so no rank has a step more (a DDP hang)."""
    shards = [DaliFeeder(numbered, config(batch_size=batch_size, drop_last=drop_last, shard_id=i, num_shards=2))
              for i in range(2)]
    assert len(shards[0]) == len(shards[1])
    seen = set()
    for epoch in range(2):
        parts = []
        for feeder in shards:
            batches = epoch_labels(feeder)
            assert len(batches) == len(feeder)
            parts.append(sum(batches, []))
        assert not set(parts[0]) & set(parts[1])
        if not drop_last:
            assert len(parts[0]) == len(parts[1]) == 19  # 39 // 2: one image sits this epoch out
            assert len(set(parts[0]) | set(parts[1])) == 38
        seen |= set(parts[0]) | set(parts[1])
    assert seen <= set(range(39))


# ---------------------------------------------------------------- pixels


def test_resize_matches_pil_bilinear(numbered):
    feeder = DaliFeeder(numbered, config(shuffle=False))
    scores = []
    for images, labels in feeder:
        for image, label in zip(images.numpy(), labels.tolist()):
            with Image.open(numbered.paths[label]) as source:
                expected = np.asarray(source.convert("RGB").resize((224, 224), Image.BILINEAR))
            scores.append(psnr(image.transpose(1, 2, 0), expected))
    assert len(scores) == 39 and min(scores) >= 30.0


def chw_graph_images(paths: list[str], size: tuple[int, int], batch_size: int) -> np.ndarray:
    """The images of the graph as it was: decode, resize, then one crop_mirror_normalize into CHW with
    the flip folded in (the transpose that the HWC graph no longer makes); (N, 3, H, W) uint8."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None, exec_dynamic=True)
    def chw_pipeline():
        encoded, _ = fn.readers.file(files=paths, name="Reader", pad_last_batch=True)
        images = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
        images = fn.resize(images, size=size, interp_type=types.INTERP_LINEAR, antialias=True)
        return fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW", mirror=1)

    pipe = chw_pipeline()
    pipe.build()
    batches = -(-len(paths) // batch_size)
    return np.concatenate([np.asarray(pipe.run()[0].as_tensor()) for _ in range(batches)])[:len(paths)]


def test_cpu_batches_are_channels_last_views_of_hwc_with_the_pixels_of_the_chw_graph(numbered):
    """The graph ends in HWC, and the feeder hands each batch out as an (N, 3, H, W) view of it (torch's
    channels_last), not a transposed copy; its pixels are those the CHW graph made."""
    spec = AugSpec((Resize((64, 48)), HorizontalFlip(1.0)))
    feeder = DaliFeeder(numbered, config(spec=spec, shuffle=False, workers=1))
    batches = list(feeder)
    for images, _ in batches:
        n = len(images)
        assert images.shape == (n, 3, 64, 48) and images.stride() == (64 * 48 * 3, 1, 48 * 3, 3)
        assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    delivered = torch.cat([images for images, _ in batches]).numpy()
    assert np.array_equal(delivered, chw_graph_images(list(numbered.paths), (64, 48), 8))


@pytest.mark.parametrize(
    "ops",
    [
        (RandomResizedCrop((96, 80)), HorizontalFlip(0.5), Normalize()),
        (CenterCrop((128, 96)), ColorJitter(0.4, 0.4, 0.4)),
        (Rotate(30), RandomResizedCrop((64, 48), scale=(0.5, 1.0)), HorizontalFlip(1.0)),
        (ColorJitter(brightness=0.2), Resize((50, 70)), Rotate(0), HorizontalFlip(0.0)),
    ],
)
@pytest.mark.parametrize("literal_order", [False, True])
def test_every_op_runs_and_keeps_labels(folder, ops, literal_order):
    spec = AugSpec(ops)
    feeder = DaliFeeder(discover(folder), config(spec=spec, literal_order=literal_order))
    for images, labels in feeder:
        assert images.shape[1:] == (3, *spec.output_size)
        assert (dominant_channel(images.numpy()) == labels.numpy()).all()


def test_center_crop_larger_than_the_image_pads_black(numbered):
    feeder = DaliFeeder(numbered, config(spec=AugSpec((CenterCrop((520, 400)),)), shuffle=False))
    images, labels = next(iter(feeder))
    image = images[0].numpy().transpose(1, 2, 0)
    with Image.open(numbered.paths[labels[0]]) as source:
        expected = np.asarray(source.convert("RGB"))
    assert (image[:4] == 0).all() and (image[-4:] == 0).all()  # 520 - 512 = 8 rows of padding
    assert (image[:, :8] == 0).all() and (image[:, -8:] == 0).all()  # 400 - 384 = 16 columns
    assert np.array_equal(image[4:-4, 8:-8], expected)


# ---------------------------------------------------------------- the fused warp

# Deterministic specs (every draw fixed), so the host, DALI and PIL's step by step make the same picture.
WARPED_SPECS = {
    "Rotate 10, Resize 224x224, flip": (Rotate((10, 10)), Resize((224, 224)), HorizontalFlip(1.0)),
    "Resize 256, CenterCrop 224 (step by step in DALI)": (Resize(256), CenterCrop(224)),
    "Rotate -7, Resize 96x128": (Rotate((-7, -7)), Resize((96, 128))),
}


def pixel_corners(piece) -> np.ndarray:
    """A host piece (``feeding.affine``: pixel centres at integers) in DALI's coordinates, where the first
    pixel's corner is (0, 0) and its centre (0.5, 0.5): the 2x3 matrix."""
    shift = affine.as_matrix((1.0, 0.0, 0.5, 0.0, 1.0, 0.5))
    return (shift @ affine.as_matrix(piece) @ np.linalg.inv(shift))[:2]


def run_graph(build, batch: list[np.ndarray]) -> list:
    """One batch of ``batch`` (HxWx3 uint8 arrays) through ``build(images)``, a graph function; its outputs
    as lists of arrays, one list per output."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=len(batch), num_threads=1, device_id=None, exec_dynamic=True)
    def graph():
        images = fn.external_source(source=lambda: batch, batch=True, layout="HWC")
        return build(images)

    pipe = graph()
    pipe.build()
    return [[np.asarray(out[i]) for i in range(len(batch))] for out in pipe.run()]


def graph_files(paths: list[str], steps, fused: int | None = None) -> list[np.ndarray]:
    """The files through ``process_images`` on the CPU, in order: HxWx3 uint8 arrays."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=len(paths), num_threads=2, device_id=None, exec_dynamic=True)
    def graph():
        encoded, _ = fn.readers.file(files=paths, name="Reader")
        return process_images(encoded, tuple(steps), "cpu", fused)

    pipe = graph()
    pipe.build()
    out = pipe.run()[0]
    return [np.asarray(out[i]) for i in range(len(paths))]


@pytest.mark.parametrize("ops", [
    *WARPED_SPECS.values(),
    (CenterCrop((340, 520)), HorizontalFlip(1.0)),  # larger than the image: a negative, odd offset
    (HorizontalFlip(1.0), Rotate((25, 25)), Resize(200)),  # a shorter-side resize after the turn
], ids=[*WARPED_SPECS, "padding CenterCrop, flip", "flip, Rotate 25, Resize 200"])
@pytest.mark.parametrize("source", [(512, 384), (333, 500)])
def test_the_graphs_map_is_the_hosts_in_pixel_corner_coordinates(ops, source):
    """The map is built in the graph from the decoded shape; it is the host's product of pieces, shifted
    by the half pixel between the two coordinate conventions."""
    from nvidia.dali import fn, types

    def maps(images):
        total, out = fused_map(ops, dali_shape(images))
        sides = [types.Constant(float(side), dtype=types.FLOAT) if isinstance(side, int)
                 else fn.cast(side, dtype=types.FLOAT) for side in out]
        return total, fn.stack(*sides)

    (matrix,), (out,) = run_graph(maps, [np.zeros((*source, 3), np.uint8)])
    piece, expected_out = affine.draw_warp(ops, source, np.random.default_rng(0))
    np.testing.assert_allclose(matrix, pixel_corners(piece), rtol=1e-5, atol=1e-3)
    assert tuple(out) == expected_out


def test_a_random_window_lies_in_the_image_with_the_area_and_aspect_asked_for():
    """RandomResizedCrop's box, read back from the graph's map (x_out = (x - left) * 48 / width, and so on),
    is inside the image, with an area fraction in ``scale`` and an aspect in ``ratio``, and differs per image."""
    op = RandomResizedCrop((64, 48), scale=(0.3, 0.6), ratio=(0.8, 1.25))
    (maps,) = run_graph(lambda images: (fused_map((op,), dali_shape(images))[0],),
                          [np.zeros((333, 500, 3), np.uint8)] * 16)
    boxes = []
    for matrix in maps:
        (kx, shear_x, cx), (shear_y, ky, cy) = matrix
        assert shear_x == shear_y == 0
        width, height, left, top = 48 / kx, 64 / ky, -cx / kx, -cy / ky
        assert left >= -1e-3 and top >= -1e-3 and left + width <= 500 + 1e-3 and top + height <= 333 + 1e-3
        assert 0.3 - 0.01 <= width * height / (333 * 500) <= 0.6 + 0.01  # whole pixels: the area rounds
        assert 0.8 - 0.02 <= width / height <= 1.25 + 0.02
        boxes.append((round(left), round(top), round(width), round(height)))
    assert len(set(boxes)) > 8


def test_one_warp_draws_what_opencv_draws_from_the_hosts_map():
    """An enlargement (no canvas): the graph's warp of fine detail against OpenCV's warpAffine of the host's
    map (pixel centres), black corners included, within one level; and the CPU's black frame is DALI's own
    fill (within one level: the framed warp's coordinates are shifted by a pixel, and round apart)."""
    import cv2
    from nvidia.dali import fn, types

    from feeding.backends import dali_graph

    ops = (Rotate((10, 10)), Resize((600, 450)), HorizontalFlip(1.0))
    image = detail_set(1, (512, 384))[0]
    piece, out = affine.draw_warp(ops, image.shape[:2], np.random.default_rng(0))
    expected = cv2.warpAffine(image, affine.as_matrix(piece)[:2], out[::-1], flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def warps(images):
        corners = pixel_corners(piece).ravel().tolist()
        filled = fn.warp_affine(images, matrix=corners, size=[float(side) for side in out], fill_value=0,
                                inverse_map=False, interp_type=types.INTERP_LINEAR)
        matrix = types.Constant(np.array(corners, np.float32).reshape(2, 3))
        framed = dali_graph._warp(images, dali_shape(images), matrix, out, "cpu")
        return dali_graph.fused_warp(images, ops, "cpu"), filled, framed

    (warped,), (filled,), (framed,) = run_graph(warps, [image])
    assert np.abs(framed.astype(int) - filled).max() <= 1
    assert warped.shape == (*out, 3) and np.abs(warped.astype(int) - expected).max() <= 1
    assert (warped[0, 0] == 0).all() and (warped[-1, -1] == 0).all()  # the turned-out corners are black


@pytest.fixture(scope="module")
def detail_files(tmp_path_factory) -> Samples:
    """8 fine-detail 512x384 (HxW) JPEGs (stripes, text, noise, photo), each its own label."""
    paths = np.array([str(p) for p in write_detail_jpegs(tmp_path_factory.mktemp("detail"), 8)])
    n = len(paths)
    return Samples(paths=paths, labels=np.arange(n, dtype=np.int64), groups=np.arange(n, dtype=np.int64),
                   classes=tuple(str(i) for i in range(n)), root=str(Path(paths[0]).parent), layout="csv")


@pytest.mark.parametrize("name", WARPED_SPECS)
def test_the_feeders_picture_is_pils_step_by_step_and_the_hosts(detail_files, name):
    """PSNR on fine detail, image by image, against PIL's written order step by step (``fidelity.reference``)
    and the host's fused path. Measured: 43.6, 56.1 and 45.9 dB worst against PIL; against the host 39.1,
    34.3 and 31.6, which is as far as the host's own picture is from PIL's (38.6, 34.3 and 31.5 dB)."""
    from feeding.backends.albu import AlbumentationsTransform

    spec = AugSpec(WARPED_SPECS[name])
    feeder = create_feeder(detail_files, config(spec=spec, shuffle=False, batch_size=4))
    host = AlbumentationsTransform(make_plan(spec), feeder.config.max_pixels)
    against_pil, against_host = [], []
    try:
        for images, labels in feeder:
            for image, label in zip(images.numpy(), labels.tolist()):
                path, picture = detail_files.paths[label], image.transpose(1, 2, 0)
                against_pil.append(fidelity.psnr(picture, fidelity.reference(path, spec, fidelity.image_rng(0, label))))
                against_host.append(fidelity.psnr(picture, host(path, fidelity.image_rng(0, label))))
    finally:
        host.close()
    assert len(against_pil) == 8
    assert min(against_pil) >= 42.0, against_pil
    assert min(against_host) >= 30.0, against_host


def arrow(shape: tuple[int, int]) -> np.ndarray:
    """Black, with a white bar across the middle and a red block at its left end: it shows a turn's sense
    (the bar's tilt) and a mirror (the block's side). HxWx3 uint8."""
    height, width = shape
    image = np.zeros((height, width, 3), np.uint8)
    image[height // 2 - 6:height // 2 + 6, width // 8:width - width // 8] = 255
    image[height // 2 - 20:height // 2 + 20, width // 16:width // 5] = (255, 0, 0)
    return image


@pytest.mark.parametrize("flip", [False, True])
def test_a_positive_angle_turns_counter_clockwise_and_the_flip_mirrors_left_right(tmp_path, flip):
    """As PIL's rotate (counter-clockwise on screen) and FLIP_LEFT_RIGHT; the opposite sense scores far lower."""
    path = tmp_path / "arrow.png"
    Image.fromarray(arrow((200, 300))).save(path)
    ops = (Rotate((10, 10)), Resize((200, 300))) + ((HorizontalFlip(1.0),) if flip else ())
    (picture,) = graph_files([str(path)], make_plan(AugSpec(ops)).steps)
    with Image.open(path) as source:
        turned = {angle: source.convert("RGB").rotate(angle, resample=Image.BILINEAR) for angle in (10, -10)}
    mirror = (lambda image: image.transpose(Image.FLIP_LEFT_RIGHT)) if flip else (lambda image: image)
    right, wrong_sense = (np.asarray(mirror(turned[angle])) for angle in (10, -10))
    assert fidelity.psnr(picture, right) >= 30.0
    assert fidelity.psnr(picture, wrong_sense) < 20.0
    if flip:
        assert fidelity.psnr(picture, np.asarray(turned[10])) < 20.0  # not left unmirrored


def tilt_and_side(image: np.ndarray) -> tuple[float, bool]:
    """The white bar's tilt in degrees (counter-clockwise positive) and whether the red block is on the right."""
    green = image[..., 1].astype(np.float64)  # the bar only: the block is pure red
    columns = np.flatnonzero(green.sum(axis=0) > 255)
    rows = np.arange(image.shape[0])
    centres = [(green[:, c] * rows).sum() / green[:, c].sum() for c in columns]
    slope = np.polyfit(columns, centres, 1)[0]
    red = image[..., 0].astype(np.float64) - green
    half = image.shape[1] // 2
    return float(-np.degrees(np.arctan(slope))), bool(red[:, half:].sum() > red[:, :half].sum())


def test_random_turns_and_flips_are_drawn_per_image(tmp_path):
    """Rotate(10), Resize 64x64, HorizontalFlip(0.5) over one picture: the right shape, both flips, and
    angles spread over +-10 degrees (a mirrored picture's tilt reads with the opposite sign)."""
    path = tmp_path / "arrow.png"
    Image.fromarray(arrow((256, 256))).save(path)
    n = 32
    samples = Samples(paths=np.array([str(path)] * n), labels=np.zeros(n, dtype=np.int64),
                      groups=np.arange(n, dtype=np.int64), classes=("arrow",), root=str(tmp_path), layout="csv")
    spec = AugSpec((Rotate(10), Resize((64, 64)), HorizontalFlip(0.5)))
    images = torch.cat([batch for batch, _ in DaliFeeder(samples, config(spec=spec, shuffle=False))])
    assert images.shape == (n, 3, 64, 64)
    tilts, sides = zip(*(tilt_and_side(image.numpy().transpose(1, 2, 0)) for image in images))
    assert 0 < sum(sides) < n
    assert max(abs(tilt) for tilt in tilts) <= 11.0  # the estimate is good to about a degree
    assert np.std(tilts) > 3.0 and min(tilts) < -3.0 and max(tilts) > 3.0


@pytest.mark.parametrize("ops, warped", [
    (train_spec().ops, 3),
    ((Rotate(5), Resize(256), CenterCrop(224)), 2),  # the crop after the turn would reveal its corners
    ((Rotate(30), RandomResizedCrop((64, 48)), HorizontalFlip(1.0)), 3),
    ((Resize(256), CenterCrop(224)), 0),  # already one antialiased resize step by step
    ((RandomResizedCrop((96, 80)), HorizontalFlip(0.5)), 0),  # a region decode and one resize
])
def test_dali_warps_where_step_by_step_would_resample_twice(numbered, ops, warped):
    spec = AugSpec(ops)
    plan = make_plan(spec)
    assert warp_steps(plan.steps, plan.fused_steps) == warped
    feeder = DaliFeeder(numbered, config(spec=spec))
    literal = DaliFeeder(numbered, config(spec=spec, literal_order=True))
    assert ("as one warp_affine" in feeder.describe_workers()) == bool(warped)
    assert "geometry step by step" in literal.describe_workers()


# ---------------------------------------------------------------- odd, transcoded and bad files


def _misread_by_dali(folder: Path) -> dict[str, Path]:
    """Valid files that DALI's decoder refuses or reads differently from feeding.decode."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    files = {
        "gif_named_jpg": (folder / "really_gif.jpg", {"format": "GIF"}, rgb),
        "la_tiff": (folder / "la.tiff", {}, np.stack([rgb[..., 0], rgb[..., 1]], axis=-1)),
        "bilevel_tiff": (folder / "bilevel.tif", {}, rgb[..., 0] > 120),
        "xmp_orientation_jpeg": (folder / "xmp6.jpg", {"quality": 95, "xmp": xmp}, rgb),
    }
    for path, params, pixels in files.values():
        image = Image.fromarray(pixels, "LA") if pixels.ndim == 3 and pixels.shape[-1] == 2 else Image.fromarray(pixels)
        image.save(path, **params)
    return {name: path for name, (path, _, _) in files.items()}


def test_odd_images_arrive_as_feeding_decode_reads_them(tmp_path):
    odd = write_odd_images(tmp_path / "odd")
    misread = _misread_by_dali(tmp_path / "misread")
    assert all(dali_reads_as_pil(str(p)) for p in odd.values())
    assert not any(dali_reads_as_pil(str(p)) for p in misread.values())

    named = {**odd, **misread}
    names = list(named)
    paths = np.array([str(named[n]) for n in names])
    samples = Samples(paths=paths, labels=np.arange(len(names), dtype=np.int64),
                      groups=np.arange(len(names), dtype=np.int64), classes=tuple(names),
                      root=str(tmp_path), layout="csv")
    size = (40, 40)
    feeder = DaliFeeder(samples, config(batch_size=6, spec=AugSpec((Resize(size),)), on_bad="fail"))
    seen = set()
    for images, labels in feeder:
        for image, label in zip(images.numpy(), labels.tolist()):
            expected = np.asarray(decode.load_pil(paths[label], 10**8).resize(size[::-1], Image.BILINEAR))
            assert psnr(image.transpose(1, 2, 0), expected) >= 35.0, names[label]
            seen.add(names[label])
    assert seen == set(names) and feeder.skipped == []


def test_transcoded_copy_is_made_once(tmp_path):
    source = _misread_by_dali(tmp_path / "misread")["gif_named_jpg"]
    first = Path(transcode_for_dali(str(source), 10**8, tmp_path / "cache"))
    stamp = first.stat().st_mtime_ns
    assert Path(transcode_for_dali(str(source), 10**8, tmp_path / "cache")) == first
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left behind
    with Image.open(first) as copy:
        assert copy.format == "PNG" and copy.mode == "RGB"
        assert np.array_equal(np.asarray(copy), np.asarray(decode.load_pil(str(source), 10**8)))


@pytest.fixture()
def folder_with_bad_files(tmp_path) -> tuple[Path, set[str]]:
    root = write_image_folder(tmp_path / "data", per_class=6)
    bad = write_bad_files(root / "class1")
    return root, {str(path) for path in bad.values()}


def test_bad_files_are_skipped_and_recorded_batches_stay_full(folder_with_bad_files):
    root, bad = folder_with_bad_files
    feeder = DaliFeeder(discover(root), config(batch_size=4, drop_last=True, on_bad="skip"))
    assert {record.path for record in feeder.skipped} == bad
    assert all(record.reason for record in feeder.skipped)
    batches = list(feeder)
    assert len(batches) == len(feeder) == 18 // 4
    assert all(len(labels) == 4 for _, labels in batches)
    assert (dominant_channel(torch.cat([i for i, _ in batches]).numpy())
            == torch.cat([l for _, l in batches]).numpy()).all()


def test_bad_files_fail_names_the_file(folder_with_bad_files):
    root, bad = folder_with_bad_files
    with pytest.raises(FeedError, match="cannot be delivered") as raised:
        DaliFeeder(discover(root), config(on_bad="fail"))
    assert any(Path(path).name in str(raised.value) for path in bad)


def test_a_file_dali_cannot_decode_is_a_feed_error(tmp_path, monkeypatch):
    import feeding.backends.dali_files as dali_files

    gif = str(_misread_by_dali(tmp_path / "misread")["gif_named_jpg"])
    monkeypatch.setattr(dali_files, "dali_reads_as_pil", lambda path: True)  # hand DALI the GIF itself
    samples = Samples(paths=np.array([gif]), labels=np.zeros(1, dtype=np.int64), groups=np.zeros(1, dtype=np.int64),
                      classes=("only",), root=str(tmp_path), layout="csv")
    feeder = DaliFeeder(samples, config(batch_size=1))
    for _ in range(2):  # the failed pipeline is rebuilt, and fails the same way
        with pytest.raises(FeedError, match="DALI failed in epoch 0"):
            list(feeder)


def test_more_shards_than_images_is_refused(numbered):
    with pytest.raises(FeedError, match="shards"):
        DaliFeeder(numbered.subset(np.arange(3)), config(num_shards=4, shard_id=0))


# ---------------------------------------------------------------- memory, failures and devices


def dali_threads() -> int:
    """Threads of this process that DALI started (it names them "[DALI] Executor", "[DALI][TP0]Exec", ...)."""
    tasks = Path("/proc/self/task")
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text())
        except OSError:  # the thread ended while we looked
            continue
    return sum(name.startswith("[DALI]") for name in names)


def repeated(samples: Samples, n: int) -> Samples:
    """``n`` samples that list the same few files over and over (a large data set, cheaply)."""
    return samples.subset(np.arange(n) % len(samples))


def test_a_batch_beyond_usable_memory_is_refused_before_dali_allocates(numbered, monkeypatch):
    import feeding.backends.dali as dali_backend
    import feeding.resources as resources

    monkeypatch.setattr(resources, "available_ram", lambda: 24 * 2**30)  # the 24 GB machine of the report

    def no_pipeline(*args, **kwargs):
        raise AssertionError("the pipeline must not be built for a batch that cannot fit")

    monkeypatch.setattr(dali_backend, "feed_pipeline", no_pipeline)
    before = dali_threads()
    with pytest.raises(FeedError) as raised:
        DaliFeeder(repeated(numbered, 100_000), config(batch_size=100_000))
    message = str(raised.value)
    assert "\n" not in message and message.endswith("GiB of RAM are usable: lower --batch")
    assert "for batch 100000 of up to 512x384 images (prefetch 2)" in message  # the folder's images: 512 high
    assert dali_threads() == before


def test_a_file_broken_after_the_scan_stops_the_pipeline_and_its_threads(folder, tmp_path):
    """The scan passed the files; then they are damaged. DALI's error becomes a FeedError, and
    DALI's threads are gone while that error is still held (the traceback no longer keeps them)."""
    import shutil

    copies = [shutil.copy(path, tmp_path / f"{i}.jpg") for i, path in enumerate(discover(folder).paths[:8])]
    samples = Samples(paths=np.array([str(p) for p in copies]), labels=np.zeros(8, dtype=np.int64),
                      groups=np.arange(8, dtype=np.int64), classes=("only",), root=str(tmp_path), layout="csv")
    gc.collect()  # earlier tests' feeders, if any linger
    before = dali_threads()
    feeder = DaliFeeder(samples, config(batch_size=4, workers=3, cache_dir=str(tmp_path / "cache")))
    deadline = time.monotonic() + 5  # DALI names its threads once they run, a moment after the build
    while dali_threads() <= before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dali_threads() > before
    for copy in copies:
        Path(copy).write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 64)  # a JPEG start, then noise
    with pytest.raises(FeedError, match="DALI failed in epoch 0: CPU operator .*decoders.image") as raised:
        list(feeder)
    assert dali_threads() == before  # while the error (and its cause) is still held
    message = str(raised.value)
    assert "\n" not in message and "8 file(s) no longer decode (changed since the validation scan)" in message
    assert f"{copies[0]}: not an image" in message


def test_out_of_memory_inside_dali_is_a_feed_error_that_frees_the_pipeline(numbered, monkeypatch):
    """pybind11 turns DALI's std::bad_alloc into MemoryError, which is not a RuntimeError."""
    import feeding.backends.dali as dali_backend

    def bad_alloc(self):
        raise MemoryError("std::bad_alloc")

    gc.collect()
    before = dali_threads()
    feeder = DaliFeeder(numbered, config())
    monkeypatch.setattr(dali_backend.DALIGenericIterator, "__next__", bad_alloc)
    with pytest.raises(FeedError, match=r"DALI ran out of memory in epoch 0 \(std::bad_alloc\): lower --batch"):
        list(feeder)
    assert dali_threads() == before


def test_gpu_decode_without_that_gpu_is_a_one_line_feed_error(numbered, monkeypatch):
    import feeding.backends.dali as dali_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dali_backend, "validated_samples", lambda *args: pytest.fail("checked before the scan"))
    with pytest.raises(FeedError, match="'cuda' asked for, but CUDA is not available here") as raised:
        DaliFeeder(numbered, config(decode_device="cuda"))
    assert "\n" not in str(raised.value) and "--decode-device cpu" in str(raised.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(FeedError, match=r"'cuda:3': only 1 CUDA device\(s\) visible"):
        DaliFeeder(numbered, config(decode_device="cuda:3"))


# ---------------------------------------------------------------- imports


def test_feeding_does_not_import_dali_and_a_missing_dali_names_the_package():
    code = (
        "import sys, feeding, feeding.factory\n"
        "print('nvidia.dali' in sys.modules)\n"
        "sys.modules['nvidia.dali'] = None  # as if it were not installed\n"
        "from feeding.errors import MissingDependencyError\n"
        "try:\n    import feeding.backends.dali\n"
        "except MissingDependencyError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    imported, message = result.stdout.strip().split("\n", 1)
    assert imported == "False"
    assert "pip install nvidia-dali-cuda130" in message


# ---------------------------------------------------------------- GPU


@pytest.mark.parametrize("ops", [train_spec().ops, (RandomResizedCrop((64, 64)), ColorJitter(0.2, 0.2, 0.2)),
                                 (Rotate(5), CenterCrop((100, 100)), HorizontalFlip(0.3), ColorJitter(0.1, 0, 0.3))])
def test_gpu_graph_is_well_formed_without_a_gpu(ops):
    """The mixed-decode graph is defined (devices, argument placement) without running it."""
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    pipe = Pipeline(batch_size=2, num_threads=1, device_id=0)  # nothing touches CUDA before build()
    with pipe:
        encoded, _ = fn.readers.file(files=["unused.jpg"], name="Reader")
        images = process_images(encoded, make_plan(AugSpec(ops)).steps, "mixed")
    assert images.device == "gpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_decode_delivers_cuda_batches_like_the_cpu(numbered):
    cpu = DaliFeeder(numbered, config(shuffle=False))
    gpu = DaliFeeder(numbered, config(shuffle=False, decode_device="cuda:0"))
    assert len(gpu) == len(cpu)
    for (gpu_images, gpu_labels), (cpu_images, cpu_labels) in zip(gpu, cpu):
        assert gpu_images.device.type == "cuda" and gpu_images.dtype == torch.uint8
        assert gpu_images.is_contiguous(memory_format=torch.channels_last)  # a view of DALI's HWC buffer
        assert torch.equal(gpu_labels.cpu(), cpu_labels)
        # nvJPEG's IDCT and chroma upsampling differ slightly from libjpeg-turbo's.
        assert psnr(gpu_images.cpu().numpy(), cpu_images.numpy()) >= 30.0
