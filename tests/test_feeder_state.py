"""Feeder state: a fresh feeder given another's ``state_dict()`` delivers what that one would have delivered next.

Pixel for pixel (``torch.equal``), with another worker count or executor, across an epoch's end, per
shard, under resampling, behind a DeviceFeeder and on Ray; without making the batches it skips. A state
from another stream is refused with what differs named (``feeding.state``). DALI's are in test_dali_state.py.
"""
from __future__ import annotations

import itertools
import json
import types

import numpy as np
import pytest
import torch

from feeding import FeedConfig, create_feeder, discover
from feeding.spec import AugSpec, HorizontalFlip, Resize, Rotate
from feeding.state import STATE_FORMAT, FeederStateError

SPEC = AugSpec((Rotate(20), Resize((32, 32)), HorizontalFlip()))  # random draws: a batch made off its number shows
BATCH = 4  # the image folder's 24 images: 6 batches an epoch


def _config(pipeline: str = "pil", workers: int = 0, executor: str = "auto", **overrides) -> FeedConfig:
    settings = dict(pipeline=pipeline, batch_size=BATCH, workers=workers, executor=executor, spec=SPEC, seed=3)
    return FeedConfig(**{**settings, **overrides})


def _take(batches, count: int | None = None) -> list:
    """``count`` batches from an epoch's iterator (all that are left: None), as (images, labels)."""
    return list(itertools.islice(batches, count))


def _saved(feeder) -> dict:
    """The feeder's state as a checkpoint holds it: through JSON, so nothing but plain values survives."""
    return json.loads(json.dumps(feeder.state_dict()))


def _assert_same(got: list, expected: list) -> None:
    assert len(got) == len(expected), f"{len(got)} batches, expected {len(expected)}"
    for number, ((images, labels), (want_images, want_labels)) in enumerate(zip(got, expected)):
        assert torch.equal(labels, want_labels), f"batch {number}: other labels"
        assert torch.equal(images, want_images), f"batch {number}: other pixels"


def _assert_refused(state: dict, feeder, names: str) -> None:
    with pytest.raises(FeederStateError, match=names):
        feeder.load_state_dict(state)
    assert feeder.next_start() == (0, 0)  # a refused state leaves the feeder as it was, not restarted elsewhere


# ---------------------------------------------------------------- host pipelines

@pytest.mark.parametrize("pipeline, saved_by, restored_by", [
    ("pil", (2, "process"), (2, "process")),
    ("pil", (2, "process"), (1, "process")),
    ("pil", (0, "auto"), (3, "process")),  # the main process, then worker processes
    ("albumentations", (2, "thread"), (2, "thread")),
    ("albumentations", (2, "thread"), (3, "process")),
    ("albumentations", (2, "process"), (1, "thread")),
    ("albumentations", (2, "process"), (0, "auto")),
])  # fmt: skip
def test_a_mid_epoch_state_restores_the_rest_of_the_stream(pipeline, saved_by, restored_by, image_folder):
    samples = discover(image_folder)
    with create_feeder(samples, _config(pipeline, *saved_by)) as original:
        epoch = iter(original)
        _take(epoch, 2)
        state = _saved(original)
        rest, following = _take(epoch), list(original)
    assert (state["epoch"], state["batches"]) == (0, 2)
    with create_feeder(samples, _config(pipeline, *restored_by)) as restored:
        restored.load_state_dict(state)
        assert restored.state_dict() == state  # saved again before a batch: the same place
        _assert_same(list(restored), rest)
        _assert_same(list(restored), following)  # and the next epoch from its first batch


def test_an_epochs_end_is_the_next_epochs_start(image_folder):
    samples = discover(image_folder)
    with create_feeder(samples, _config("pil", 2, "process")) as original:
        assert (original.state_dict()["epoch"], original.state_dict()["batches"]) == (0, 0)
        for _ in original:
            at_last_batch = _saved(original)  # the consumer holds the epoch's last batch
        after = _saved(original)
        following = list(original)
    assert at_last_batch == after and (after["epoch"], after["batches"]) == (1, 0)
    with create_feeder(samples, _config("pil", 1, "process")) as restored:
        restored.load_state_dict(after)
        _assert_same(list(restored), following)


