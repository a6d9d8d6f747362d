"""``feeding.lightning.FeedDataModule`` under ``lightning.Trainer``: the example script's training for two
epochs on the CPU (tiny model, 6-person sample), the device-side normalization, the feeder state in
Lightning's checkpoints and an exact resume from an end-of-epoch one, and ``feedbench compare --loader``
on a data module."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lightning = pytest.importorskip("lightning")

from feeding.device import DeviceFeeder, normalize_uint8  # noqa: E402
from feeding.lightning import FeedDataConfig, FeedDataModule  # noqa: E402
from feeding.state import FeederStateError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_training_fit:tiny_net"
DATA_ENV = "FEEDBENCH_TEST_LIGHTNING_DATA"  # where make_datamodule (a --loader factory) finds the data
# torch's pytree deprecation, raised inside Lightning's CombinedLoader whatever the loader: not ours to fix
pytestmark = pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning")


def load_example():
    spec = importlib.util.spec_from_file_location("lightning_example", REPO / "scripts" / "lightning_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_args(example, data: Path, out: Path, *extra: str):
    return example.get_args_parser().parse_args(
        ["--data", str(data), "--model", TINY, "--size", "32", "--batch", "8", "--workers", "0", "--epochs", "2",
         "--lr", "0.02", "--seed", "2", "--pipeline", "albumentations", "--out", str(out), *extra])


def make_datamodule() -> FeedDataModule:
    """A ``--loader`` factory: a data module on the test's data."""
    return FeedDataModule(FeedDataConfig.at_size(32, data=os.environ[DATA_ENV], batch=8, workers=0))


class Seen(lightning.Callback):
    """What the model was given: the first training batch, and the validation macro-F1 after each epoch."""

    def __init__(self) -> None:
        self.first_batch = None
        self.val_macro_f1: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_batch is None:
            self.first_batch = [tensor.clone() for tensor in batch]

    def on_validation_end(self, trainer, pl_module) -> None:
        self.val_macro_f1.append(float(trainer.callback_metrics["val_macro_f1"]))


