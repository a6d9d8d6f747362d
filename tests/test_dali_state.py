"""DALI feeder state: a fresh DALI feeder given another's ``state_dict()`` delivers, pixel for pixel, what that
one would have delivered next, from DALI's own checkpoint (nothing before is decoded), with another worker
count too; a foreign or damaged state is refused with what is wrong named. On the CPU (DALI without a GPU)."""
from __future__ import annotations

import base64
import itertools
import json

import pytest
import torch

pytest.importorskip("nvidia.dali")

import feeding.backends.dali as dali_backend  # noqa: E402
from feeding.backends.dali import DaliFeeder  # noqa: E402
from feeding.feeder import FeedConfig  # noqa: E402
from feeding.sources import Samples, discover  # noqa: E402
from feeding.spec import AugSpec, ColorJitter, HorizontalFlip, Resize, Rotate  # noqa: E402
from feeding.state import FeederStateError  # noqa: E402

from tests.conftest import write_image_folder  # noqa: E402

# Random draws in every op kind the graph has (a warp's angle, a flip, colour factors): a batch restored
# with another generator state or reader position shows in its pixels.
SPEC = AugSpec((Rotate(20), Resize((32, 32)), HorizontalFlip(0.5), ColorJitter(0.3, 0.3, 0.3)))
EPOCHS = 3  # of the reference stream
LENGTH = 5  # batches per epoch: 39 images in batches of 8, the last one short


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Samples:
    """39 textured 384x512 JPEGs in 3 class folders."""
    return discover(write_image_folder(tmp_path_factory.mktemp("dali_state"), per_class=13))


def config(**overrides) -> FeedConfig:
    settings = dict(pipeline="dali", batch_size=8, workers=2, spec=SPEC, drop_last=False, seed=3)
    return FeedConfig(**{**settings, **overrides})


def _copied(batches) -> list:
    return [(images.clone(), labels.clone()) for images, labels in batches]


@pytest.fixture(scope="module")
def reference(samples) -> list[list]:
    """The first EPOCHS epochs of the stream, as one feeder delivers them."""
    with DaliFeeder(samples, config()) as feeder:
        assert len(feeder) == LENGTH
        return [_copied(feeder) for _ in range(EPOCHS)]


@pytest.fixture()
def no_replay(monkeypatch):
    """Make any run-and-discard of batches (the way without a checkpoint) fail the test."""
    def replay(self, batches=None):
        raise AssertionError("the pipeline replayed batches: the state should restore from DALI's checkpoint")

    monkeypatch.setattr(DaliFeeder, "_discard", replay)


def _saved(state: dict) -> dict:
    """A state as a checkpoint file holds it: through JSON."""
    return json.loads(json.dumps(state))


def _assert_same(got: list, expected: list) -> None:
    assert len(got) == len(expected), f"{len(got)} batches, expected {len(expected)}"
    for number, ((images, labels), (want_images, want_labels)) in enumerate(zip(got, expected)):
        assert torch.equal(labels, want_labels), f"batch {number}: other labels"
        assert torch.equal(images, want_images), f"batch {number}: other pixels"


@pytest.fixture(scope="module")
def saved(samples) -> dict:
    """States of a feeder that delivered epoch 0 and 3 batches of epoch 1 (through JSON): its own ("at"), the
    one a consumer a batch behind asks for ("behind"), and the refusal of one too far behind ("too old")."""
    with DaliFeeder(samples, config()) as feeder:
        list(feeder)
        epoch = iter(feeder)
        list(itertools.islice(epoch, 3))
        states = {"at": _saved(feeder.state_dict()), "behind": _saved(feeder.state_at((1, 2)))}
        with pytest.raises(FeederStateError) as too_old:
            feeder.state_at((0, 2))
        states["too old"] = str(too_old.value)
    return states


# ---------------------------------------------------------------- restoring


@pytest.mark.parametrize("workers, prefetch", [(2, 2), (1, 2), (3, 1)])  # DALI threads 2 when saved
def test_a_mid_epoch_state_restores_the_rest_pixel_for_pixel_without_replaying(samples, reference, saved,
                                                                               no_replay, workers, prefetch):
    state = saved["at"]
    assert (state["epoch"], state["batches"]) == (1, 3)
    assert state["dali"]["version"] and base64.b64decode(state["dali"]["checkpoint"])
    with DaliFeeder(samples, config(workers=workers, prefetch_factor=prefetch)) as restored:
        restored.load_state_dict(state)
        assert restored.state_dict() == state  # saved again before a batch: the same place
        _assert_same(_copied(restored), reference[1][3:])
        _assert_same(_copied(restored), reference[2])  # and the next epoch from its first batch


