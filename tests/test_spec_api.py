"""The Python API takes what torchvision users write, and every backend runs it with torchvision's geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from feeding import FeedConfig, create_feeder, discover
from feeding.plan import make_plan
from feeding.spec import (
    AugSpec, CenterCrop, HorizontalFlip, Normalize, RandomResizedCrop, Resize, Rotate, shorter_side_shape,
)
from tests.conftest import textured_image
from tests.imaging import psnr

# ---------------------------------------------------------------- the spec


def test_an_int_size_means_a_square_for_crops_and_the_shorter_side_for_resize():
    assert RandomResizedCrop(224).size == (224, 224)
    assert CenterCrop(224).size == (224, 224)
    assert CenterCrop([200, 100]).size == (200, 100)
    assert Resize(256).keeps_aspect and not Resize((256, 256)).keeps_aspect
    assert Resize(256).out_shape((512, 384)) == (341, 256)  # portrait: the width is the shorter side
    assert Resize(256).out_shape((384, 512)) == (256, 341)
    assert Resize((256, 192)).out_shape((384, 512)) == (256, 192)  # a pair stays the exact size
    assert Resize([256]) == Resize(256)  # torchvision's 1-item sequence


@pytest.mark.parametrize("shape", [(384, 514), (514, 384), (384, 512), (333, 500), (100, 301), (255, 257),
                                   (256, 256), (97, 1000), (3000, 7)])
def test_shorter_side_resize_has_torchvisions_size(shape):
    """The longer side is truncated as torchvision truncates it (384x514 -> 256x342, not the rounded 343)."""
    height, width = shape
    resized = T.Resize(256)(Image.new("RGB", (width, height)))
    assert shorter_side_shape(shape, 256) == (resized.height, resized.width)


def test_the_usual_eval_spec_fixes_its_output_size():
    spec = AugSpec([Resize(256), CenterCrop(224), Normalize()])
    assert isinstance(spec.ops, tuple) and spec == AugSpec((Resize(256), CenterCrop(224), Normalize()))
    assert spec.output_size == (224, 224)
    assert hash(spec) == hash(AugSpec(list(spec.ops)))  # frozen all the way down
    assert AugSpec([Resize(256), RandomResizedCrop(192), HorizontalFlip()]).output_size == (192, 192)
    assert AugSpec([CenterCrop(200), Resize(256)]).output_size == (256, 256)  # resizing a known square


@pytest.mark.parametrize("ops", [[Resize(256)], [Resize(256), Rotate(10), HorizontalFlip()],
                                 [Rotate(5), Resize(256), Normalize()]])
def test_a_spec_whose_output_size_follows_the_image_is_refused(ops):
    with pytest.raises(ValueError, match=r"Resize\(256\) keeps each image's aspect ratio, so the output size varies"):
        AugSpec(ops)


@pytest.mark.parametrize("make", [lambda: Resize(0), lambda: Resize(2.5), lambda: Resize(True), lambda: Resize("256"),
                                  lambda: Resize((1, 2, 3)), lambda: CenterCrop(-4), lambda: CenterCrop((224, 0)),
                                  lambda: RandomResizedCrop((224, None)), lambda: CenterCrop(())])
def test_bad_sizes_are_refused_naming_the_op(make):
    with pytest.raises(ValueError, match=r"\.size must be"):
        make()


def test_bad_scale_or_ratio_is_a_clear_error():
    with pytest.raises(ValueError, match="RandomResizedCrop.scale must be a"):
        RandomResizedCrop(224, scale=0.5)
    assert RandomResizedCrop(224, scale=[0.5, 1], ratio=[1, 1]).scale == (0.5, 1.0)


# ---------------------------------------------------------------- the plan


@pytest.mark.parametrize("source", [(800, 400), (400, 800), (1536, 1024), (1024, 1536), (640, 480)])
@pytest.mark.parametrize("ops", [(Resize(100), CenterCrop(40)), (Resize((300, 200)), CenterCrop(100))])
def test_decode_reduction_never_goes_below_the_resized_size(ops, source):
    """The reduction keeps this image's resized size (not the smaller crop) on both axes."""
    plan = make_plan(AugSpec(ops))
    factor = plan.decode_reduction(source)
    resized = ops[0].out_shape(source)
    assert math.ceil(source[0] / factor) >= resized[0] and math.ceil(source[1] / factor) >= resized[1]
    assert factor == 8 or source[0] / (2 * factor) < resized[0] or source[1] / (2 * factor) < resized[1]


def test_decode_reduction_follows_the_aspect_ratio():
    plan = make_plan(AugSpec([Resize(100), CenterCrop(40)]))
    assert plan.decode_reduction((800, 400)) == 4  # resized 200x100; the 40x40 crop alone would allow 1/8
    assert plan.decode_reduction((400, 400)) == 4  # resized 100x100


def test_a_resize_and_its_centre_crop_are_one_warp():
    assert make_plan(AugSpec([Resize(256), CenterCrop(224)])).fused_steps == 2
    assert make_plan(AugSpec([Resize(256), CenterCrop(224), HorizontalFlip()])).fused_steps == 3
    # A rotate of the crop leaves black corners; the warp would show what the crop cut away.
    assert make_plan(AugSpec([Resize(256), CenterCrop(224), Rotate(10)])).fused_steps == 2
    assert make_plan(AugSpec([Resize(256), CenterCrop(224)]), fuse=False).fused_steps == 0


