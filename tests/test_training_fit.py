"""training.fit end to end on a tiny model and the 6-person sample: checkpoints, logs, resume
(in-process interruption and SIGKILL), `--pipeline best` refusals, checkpoint errors, losses."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training import checkpoint as checkpoint_module
from training.fit import main
from training.losses import FocalLoss, class_weights

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_training_fit:tiny_net"
SLOW_TINY = "tests.test_training_fit:slow_tiny_net"
METRIC_KEYS = ("epoch", "loss", "lr", "macro_f1", "accuracy")  # everything but the timings


def tiny_net(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


class _Slow(nn.Module):
    """Sleeps in forward, so a subprocess can be killed in the middle of an epoch; same maths."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.15)
        return x


def slow_tiny_net(num_classes: int) -> nn.Module:
    return nn.Sequential(_Slow(), *tiny_net(num_classes))


class _Constant(nn.Module):
    """Predicts class 0 for every image whatever it learns: validation macro-F1 never improves."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.logits * 0).expand(len(x), -1)


def constant_net(num_classes: int) -> nn.Module:
    return _Constant(num_classes)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from feeding.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("fit") / "sample", people=6, eval_people=0)


def fit_args(data: Path, out: Path, *extra: str, model: str = TINY, epochs: int = 2) -> list[str]:
    return ["--pipeline", "pil", "--data", str(data), "--model", model, "--epochs", str(epochs), "--size", "32",
            "--batch", "8", "--workers", "0", "--out", str(out), *extra]


def _metrics(out: Path) -> list[dict]:
    history = json.loads((out / "summary.json").read_text())["history"]
    return [{key: row[key] for key in METRIC_KEYS} for row in history]


def _assert_same_weights(out: Path, expected_out: Path) -> None:
    """Bit-identical final weights (compared in order: SLOW_TINY's keys are shifted by its sleep layer)."""
    weights = torch.load(out / "last.pt", weights_only=True)["model"].values()
    expected = torch.load(expected_out / "last.pt", weights_only=True)["model"].values()
    assert len(weights) == len(expected)
    for tensor, reference in zip(weights, expected):
        assert torch.equal(tensor, reference)


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory) -> tuple[Path, str]:
    """Two uninterrupted epochs; the output directory and what was printed."""
    out = tmp_path_factory.mktemp("straight")
    result = subprocess.run([sys.executable, "-m", "training.fit", *fit_args(data, out, model=SLOW_TINY)],
                            check=False, cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return out, result.stdout + result.stderr


def test_two_epochs_write_checkpoints_logs_and_plots(straight_run):
    out, printed = straight_run
    for name in ("best.pt", "last.pt", "confusion-last.png", "confusion-best.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "confusion-last.png").read_bytes().startswith(b"\x89PNG")
    epoch_lines = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    for line in epoch_lines:
        assert "macro-F1" in line and "data wait" in line and "img/s" in line
    assert "classes have no validation image" in printed  # 6 people cannot cover 18 classes
    assert "no applicable prediction" in printed
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_tensorboard_has_the_scalars_the_lr_of_every_update_and_a_grid_of_fed_images(straight_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = straight_run
    events = EventAccumulator(str(out / "tb")).Reload()
    per_epoch = json.loads((out / "summary.json").read_text())["train_images"] // 8  # batch 8, drop_last
    assert [e.step for e in events.Scalars("train/lr")] == list(range(1, 2 * per_epoch + 1))
    assert [e.step for e in events.Scalars("val/macro_f1")] == [per_epoch, 2 * per_epoch]  # the update axis
    for tag in ("train/loss", "val/accuracy", "feed/data_wait_fraction", "feed/images_per_sec"):
        assert len(events.Scalars(tag)) == 2, tag
    (grid,) = events.Images("train/fed_images")
    assert grid.width > 2 * 32 and grid.height >= 32  # several 32x32 images as the model was fed them


def test_resume_after_interruption_matches_an_uninterrupted_run(data, straight_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    saves = []
    real_save = checkpoint_module.save_checkpoint

    def save_then_stop(path, state):  # interrupt right after the first epoch's `last` checkpoint
        real_save(path, state)
        saves.append(Path(path).name)
        if saves.count("last.pt") == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_then_stop)
    assert main(fit_args(data, out)) == 130  # a Ctrl-C: a clean stop
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", real_save)
    assert main(fit_args(data, out, "--resume")) == 0
    straight_out, _ = straight_run
    assert _metrics(out) == _metrics(straight_out)
    _assert_same_weights(out, straight_out)


def test_early_stopping_on_validation_macro_f1(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(fit_args(data, out, "--early-stop-patience", "2", model="tests.test_training_fit:constant_net",
                      epochs=6)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 3  # epoch 1 sets the best; 2 and 3 do not beat it
    assert "early stop: no better macro-F1 for 2 epochs" in capsys.readouterr().out


RECIPE = ("--balanced", "--sched", "plateau", "--warmup-epochs", "1", "--accum-steps", "3", "--loss", "focal",
          "--opt", "adamp")


@pytest.mark.parametrize("steps, stop_after", [
    ((), 1),  # the epoch's end
    # 7 batches of 4, updates after batches 2, 4, 6, 7: the second stops at batch 4 of epoch 1
    (("--checkpoint-every", "1", "--batch", "4", "--accum-steps", "2"), 2),
])
def test_balanced_plateau_warmup_accumulation_resume_exactly(data, tmp_path, monkeypatch, steps, stop_after):
    straight = tmp_path / "straight"
    assert main(fit_args(data, straight, *RECIPE, *steps)) == 0
    history = json.loads((straight / "summary.json").read_text())["history"]
    assert history[0]["lr"] < history[1]["lr"] == pytest.approx(1e-3)  # warming up, per update, in epoch 1
    out = tmp_path / "interrupted"
    real_save = checkpoint_module.save_checkpoint
    saves = []

    def save_then_stop(path, state):
        real_save(path, state)
        if Path(path).name == "last.pt":
            saves.append(state.get("within_epoch"))
            if len(saves) == stop_after:
                raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_then_stop)
    assert main(fit_args(data, out, *RECIPE, *steps)) == 130
    assert (saves[-1] is None) == (not steps)  # a step checkpoint inside epoch 1 where one was asked for
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", real_save)
    assert main(fit_args(data, out, *RECIPE, *steps, "--resume")) == 0
    assert _metrics(out) == _metrics(straight)
    _assert_same_weights(out, straight)


def test_pretrained_file_and_frozen_backbone_end_to_end(data, tmp_path):
    import timm

    torch.manual_seed(7)
    weights = timm.create_model("test_efficientnet").state_dict()
    torch.save(weights, tmp_path / "weights.pth")
    out = tmp_path / "run"
    assert main(fit_args(data, out, "--pretrained-file", str(tmp_path / "weights.pth"), "--freeze-backbone",
                      model="test_efficientnet", epochs=1)) == 0
    trained = torch.load(out / "last.pt", weights_only=True)["model"]
    backbone = [k for k in weights if not k.startswith("classifier.")]
    assert all(torch.equal(trained[k], weights[k]) for k in backbone)  # weights and running statistics


@pytest.mark.gpu
def test_bf16_amp_on_cuda(data, tmp_path):
    out = tmp_path / "run"
    assert main(fit_args(data, out, "--device", "cuda", "--amp", model="test_efficientnet", epochs=1)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["amp"] and len(summary["history"]) == 1
    assert summary["step"] == {**summary["step"], "amp": True, "channels_last": True, "cudnn_benchmark": True}
    assert all(t.dtype == torch.float32 for t in torch.load(out / "last.pt", weights_only=True)["model"].values()
               if t.is_floating_point())  # autocast computes in bf16; the weights stay float32


def _best_args(data: Path, out: Path, recommendation: Path) -> list[str]:
    return ["--pipeline", "best", "--data", str(data), "--model", TINY, "--epochs", "1",
            "--out", str(out), "--recommendation", str(recommendation)]


def test_best_without_a_recommendation_exits_2_with_the_tune_command(data, tmp_path, capsys):
    assert main(_best_args(data, tmp_path / "out", tmp_path / "missing.json")) == 2
    err = capsys.readouterr().err
    assert "no recommendation" in err
    assert f"feedbench tune --data {data} --model {TINY} --device cpu" in err


def _recommendation(data: Path, **changes) -> dict:
    from feeding.machine import machine_info
    from feeding.sources import dataset_fingerprint
    from feeding.sources import discover

    from training.step import StepConfig

    record = {"pipeline": "pil", "workers": 0, "batch": 8, "size": [32, 32], "predicted_ips": 1000.0,
              "model": TINY, "device": "cpu", "machine": machine_info(),
              "dataset": dataset_fingerprint(discover(data)), "step": StepConfig.for_device("cpu").to_dict()}
    record.update(changes)
    return record


def test_best_with_a_recommendation_for_another_dataset_exits_2(data, tmp_path, capsys):
    record = _recommendation(data)
    record["dataset"] = {**record["dataset"], "paths_sha256": "0123456789abcdef", "images": 420}
    path = tmp_path / "recommendation.json"
    path.write_text(json.dumps(record))
    assert main(_best_args(data, tmp_path / "out", path)) == 2
    err = capsys.readouterr().err
    assert "dataset paths_sha256" in err and "feedbench tune" in err
    assert not (tmp_path / "out").exists()


def test_best_uses_a_matching_recommendation_and_reports_the_prediction(data, tmp_path, capsys):
    path = tmp_path / "recommendation.json"
    path.write_text(json.dumps(_recommendation(data)))
    assert main(_best_args(data, tmp_path / "out", path)) == 0
    printed = capsys.readouterr().out
    assert "feed pil, 0 workers, batch 8, 32x32" in printed
    assert "(predicted 1000.0:" in printed
    assert "predicted 1000.0 img/s" in printed and ("prediction held" in printed or "did not hold" in printed)


def test_resume_without_checkpoint_or_with_a_corrupt_one_is_a_clear_error(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(fit_args(data, out, "--resume")) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint at all")
    assert main(fit_args(data, out, "--resume")) == 2
    assert "is corrupt or not a checkpoint" in capsys.readouterr().err


def test_resume_with_another_model_or_class_count_is_a_clear_error(data, straight_run, tmp_path, capsys):
    state = torch.load(straight_run[0] / "last.pt", weights_only=True)
    out = tmp_path / "run"
    out.mkdir()
    checkpoint_module.save_checkpoint(out / "last.pt", {**state, "num_classes": 3})
    assert main(fit_args(data, out, "--resume", model=SLOW_TINY)) == 2
    assert "has 3 classes, but the data has 18" in capsys.readouterr().err
    checkpoint_module.save_checkpoint(out / "last.pt", state)
    assert main(fit_args(data, out, "--resume", model=TINY)) == 2
    assert f"is for model {SLOW_TINY!r}, not {TINY!r}" in capsys.readouterr().err


def test_an_empty_split_is_a_clear_error(data, tmp_path):
    import numpy as np

    from feeding.errors import FeedError
    from training.fit import config_from_args, fit, get_args_parser

    config = config_from_args(get_args_parser().parse_args(fit_args(data, tmp_path / "out")))
    with pytest.raises(FeedError, match="the validation split of .* is empty"):
        fit(config, split=(np.arange(42), np.array([], dtype=np.int64)))


@pytest.mark.parametrize("args, message", [
    (["--val-fraction", "0.1"], "has 6 people (or groups): holding out 0.1 of them needs at least 10"),
    (["--batch", "64"], "batch 64 > 28 usable images"),
    (["--epochs", "0"], "epochs must be"),
    (["--amp"], "CUDA only"),
    (["--cudnn-benchmark"], "cudnn_benchmark (cuDNN's autotuner) is for CUDA only"),
    (["--val-fraction", "1.5"], "val_fraction"),
    (["--model", "no_such_model_xyz"], "unknown timm model"),
])
def test_bad_input_exits_2_with_a_message(data, tmp_path, capsys, args, message):
    assert main(fit_args(data, tmp_path / "out", *args)) == 2
    assert message in capsys.readouterr().err


def test_focal_loss_is_cross_entropy_at_gamma_0():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 18, generator=generator)
    target = torch.randint(0, 18, (16,), generator=generator)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target))
    assert FocalLoss(gamma=2.0)(logits, target) < F.cross_entropy(logits, target)


def test_class_weights_are_inverse_frequency_with_mean_one_per_image():
    import numpy as np

    labels = np.array([0, 0, 0, 1, 2, 2])
    weights = class_weights(labels, 4)
    torch.testing.assert_close(weights, torch.tensor([6 / 9, 6 / 3, 6 / 6, 0.0]))
    assert float(weights[torch.from_numpy(labels)].mean()) == pytest.approx(1.0)
