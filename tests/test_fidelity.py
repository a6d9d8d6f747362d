"""The fast paths deliver the picture the spec wrote: the written order's geometry, antialiased.

Each path is compared, image by image and with the same random draws, with
``feeding.fidelity.reference``: a full PIL decode and the spec's ops one by one in
the written order. The pictures carry fine detail (``feeding.detail``: stripes
down to a 2.2 px period, 1-px strokes, noise), where a shrink without a filter
aliases, at the competition's size (512x384 -> 224x224: 2.29x by 1.71x).
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from feeding import affine, detail, fidelity
from feeding.backends.albu import AlbumentationsTransform
from feeding.backends.pil import PilTransform
from feeding.plan import make_plan
from feeding.spec import AugSpec, ColorJitter, HorizontalFlip, RandomResizedCrop, Resize, Rotate

MAX_PIXELS = 2**27
# The benchmark spec with its angle fixed, so that the rotation's direction is checked too.
BENCHMARK = AugSpec([Rotate((10, 10)), Resize((224, 224)), HorizontalFlip(0.5)])
CROPS = AugSpec([RandomResizedCrop(224), HorizontalFlip(0.5), ColorJitter(0.4, 0.4, 0.4)])
TRANSFORMS = {"pil": PilTransform, "albumentations": AlbumentationsTransform}
# The target on photographic content with fine detail.
MEDIAN_DB, WORST_DB = 38.0, 33.0


@pytest.fixture(scope="module")
def detail_jpegs(tmp_path_factory) -> list[str]:
    return [str(p) for p in detail.write_detail_jpegs(tmp_path_factory.mktemp("detail"), 8, seed=3)]


def _scores(transform, spec: AugSpec, paths: list[str]) -> list[float]:
    return [fidelity.psnr(fidelity.reference(path, spec, fidelity.image_rng(0, i)),
                          transform(path, fidelity.image_rng(0, i))) for i, path in enumerate(paths)]


@pytest.mark.parametrize("pipeline", TRANSFORMS)
@pytest.mark.parametrize("spec", [BENCHMARK, CROPS], ids=["rotate-resize-flip", "crop-flip-jitter"])
def test_the_fused_path_delivers_the_written_picture(pipeline, spec, detail_jpegs):
    plan = make_plan(spec)
    assert plan.fused_steps >= 2 if spec is BENCHMARK else plan.fused_steps == 2
    scores = _scores(TRANSFORMS[pipeline](plan, MAX_PIXELS), spec, detail_jpegs)
    assert np.median(scores) >= MEDIAN_DB, scores
    assert min(scores) >= WORST_DB, scores


def test_moving_the_rotation_after_the_resize_is_a_different_picture(detail_jpegs):
    """What the planner used to do (and does under --reorder): it rotates the squashed image, a shear."""
    reordered = make_plan(BENCHMARK, reorder=True)
    assert reordered.reordered
    scores = _scores(AlbumentationsTransform(reordered, MAX_PIXELS), BENCHMARK, detail_jpegs)
    assert np.median(scores) < 25.0, scores


def test_a_warp_without_its_filter_aliases_on_fine_detail(detail_jpegs, monkeypatch):
    """The check can see aliasing: the same warp without the antialiasing canvas falls below the target."""
    monkeypatch.setattr(affine, "filter_canvas", lambda piece, out, *args: None)
    scores = _scores(AlbumentationsTransform(make_plan(BENCHMARK), MAX_PIXELS), BENCHMARK, detail_jpegs)
    assert min(scores) < WORST_DB, scores


def test_the_literal_step_by_step_path_draws_as_the_reference(detail_jpegs):
    """The PIL step-by-step path is the reference's own arithmetic on the same draws (bar the draft decode)."""
    scores = _scores(PilTransform(make_plan(CROPS, literal=True), MAX_PIXELS), CROPS, detail_jpegs)
    assert min(scores) >= 30.0, scores


@pytest.mark.parametrize("pipeline", TRANSFORMS)
def test_a_positive_angle_turns_counter_clockwise_as_torchvision(pipeline, tmp_path):
    torchvision_f = pytest.importorskip("torchvision.transforms.functional")
    picture = np.zeros((120, 160, 3), np.uint8)
    picture[50:70, 130:150] = 255  # a bright block right of the centre
    path = tmp_path / "block.png"
    Image.fromarray(picture).save(path)
    spec = AugSpec([Rotate((90, 90)), Resize((120, 160))])
    got = TRANSFORMS[pipeline](make_plan(spec), MAX_PIXELS)(str(path), np.random.default_rng(0))
    expected = np.asarray(torchvision_f.rotate(Image.fromarray(picture), 90))
    rows, cols = np.nonzero(got[..., 0] > 128)
    assert rows.mean() < 40 and 60 < cols.mean() < 100  # above the centre: a quarter turn counter-clockwise
    assert fidelity.psnr(got, expected) >= 25.0


@pytest.mark.parametrize("factors", [(1.3, 1.0, 1.0), (1.0, 0.6, 1.0), (1.0, 1.0, 1.6), (0.8, 1.3, 0.5)])
def test_the_uint8_colour_jitter_matches_pil_within_rounding(factors):
    picture = detail.detail_photo((96, 128), seed=1)
    jitter = ColorJitter(0.5, 0.5, 0.6)
    expected = np.asarray(jitter.pil(Image.fromarray(picture), (96, 128), factors)).astype(int)
    for channels in (3, 4):  # RGB, and the fused warp's RGBX
        padded = np.dstack([picture, np.zeros((96, 128, channels - 3), np.uint8)])
        got = jitter.opencv(np.ascontiguousarray(padded), factors)[..., :3].astype(int)
        assert np.abs(got - expected).max() <= 2


def test_crops_and_colour_stay_on_the_fast_path():
    transform = AlbumentationsTransform(make_plan(CROPS), MAX_PIXELS)
    assert transform.fully_fused and transform.releases_gil  # no albumentations step: threads scale
    assert not transform.compose.transforms
    assert ColorJitter(brightness=(1.2, 1.2)).factor_range("brightness") == (1.2, 1.2)
    assert not ColorJitter(brightness=(1.2, 1.2)).is_random


def test_fixed_angles_and_ranges_as_torchvision():
    assert Rotate(10).limits == (-10.0, 10.0)
    assert Rotate((5, 20)).limits == (5.0, 20.0)
    assert Rotate((10, 10)).draw((10, 10), np.random.default_rng(0)) == 10.0
    assert not Rotate((10, 10)).is_random
    assert ColorJitter(brightness=1.5).factor_range("brightness") == (0.0, 2.5)  # clamped at 0, as torchvision
    with pytest.raises(ValueError, match="Rotate.degrees"):
        Rotate((20, 10))