@pytest.mark.parametrize("pipeline, executor", [("albumentations", "thread"), ("pil", "process")])
def test_a_state_is_a_snapshot_and_rewinds_a_running_feeder(pipeline, executor, image_folder):
    """Batches drawn after the state was taken do not move it; loaded into the same feeder, whose
    workers have made batches beyond it, it delivers those batches again."""
    samples = discover(image_folder)
    with create_feeder(samples, _config(pipeline, 2, executor)) as feeder:
        epoch = iter(feeder)
        _take(epoch, 2)
        state = _saved(feeder)
        rest = _take(epoch)
        _take(iter(feeder), 3)  # into the next epoch, abandoned there
        assert (state["epoch"], state["batches"]) == (0, 2)
        feeder.load_state_dict(state)
        _assert_same(list(feeder), rest)
    with create_feeder(samples, _config(pipeline, 1, "thread" if executor == "process" else "process")) as fresh:
        fresh.load_state_dict(state)
        _assert_same(list(fresh), rest)


def test_an_epoch_ending_in_a_partial_batch_restores_to_it(image_folder):
    samples = discover(image_folder)  # batch 5 without drop_last: 4 batches of 5, then one of 4
    with create_feeder(samples, _config("albumentations", 2, "thread", batch_size=5, drop_last=False)) as original:
        epoch = iter(original)
        _take(epoch, 3)
        state = _saved(original)
        rest = _take(epoch)
    assert [len(labels) for _, labels in rest] == [5, 4]
    with create_feeder(samples, _config("albumentations", 0, batch_size=5, drop_last=False)) as restored:
        restored.load_state_dict(state)
        _assert_same(list(restored), rest)


def test_set_epoch_keeps_a_loaded_state_in_that_epoch_and_drops_it_for_another(image_folder):
    """training.engine calls set_epoch(epoch) before each epoch: a resumed run's first call must not restart it."""
    samples = discover(image_folder)
    with create_feeder(samples, _config()) as original:
        original.set_epoch(1)
        epoch = iter(original)
        _take(epoch, 3)
        state = _saved(original)
        rest = _take(epoch)
        original.set_epoch(2)
        third = list(original)
    with create_feeder(samples, _config()) as restored:
        restored.load_state_dict(state)
        restored.set_epoch(1)
        assert restored.next_start() == (1, 3)
        _assert_same(list(restored), rest)
        restored.set_epoch(2)
        _assert_same(list(restored), third)
    with create_feeder(samples, _config()) as elsewhere:
        elsewhere.load_state_dict(state)
        elsewhere.set_epoch(2)  # the run moved on to another epoch: the state's position is not in it
        assert elsewhere.next_start() == (2, 0)
        _assert_same(list(elsewhere), third)


@pytest.mark.parametrize("pipeline", ["pil", "albumentations"])
def test_the_batches_before_a_state_are_not_decoded(pipeline, image_folder):
    from feeding.backends.host import EpochBatchSampler

    samples = discover(image_folder)
    config = _config(pipeline)  # the main process: every decode happens here, when its batch is taken
    with create_feeder(samples, config) as original:
        epoch = iter(original)
        _take(epoch, 4)
        state = _saved(original)
        rest = _take(epoch)
    with create_feeder(samples, config) as restored:
        decode, decoded = restored.dataset.transform.decode, []

        def counted(path, data, rng):
            decoded.append(path)
            return decode(path, data, rng)

        restored.dataset.transform.decode = counted
        restored.load_state_dict(state)
        _assert_same(list(restored), rest)
        assert restored.stage_images == len(decoded) == 2 * BATCH
    keys = list(EpochBatchSampler(len(samples), config, epoch=0, start=4))
    assert decoded == [str(samples.paths[i]) for key in keys for i in key.indices]  # the last two batches only


def test_each_shard_restores_its_own_stream_and_refuses_another_ranks(image_folder):
    samples = discover(image_folder)  # 12 images a rank: 3 batches
    saved, rests = [], []
    for rank, workers in ((0, 2), (1, 0)):
        with create_feeder(samples, _config(workers=workers, num_shards=2, shard_id=rank)) as original:
            epoch = iter(original)
            _take(epoch, 1)
            saved.append(_saved(original))
            rests.append(_take(epoch))
    assert not torch.equal(rests[0][0][0], rests[1][0][0])  # two streams
    for rank, workers in ((0, 0), (1, 2)):
        with create_feeder(samples, _config(workers=workers, num_shards=2, shard_id=rank)) as restored:
            restored.load_state_dict(saved[rank])
            _assert_same(list(restored), rests[rank])
    rank0 = create_feeder(samples, _config(num_shards=2, shard_id=0))
    _assert_refused(saved[1], rank0, r"shard \[rank, ranks\] \[1, 2\] != \[0, 2\]")


