"""The training loop's parts without a data set: accumulation, per-update schedules with warm-up,
pretrained weights from a local file, a frozen backbone, class-balanced resampling."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from training.config import FitConfig
from training.engine import accumulation_group, train_one_epoch
from training.schedule import WarmupPlateau, create_schedule


class ListFeeder:
    """The DeviceFeeder contract over fixed batches."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)


class CountingSchedule:
    def __init__(self) -> None:
        self.updates: list[int] = []

    def step_update(self, num_updates: int) -> None:
        self.updates.append(num_updates)


def _batches(images: int, per_batch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 3, 8, 8, generator=generator)
    y = torch.randint(0, 4, (images,), generator=generator)
    return [(x[i:i + per_batch], y[i:i + per_batch]) for i in range(0, images, per_batch)]


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))  # no batch statistics: accumulation is exact


def _train(batches, accum_steps: int, schedule=None, updates_done: int = 0) -> tuple[nn.Module, object]:
    model = _linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, ListFeeder(batches), optimizer, nn.CrossEntropyLoss(), 0, scheduler=schedule,
                            updates_done=updates_done, accum_steps=accum_steps)
    return model, stats


def test_accumulating_two_batches_of_4_is_one_batch_of_8():
    accumulated, stats = _train(_batches(16, 4), accum_steps=2)
    whole, _ = _train(_batches(16, 8), accum_steps=1)
    assert stats.updates == 2 and stats.images == 16
    for a, b in zip(accumulated.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b)


def test_a_short_last_group_is_averaged_over_its_own_batches():
    # 3 batches of 4, accumulating 2: updates of 8 then 4 images, as batches of 8 and 4 would give.
    schedule = CountingSchedule()
    accumulated, stats = _train(_batches(12, 4), accum_steps=2, schedule=schedule, updates_done=10)
    whole, _ = _train(_batches(12, 8), accum_steps=1)
    assert stats.updates == 2 and schedule.updates == [11, 12]  # counted on from earlier epochs
    for a, b in zip(accumulated.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b)
    assert [accumulation_group(step, 3, 2) for step in range(3)] == [2, 2, 1]
    assert [accumulation_group(step, 1, 4) for step in range(1)] == [1]


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(schedule, optimizer, updates: int) -> list[float]:
    lrs = []
    for n in range(1, updates + 1):
        schedule.step_update(n)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("name", ["cosine", "step", "plateau"])
def test_warmup_rises_linearly_per_update_from_one_hundredth(name):
    optimizer = _optimizer()
    schedule = create_schedule(name, optimizer, epochs=6, updates_per_epoch=5, warmup_epochs=2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    lrs = _lrs(schedule, optimizer, 12)  # the two warm-up epochs, update by update, and two more
    assert lrs[:9] == pytest.approx([0.01 + 0.99 * n / 10 for n in range(1, 10)])
    no_warmup_optimizer = _optimizer()  # after the warm-up: the schedule as if there had been none
    no_warmup = _lrs(create_schedule(name, no_warmup_optimizer, epochs=6, updates_per_epoch=5), no_warmup_optimizer, 12)
    assert lrs[9:] == pytest.approx(no_warmup[9:])


def test_cosine_decays_smoothly_per_update_to_zero():
    optimizer = _optimizer()
    schedule = create_schedule("cosine", optimizer, epochs=4, updates_per_epoch=5)
    lrs = _lrs(schedule, optimizer, 20)
    assert all(b < a for a, b in itertools.pairwise(lrs))  # moves every update, not once an epoch
    assert lrs[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 20)))
    assert lrs[-1] < 0.01


def test_step_drops_tenfold_after_each_third_of_the_run():
    optimizer = _optimizer()
    schedule = create_schedule("step", optimizer, epochs=6, updates_per_epoch=5)
    lrs = _lrs(schedule, optimizer, 30)
    assert lrs[8] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.1)  # update 10 = end of epoch 2
    assert lrs[19] == pytest.approx(0.01)