def test_an_epochs_end_is_the_next_epochs_start_restored_without_replaying_the_epochs_before(
        samples, reference, no_replay):
    with DaliFeeder(samples, config()) as original:
        list(original)
        held = [_saved(original.state_dict()) for _ in original]  # each taken while its batch is held
        after = _saved(original.state_dict())
    assert (after["epoch"], after["batches"]) == (2, 0)
    assert held[-1] == after  # the last batch comes once the reader finished the epoch: the same checkpoint
    with DaliFeeder(samples, config(workers=1)) as restored:
        restored.load_state_dict(after)
        _assert_same(_copied(restored), reference[2])


def test_a_state_one_batch_behind_is_kept_and_an_older_one_is_refused(samples, reference, saved, no_replay):
    assert "no DALI checkpoint of epoch 0 batch 2: the DALI feeder keeps those of its last 4 places" in saved["too old"]
    with DaliFeeder(samples, config(workers=3)) as restored:
        restored.load_state_dict(saved["behind"])  # what a consumer that read one batch ahead asks for
        _assert_same(_copied(restored), reference[1][2:])


def test_set_epoch_without_a_state_still_replays_and_its_state_restores_there(samples, reference, caplog):
    with DaliFeeder(samples, config()) as original:
        original.set_epoch(1)
        state = _saved(original.state_dict())  # the pipeline is brought to epoch 1 as iter() would bring it
        assert "replaying 1 epoch(s)" in caplog.text
        _assert_same(_copied(original), reference[1])
    caplog.clear()
    with DaliFeeder(samples, config()) as restored:
        restored.load_state_dict(state)
        _assert_same(_copied(restored), reference[1])
    assert "replaying" not in caplog.text


# ---------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def mid_state(saved) -> dict:
    return saved["behind"]  # epoch 1, batch 2


@pytest.mark.parametrize("other, named", [
    (dict(seed=4), r"seed 3 != 4"),
    (dict(batch_size=13), r"batch size 8 != 13"),
    (dict(literal_order=True), r"dali_graph .*; 3 warped; .* != .*; 0 warped; "),  # the same spec, another graph
])  # fmt: skip
def test_a_state_of_another_stream_is_refused_naming_what_differs(samples, mid_state, other, named):
    with DaliFeeder(samples, config(**other)) as feeder:
        with pytest.raises(FeederStateError, match=named):
            feeder.load_state_dict(mid_state)
        assert feeder.next_start() == (0, 0)


def _with_dali(state: dict, **changes) -> dict:
    return {**state, "dali": {**state["dali"], **changes}}


def _flipped(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1:]


def test_a_damaged_or_foreign_dali_checkpoint_is_refused_clearly(samples, reference, mid_state):
    checkpoint = mid_state["dali"]["checkpoint"]
    damaged = {
        "one character changed": (_with_dali(mid_state, checkpoint=_flipped(checkpoint, len(checkpoint) // 2)),
                                  "damaged, or not the one of epoch 1 batch 2: its sha256 does not match"),
        "truncated": (_with_dali(mid_state, checkpoint=checkpoint[: len(checkpoint) // 8 * 4 + 1]),
                      "damaged: not base64"),
        "another place's": ({**mid_state, "batches": 3}, "not the one of epoch 1 batch 3"),
        "another DALI's": (_with_dali(mid_state, version="1.30.0"), "written by DALI '1.30.0'.* restore it with DALI"),
        "none": ({k: v for k, v in mid_state.items() if k != "dali"}, "has no DALI checkpoint"),
    }
    garbage = b"not a DALI checkpoint"
    refused_by_dali = _with_dali(mid_state, checkpoint=base64.b64encode(garbage).decode(),
                                 sha256=dali_backend._checkpoint_digest((1, 2), garbage))
    with DaliFeeder(samples, config()) as feeder:
        for what, (state, message) in damaged.items():
            with pytest.raises(FeederStateError, match=message):
                feeder.load_state_dict(state)
            assert feeder.next_start() == (0, 0), what
        with pytest.raises(FeederStateError, match=r"DALI .* refused the checkpoint in the feeder state: .*deseria"):
            feeder.load_state_dict(refused_by_dali)
        assert feeder.next_start() == (0, 0)
        _assert_same(_copied(feeder), reference[0])  # the feeder still delivers its own stream, from its start


def test_the_state_is_small(mid_state):
    assert len(json.dumps(mid_state)) < 8_000  # a few kB of DALI checkpoint, for this graph and batch