def test_a_resampled_feeder_restores_mid_epoch(image_folder):
    from feeding.resampled import ResampledFeeder
    from training.sampling import balanced_indices

    samples = discover(image_folder)

    def draw(epoch):
        return balanced_indices(samples.labels, 3, epoch)

    with ResampledFeeder(samples, _config("pil", 2, "process"), draw) as original:
        list(original)
        epoch = iter(original)
        _take(epoch, 2)
        state = _saved(original)
        rest, following = _take(epoch), list(original)
    assert (state["epoch"], state["batches"]) == (1, 2)
    with ResampledFeeder(samples, _config("pil", 0), draw) as restored:
        restored.load_state_dict(state)
        _assert_same(list(restored), rest)
        _assert_same(list(restored), following)


def test_a_device_feeders_state_is_the_batch_its_consumer_holds(image_folder, monkeypatch):
    from feeding.device import DeviceFeeder

    samples = discover(image_folder)
    original = DeviceFeeder(create_feeder(samples, _config("albumentations", 2, "thread")), "cpu")
    epoch = iter(original)
    _take(epoch, 2)
    state = json.loads(json.dumps(original.state_dict()))
    rest = _take(epoch)
    original.feeder.close()
    assert (state["epoch"], state["batches"]) == (0, 2)
    restored = DeviceFeeder(create_feeder(samples, _config("albumentations", 0)), "cpu")
    restored.load_state_dict(state)
    _assert_same(list(restored), rest)
    assert rest[0][0].dtype == torch.float32  # normalized: the DeviceFeeder's own batches

    def one_ahead(self):  # as the CUDA prefetch: batch k+1 is taken from the feeder while k is used
        pending = None
        for images, labels in self.feeder:
            if pending is not None:
                yield pending
            pending = self._finish(images, labels)
        yield pending

    ahead = DeviceFeeder(create_feeder(samples, _config("albumentations", 0)), "cpu")
    monkeypatch.setattr(ahead, "_batches", types.MethodType(one_ahead, ahead))
    epoch = iter(ahead)
    _take(epoch, 2)
    assert ahead.feeder.state_dict()["batches"] == 3 and ahead.state_dict()["batches"] == 2
    state = ahead.state_dict()
    rest = _take(epoch)
    again = DeviceFeeder(create_feeder(samples, _config("albumentations", 0)), "cpu")
    again.load_state_dict(state)
    _assert_same(list(again), rest)
    assert ahead.state_dict() == again.state_dict()  # both at the epoch's end, the next one's start


# ---------------------------------------------------------------- refused states

@pytest.mark.parametrize("restored_by, names", [
    (dict(seed=4), r"seed 3 != 4"),
    (dict(batch_size=3), r"batch size 4 != 3"),
    (dict(spec=AugSpec((Resize((32, 32)),))), r"augmentation spec"),
    (dict(shuffle=False), r"shuffle True != False"),
    (dict(drop_last=False), r"drop_last True != False"),
    (dict(pipeline="albumentations"), r"pipeline 'pil' != 'albumentations'"),
    (dict(reorder=True), r"plan"),
    (dict(fast_paths=False), r"plan"),
])  # fmt: skip
def test_a_state_of_another_stream_is_refused_naming_what_differs(restored_by, names, image_folder):
    samples = discover(image_folder)
    state = create_feeder(samples, _config()).state_at((0, 2))
    _assert_refused(state, create_feeder(samples, _config(**restored_by)), names)


@pytest.mark.parametrize("index, names", [
    (np.arange(20), r"data set .*; number of images 24 != 20"),  # a subset
    (np.arange(24)[::-1], r"data set \(its files and labels, in order\) \(another\) != \(another\)"),  # reordered
])
def test_a_state_of_another_data_set_is_refused(index, names, image_folder):
    samples = discover(image_folder)
    state = create_feeder(samples, _config()).state_at((0, 2))
    _assert_refused(state, create_feeder(samples.subset(index), _config()), names)


@pytest.mark.parametrize("change, names", [
    (lambda state: {**state, "format": STATE_FORMAT + 1}, rf"format {STATE_FORMAT + 1} is newer"),
    (lambda state: [state["epoch"], state["batches"]], r"not a feeder state"),
    (lambda state: None, r"not a feeder state"),
    (lambda state: {"epoch": 0, "batches": 2}, r"not a feeder state"),  # someone else's state_dict()
    (lambda state: {**state, "batches": 7}, r"epoch=0, batches=7 is not one of this feeder's \(epochs of 6"),
    (lambda state: {**state, "epoch": -1}, r"epoch=-1, batches=2 is not one"),
    (lambda state: {**state, "batches": "2"}, r"batches='2' is not one"),
])  # fmt: skip
def test_what_is_not_a_state_of_this_feeder_is_refused(change, names, image_folder):
    feeder = create_feeder(discover(image_folder), _config())
    _assert_refused(change(feeder.state_at((0, 2))), feeder, names)