def test_the_fused_warp_maps_the_crop_of_the_resized_image():
    from feeding import affine

    steps = make_plan(AugSpec([Resize(256), CenterCrop(224)])).steps
    source = (512, 384)  # resized to 341x256, crop window at row 58, column 16
    assert affine.fused_shape(steps, source) == (224, 224)
    matrix = affine.warp_matrix(steps, source, source, np.random.default_rng(0))
    centre_of_source = matrix @ np.array([(384 - 1) / 2, (512 - 1) / 2, 1])
    assert centre_of_source[:2] == pytest.approx([(256 - 1) / 2 - 16, (341 - 1) / 2 - 58])


# ---------------------------------------------------------------- every backend against torchvision

PIPELINES = ["pil", "albumentations", "dali"]
ORIENTED = {"portrait": (512, 384), "landscape": (384, 512)}  # (height, width)


@pytest.fixture(scope="module", params=[1, 2], ids=["384x512", "768x1024"])
def oriented_folder(request, tmp_path_factory):
    """Two portrait and two landscape JPEGs; at 768x1024, Resize(96) decodes at 1/8."""
    root = tmp_path_factory.mktemp(f"oriented{request.param}")
    rng = np.random.default_rng(7)
    for name, (height, width) in ORIENTED.items():
        (root / name).mkdir()
        for i in range(2):
            image = textured_image(rng, (120, 110, 100), height * request.param, width * request.param)
            image.save(root / name / f"img{i}.jpg", quality=90)
    return root, (256, 224) if request.param == 1 else (96, 80)


def _assert_matches_torchvision(config: FeedConfig, root, reference) -> None:
    samples = discover(root)
    with create_feeder(samples, config) as feeder:
        delivered = torch.cat([images for images, _ in feeder]).numpy()
    assert len(delivered) == len(samples) == 4
    for path, image in zip(samples.paths, delivered):
        with Image.open(path) as source:
            expected = np.asarray(reference(source.convert("RGB")))
        got = image.transpose(1, 2, 0)
        assert got.shape == expected.shape == (*config.plan.output_size, 3)
        assert psnr(got, expected) >= 30.0, path


@pytest.mark.parametrize("pipeline,fast_paths", [("pil", True), ("pil", False), ("albumentations", True),
                                                 ("albumentations", False), ("dali", True)])
def test_resize_shorter_side_and_centre_crop_match_torchvision(pipeline, fast_paths, oriented_folder):
    """torchvision's eval transform, Resize(n) + CenterCrop(m), through each backend: >= 30 dB, same shape."""
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    root, (resize, crop) = oriented_folder
    config = FeedConfig(pipeline=pipeline, batch_size=2, workers=1, spec=AugSpec([Resize(resize), CenterCrop(crop)]),
                        shuffle=False, drop_last=False, fast_paths=fast_paths)
    assert config.plan.fused_steps == (2 if fast_paths else 0)
    _assert_matches_torchvision(config, root, T.Compose([T.Resize(resize), T.CenterCrop(crop)]))


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_shorter_side_resize_after_another_step_matches_torchvision(pipeline, oriented_folder):
    """Not the first step (no decode-time reduction, no fusion): sized from the image it is given."""
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    root, (resize, crop) = oriented_folder
    spec = AugSpec([Rotate(0), Resize(resize), CenterCrop(crop)])  # a rotate by 0 degrees changes nothing
    config = FeedConfig(pipeline=pipeline, batch_size=2, workers=1, spec=spec, literal_order=True, shuffle=False,
                        drop_last=False)
    _assert_matches_torchvision(config, root, T.Compose([T.Resize(resize), T.CenterCrop(crop)]))


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_shorter_side_resize_runs_in_the_users_order(pipeline, oriented_folder):
    """Literal order: the rotate runs on each image's own resized size, then the crop fixes the batch shape."""
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    root, (resize, crop) = oriented_folder
    spec = AugSpec([Resize(resize), Rotate(10), CenterCrop(crop)])
    config = FeedConfig(pipeline=pipeline, batch_size=2, workers=1, spec=spec, literal_order=True, drop_last=False)
    with create_feeder(discover(root), config) as feeder:
        shapes = [tuple(images.shape) for images, _ in feeder]
    assert shapes == [(2, 3, crop, crop)] * 2


def test_the_gpu_graph_sizes_a_shorter_side_resize_on_the_cpu():
    """The mixed-decode graph with Resize(int) is well formed without a GPU (the sizes are CPU arguments)."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    from feeding.backends.dali_graph import process_images

    pipe = Pipeline(batch_size=2, num_threads=1, device_id=0, exec_dynamic=True)  # nothing touches CUDA yet
    with pipe:
        encoded, _ = fn.readers.file(files=["unused.jpg"], name="Reader")
        images = process_images(encoded, make_plan(AugSpec([Rotate(5), Resize(256), CenterCrop(224)])).steps, "mixed")
    assert images.device == "gpu"