class StopAfterFirstEpoch(lightning.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def every_step(out) -> lightning.Callback:
    """A checkpoint after every batch, in OUT/steps/step=N.ckpt."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=Path(out) / "steps", filename="{step}", every_n_train_steps=1, save_top_k=-1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from feeding.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("lightning") / "six", people=6, eval_people=0)


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def trained(example, data, tmp_path_factory):
    """Two epochs of the example's training; (args, trainer, model, data module, what the model saw)."""
    args = example_args(example, data, tmp_path_factory.mktemp("run"))
    seen = Seen()
    trainer, model, datamodule = example.build(args, callbacks=(seen, every_step(args.out)))
    trainer.fit(model, datamodule=datamodule)
    return args, trainer, model, datamodule, seen


def fresh_datamodule(args) -> FeedDataModule:
    datamodule = FeedDataModule(FeedDataConfig.at_size(args.size, data=args.data, pipeline=args.pipeline,
                                                       batch=args.batch, workers=args.workers, seed=args.seed))
    datamodule.setup("fit")
    return datamodule


def test_two_epochs_log_the_validation_macro_f1_of_each(trained):
    from training.engine import evaluate

    args, trainer, model, datamodule, seen = trained
    assert trainer.current_epoch == 2 and trainer.global_step == 2 * len(datamodule.train_feeder)
    assert [epoch for epoch, _ in model.history] == [0, 1]
    assert [value for _, value in model.history] == pytest.approx(seen.val_macro_f1)
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as file:
        logged = {int(row["epoch"]): float(row["val_macro_f1"]) for row in csv.DictReader(file) if row["val_macro_f1"]}
    assert logged == pytest.approx(dict(model.history))
    # The last epoch's figure is torchmetrics' macro-F1 of the final model over the validation feed.
    fresh = fresh_datamodule(args)
    val_feed = DeviceFeeder(fresh.val_dataloader(), "cpu", normalize=fresh.config.eval_augmentation.normalize)
    recomputed = evaluate(model.net, val_feed, fresh.num_classes)
    assert recomputed.images == len(fresh.val_feeder.samples)
    assert model.history[-1][1] > 0  # seed 2: some validation images right, so the figures can differ
    assert recomputed.macro_f1 == pytest.approx(model.history[-1][1], abs=1e-6)
    fresh.teardown()


def test_the_model_gets_float_images_normalized_on_the_device_as_the_spec_says(trained):
    args, _, _, _, seen = trained
    images, labels = seen.first_batch
    assert images.dtype == torch.float32 and images.shape == (args.batch, 3, *args.size)
    fresh = fresh_datamodule(args)  # the same seed: the same first batch, still uint8
    raw_images, raw_labels = next(iter(fresh.train_dataloader()))
    fresh.teardown()
    assert raw_images.dtype == torch.uint8 and torch.equal(labels, raw_labels)
    norm = fresh.config.train_augmentation.normalize
    mean, std = torch.tensor(norm.mean).view(1, 3, 1, 1), torch.tensor(norm.std).view(1, 3, 1, 1)
    torch.testing.assert_close(images, (raw_images.float() / 255 - mean) / std, atol=1e-5, rtol=1e-5)
    assert torch.equal(images, normalize_uint8(raw_images, mean, std, torch.float32))


def test_the_state_after_training_is_the_train_feeders_and_restores_a_fresh_module(example, trained):
    args, _, _, datamodule, _ = trained
    state = datamodule.state_dict()
    assert state == datamodule.train_feeder.state_dict()
    assert (state["epoch"], state["batches"]) == (2, 0)
    saved = torch.load(example.last_checkpoint(args.out), weights_only=False)
    assert saved["FeedDataModule"] == state  # Lightning's checkpoint holds it under the class's name
    before, after = FeedDataModule(datamodule.config), FeedDataModule(datamodule.config)
    before.load_state_dict(state)  # before setup(), as Lightning may; kept until the feeder is built
    before.setup("fit")
    after.setup("fit")
    after.load_state_dict(state)
    for restored in (before, after):
        assert restored.train_feeder.next_start() == (2, 0) and restored.state_dict() == state
        restored.teardown()
    other = FeedDataModule(FeedDataConfig.at_size(args.size, data=args.data, batch=args.batch, workers=0, seed=1))
    other.setup("fit")
    with pytest.raises(FeederStateError, match="seed"):
        other.load_state_dict(state)
    other.teardown()


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")  # resuming there
def test_a_resume_from_an_end_of_epoch_checkpoint_ends_as_the_run_never_stopped(example, trained, data, tmp_path):
    _, _, uninterrupted, _, _ = trained
    args = example_args(example, data, tmp_path)
    trainer, model, datamodule = example.build(args, callbacks=(StopAfterFirstEpoch(),))
    trainer.fit(model, datamodule=datamodule)
    assert trainer.current_epoch == 1 and datamodule.state_dict()["epoch"] == 1
    args = example_args(example, data, tmp_path, "--resume")
    trainer, model, datamodule = example.build(args)
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(example.last_checkpoint(args.out)))
    assert trainer.current_epoch == 2 and [epoch for epoch, _ in model.history] == [1]
    assert model.history[-1][1] == pytest.approx(uninterrupted.history[-1][1])
    for name, value in uninterrupted.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[name], value), name


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resumed into another --out
def test_a_resume_from_the_middle_of_an_epoch_continues_the_feed_after_the_checkpoints_batch(
        example, trained, data, tmp_path):
    args, _, uninterrupted, datamodule, _ = trained
    batches = len(datamodule.train_feeder)
    checkpoint = Path(args.out) / "steps" / f"step={batches + 1}.ckpt"  # one batch into the second epoch
    saved = torch.load(checkpoint, weights_only=False)
    assert (saved["FeedDataModule"]["epoch"], saved["FeedDataModule"]["batches"]) == (1, 1)
    # Lightning keeps a stateful loader's state in its own loop state too, and loads it mid-epoch.
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [saved["FeedDataModule"]]
    trainer, model, resumed = example.build(example_args(example, data, tmp_path), callbacks=(every_step(tmp_path),))
    trainer.fit(model, datamodule=resumed, ckpt_path=str(checkpoint))
    assert trainer.global_step == 2 * batches and resumed.state_dict()["epoch"] == 2
    for name, value in uninterrupted.net.state_dict().items():  # tiny_net draws nothing at random
        assert torch.equal(model.net.state_dict()[name], value), name


def test_compare_measures_a_datamodules_training_loader_as_it_is(data, tmp_path, monkeypatch):
    from bench.compare import compare_main

    monkeypatch.setenv(DATA_ENV, str(data))
    monkeypatch.setenv("FEEDBENCH_CACHE", str(tmp_path / "cache"))
    factory = "tests.test_lightning:make_datamodule"
    code = compare_main(["--data", str(data), "--size", "32", "--batch", "8", "--batches", "2", "--repeats", "1",
                         "--warmup", "1", "--rounds", "1", "--workers-max", "1", "--pipelines", "naive",
                         "--loader", factory, "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert rows[factory]["failed"] is None and rows[factory]["images_per_sec"]["median"] > 0


def test_importing_feeding_and_the_cli_does_not_import_lightning():
    code = ("import sys, feeding, feeding.device, bench.cli, bench.compare; "
            "sys.exit('lightning' in sys.modules or 'pytorch_lightning' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