def test_plateau_drops_after_patience_and_its_whole_state_resumes():
    optimizer = _optimizer()
    schedule = create_schedule("plateau", optimizer, epochs=10, updates_per_epoch=5)
    assert isinstance(schedule, WarmupPlateau)
    for epoch, f1 in enumerate([0.5, 0.6, 0.6], start=1):  # one epoch without a better macro-F1
        schedule.step_update(epoch * 5)
        schedule.step(epoch, f1)
    resumed_optimizer = _optimizer()
    resumed = create_schedule("plateau", resumed_optimizer, epochs=10, updates_per_epoch=5)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(schedule.state_dict())
    for run, opt in ((schedule, optimizer), (resumed, resumed_optimizer)):
        run.step(4, 0.6)  # the second epoch without improvement: patience 2 is used up only if remembered
        assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
        run.step(5, 0.6)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_plateau_waits_for_the_warmup_to_end():
    optimizer = _optimizer()
    schedule = create_schedule("plateau", optimizer, epochs=10, updates_per_epoch=5, warmup_epochs=3)
    for epoch in range(1, 4):
        schedule.step_update(epoch * 5 - 1)
        schedule.step(epoch, 0.1)  # no improvement at all, but still warming up
    schedule.step_update(15)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)


def _state_dict_file(tmp_path, name: str, seed: int):
    import timm

    torch.manual_seed(seed)
    source = timm.create_model(name)  # a 1000-class head, as a hub checkpoint would have
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)
    return source.state_dict(), path


def test_pretrained_file_loads_the_local_weights_and_a_new_head(tmp_path):
    from training.models import create_model

    weights, path = _state_dict_file(tmp_path, "test_efficientnet", seed=123)
    model = create_model(FitConfig(model="test_efficientnet", pretrained_file=str(path)), num_classes=18)
    loaded = model.state_dict()
    backbone = [k for k in weights if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(loaded[k], weights[k]) for k in backbone)
    assert loaded["classifier.weight"].shape == (18, weights["classifier.weight"].shape[1])


def test_pretrained_file_for_another_model_is_a_clear_error(tmp_path):
    from training.models import create_model

    _, path = _state_dict_file(tmp_path, "test_resnet", seed=0)
    with pytest.raises(ValueError, match="does not load into test_efficientnet"):
        create_model(FitConfig(model="test_efficientnet", pretrained_file=str(path)), num_classes=18)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not weights")
    with pytest.raises(ValueError, match="does not load into test_efficientnet"):
        create_model(FitConfig(model="test_efficientnet", pretrained_file=str(garbage)), num_classes=18)


def test_freeze_backbone_trains_the_classifier_only():
    from training.models import create_model

    torch.manual_seed(0)
    model = create_model(FitConfig(model="test_efficientnet", freeze_backbone=True), num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    train_one_epoch(model, ListFeeder(_batches(16, 8)), optimizer, nn.CrossEntropyLoss(), 0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}  # no backbone weight, no running statistic
    assert model.training  # the loop's train() still holds for the head (and dropout)


def test_resampled_feeder_draws_a_balanced_set_each_epoch(tmp_path):
    from feeding import FeedConfig, Samples, eval_spec
    from tests.conftest import CLASS_TINTS, textured_image
    from feeding.resampled import ResampledFeeder
    from training.sampling import balanced_indices

    rng = np.random.default_rng(0)
    labels = np.array([0] * 12 + [1] * 3 + [2] * 1, dtype=np.int64)
    paths = []
    for i, label in enumerate(labels):
        paths.append(str(tmp_path / f"{i}.jpg"))
        textured_image(rng, CLASS_TINTS[label], 32, 32).save(paths[-1])
    samples = Samples(np.array(paths), labels, np.arange(len(labels), dtype=np.int64), ("a", "b", "c"),
                      str(tmp_path), "imagefolder")
    config = FeedConfig(pipeline="pil", batch_size=4, workers=0, spec=eval_spec((16, 16)))
    with ResampledFeeder(samples, config, lambda epoch: balanced_indices(labels, 0, epoch)) as feeder:
        epochs = []
        for epoch in range(3):
            feeder.set_epoch(epoch)
            epochs.append(torch.cat([y for _, y in feeder]).numpy())
        assert len(feeder) == 4 and all(len(e) == 16 for e in epochs)
    counts = np.bincount(np.concatenate(epochs), minlength=3)
    assert counts.min() > 0.5 * counts.max()  # unbalanced, class 0 would have 12x class 2's share
    assert not all(np.array_equal(np.sort(epochs[0]), np.sort(e)) for e in epochs[1:])  # redrawn
