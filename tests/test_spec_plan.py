import pytest

from feeding.ops import draw_crop_box
from feeding.plan import make_plan, reduction_factor
from feeding.spec import (
    AugSpec, CenterCrop, ColorJitter, HorizontalFlip, Normalize, RandomResizedCrop, Resize, Rotate, parse_size,
    train_spec,
)
import numpy as np


def test_spec_validates_when_built():
    with pytest.raises(ValueError, match="output size"):
        AugSpec((Rotate(10), HorizontalFlip()))
    with pytest.raises(ValueError, match="last"):
        AugSpec((Normalize(), Resize((8, 8))))
    with pytest.raises(ValueError):
        Resize((0, 10))
    with pytest.raises(ValueError):
        Rotate(200)
    with pytest.raises(ValueError):
        HorizontalFlip(1.5)
    with pytest.raises(ValueError):
        RandomResizedCrop((10, 10), scale=(0.5, 1.5))
    with pytest.raises(TypeError, match="list or tuple"):
        AugSpec(Resize((8, 8)))  # one op, not a list of them (a list is stored as a tuple: tests/test_spec_api.py)


def test_spec_knows_output_size_and_randomness():
    spec = AugSpec((Resize((300, 200)), CenterCrop((224, 192)), Normalize()))
    assert spec.output_size == (224, 192)
    assert spec.is_deterministic
    assert spec.normalize == Normalize()
    assert not train_spec().is_deterministic


def test_planner_keeps_the_written_order_and_reorders_only_when_told():
    spec = AugSpec((Rotate(10), ColorJitter(0.2), HorizontalFlip(), Resize((224, 224)), Normalize()))
    planned = make_plan(spec)
    assert [type(op) for op in planned.steps] == [Rotate, ColorJitter, HorizontalFlip, Resize]
    assert not planned.reordered and "reordered" not in planned.describe((512, 384))
    cheap = make_plan(spec, reorder=True)
    assert [type(op) for op in cheap.steps] == [Resize, Rotate, HorizontalFlip, ColorJitter]
    assert cheap.reordered and "Rotate after Resize" in cheap.moved()
    assert "the picture differs" in cheap.describe((512, 384))
    source = (512, 384)
    assert cheap.total_cost(source) < planned.total_cost(source) / 2
    with pytest.raises(ValueError, match="literal"):
        make_plan(spec, literal=True, reorder=True)


def test_decode_reduction_only_when_target_is_at_most_half():
    assert reduction_factor((512, 384), (224, 224)) == 1  # 384/224 < 2
    assert reduction_factor((512, 384), (192, 192)) == 2
    assert reduction_factor((512, 384), (64, 48)) == 8
    plan = make_plan(AugSpec((Resize((96, 96)),)))
    assert plan.decode_reduction((512, 384)) == 4
    # A plan that rotates first (literal order) decodes at full size.
    literal = make_plan(AugSpec((Rotate(5), Resize((96, 96)))), literal=True)
    assert literal.decode_reduction((512, 384)) == 1


def test_describe_prints_the_plan_with_decode_scale():
    text = make_plan(AugSpec((Rotate(10), Resize((128, 128))))).describe((512, 384))
    assert "decode 512x384 at 1/2 (libjpeg DCT scaling) -> 256x192" in text
    assert text.index("Rotate") < text.index("Resize")  # the written order
    assert "antialiased resize -> 128x128" in text  # the warp shrinks 2x1.5 from the 1/2 decode: filtered


def test_crop_box_stays_inside_the_image():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = draw_crop_box((512, 384), (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and 0 <= left and h > 0 and w > 0
        assert top + h <= 512 and left + w <= 384


@pytest.mark.parametrize("text,expected", [("224", (224, 224)), ("256x192", (256, 192))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["0", "x", "12x", "-3", "3x4x5", "abc"])
def test_parse_size_rejects_bad_text(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_planner_fuses_crop_resize_rotate_and_flip_into_one_warp():
    spec = AugSpec((Rotate(10), Resize((224, 224)), HorizontalFlip(), ColorJitter(0.2)))
    assert make_plan(spec).fused_steps == 3  # Rotate, Resize, HorizontalFlip; the jitter runs after
    # A colour op between geometric ones ends the warp: nothing moves it (its contrast reads the whole image).
    assert make_plan(AugSpec((Rotate(10), ColorJitter(0.2), Resize((224, 224))))).fused_steps == 1
    assert make_plan(spec, literal=True).fused_steps == 0
    assert make_plan(spec, fuse=False).fused_steps == 0
    lone = make_plan(AugSpec((Resize((224, 224)),)))  # a lone resize: one antialiased crop-and-resize, no warp
    assert lone.fused_steps == 1 and "one antialiased crop-and-resize" in lone.describe((512, 384))
    assert "1-3. Rotate, Resize, HorizontalFlip: one affine warp" in make_plan(spec).describe((512, 384))


def test_affine_pieces_map_pixel_centres():
    from feeding import affine

    resize = affine.box_to_size((0, 0, 512, 384), (256, 192))
    # The centre of the source maps to the centre of the output.
    centre = resize @ np.array([(384 - 1) / 2, (512 - 1) / 2, 1])
    assert centre[:2] == pytest.approx([(192 - 1) / 2, (256 - 1) / 2])
    turn = affine.rotation((100, 100), 90)
    assert (turn @ np.array([99, 49.5, 1]))[:2] == pytest.approx([49.5, 0])  # right edge goes to the top
    flip = affine.mirror((10, 20))
    assert (flip @ np.array([0, 3, 1]))[:2] == pytest.approx([19, 3])
