"""training.fit runs the one training step (training.step) that feedbench tune measures: which
step a run takes (its flags, else the recommendation's, else the device's defaults), what it
records, what an override of the recommendation says, and the step's memory format and cuDNN
setting in the run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.test_training_fit import TINY, _recommendation, fit_args, tiny_net
from training.config import FitConfig
from training.fit import config_from_args, get_args_parser, main
from training.recommendation import applicable_predicted_rate, prediction_notes, resolve_feed, resolve_step
from training.step import StepConfig

PROBE = "tests.test_fit_step:probe_net"
SEEN: list[dict] = []  # what the probe saw, one entry per batch the model was given

RECOMMENDED = {"pipeline": "pil", "workers": 0, "batch": 8, "size": [32, 32], "predicted_ips": 500.0,
               "step": StepConfig(optimizer="sgd", lr=0.1, weight_decay=0.0, amp=True, channels_last=False,
                                  cudnn_benchmark=True, accum_steps=4, loss_every=3).to_dict()}


class _Probe(nn.Module):
    """Records, for each batch, whether the model is training, the batch's memory format and cuDNN's autotuner."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        SEEN.append({"training": self.training, "channels_last": x.is_contiguous(memory_format=torch.channels_last),
                     "cudnn_benchmark": torch.backends.cudnn.benchmark})
        return x


def probe_net(num_classes: int) -> nn.Module:
    return nn.Sequential(_Probe(), *tiny_net(num_classes))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from feeding.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("step") / "sample", people=6, eval_people=0)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _write_recommendation(path: Path, data: Path, **step_changes) -> Path:
    record = _recommendation(data, step={**StepConfig.for_device("cpu").to_dict(), **step_changes})
    path.write_text(json.dumps(record))
    return path


def _best_args(data: Path, out: Path, recommendation: Path, *extra: str) -> list[str]:
    return ["--pipeline", "best", "--data", str(data), "--model", TINY, "--epochs", "1", "--out", str(out),
            "--recommendation", str(recommendation), *extra]


# ---------------------------------------------------------------- which step: flags > recommendation > device


def test_without_a_recommendation_the_step_is_the_device_s_defaults():
    assert resolve_step(FitConfig(), None, "cpu") == StepConfig()
    cuda = resolve_step(FitConfig(), None, torch.device("cuda", 0))
    assert (cuda.amp, cuda.channels_last, cuda.cudnn_benchmark, cuda.loss_every) == (True, True, True, 1)


def test_the_recommendation_s_step_beats_the_device_defaults_and_the_run_keeps_its_own_optimizer():
    step = resolve_step(FitConfig(), RECOMMENDED, "cuda")
    assert (step.amp, step.channels_last, step.cudnn_benchmark, step.loss_every) == (True, False, True, 3)
    assert (step.optimizer, step.lr, step.weight_decay, step.accum_steps) == ("adamw", 1e-3, 0.05, 1)


def test_the_run_s_flags_beat_the_recommendation():
    config = FitConfig(amp=False, channels_last=True, cudnn_benchmark=False, loss_every=5, optimizer="sgd",
                       accum_steps=2)
    assert resolve_step(config, RECOMMENDED, "cuda") == StepConfig(
        optimizer="sgd", amp=False, channels_last=True, cudnn_benchmark=False, accum_steps=2, loss_every=5)


def test_the_step_flags_are_three_way_switches_and_a_count():
    parser = get_args_parser()
    unset = config_from_args(parser.parse_args([]))
    assert (unset.amp, unset.channels_last, unset.cudnn_benchmark, unset.loss_every) == (None, None, None, None)
    given = config_from_args(parser.parse_args(["--no-amp", "--channels-last", "--no-cudnn-benchmark",
                                                "--loss-every", "4"]))
    assert (given.amp, given.channels_last, given.cudnn_benchmark, given.loss_every) == (False, True, False, 4)
    with pytest.raises(ValueError, match="channels_last must be True, False or None"):
        FitConfig(channels_last=1)


def test_loss_every_0_is_refused_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as stop:
        get_args_parser().parse_args(["--loss-every", "0"])
    assert stop.value.code == 2
    assert "--loss-every: expected a number >= 1, got 0" in capsys.readouterr().err


# ---------------------------------------------------------------- overrides of the recommendation


def test_each_setting_that_differs_from_the_recommendation_is_a_note_and_the_prediction_does_not_apply():
    record = {**RECOMMENDED, "step": StepConfig.for_device("cpu").to_dict()}

    def judged(**settings):
        config = resolve_feed(FitConfig(pipeline="best", **settings), record)
        step = resolve_step(config, record, "cpu")
        return prediction_notes(config, step, record), applicable_predicted_rate(config, step, record)

    assert judged() == ([], 500.0)
    assert judged(lr=0.1, weight_decay=0.0) == ([], 500.0)  # what is learnt, not how fast
    assert judged(size=(64, 64), channels_last=True) == ([
        "note: --size 64x64 differs from the recommendation's 32x32: its prediction does not apply",
        "note: --channels-last differs from the recommendation's --no-channels-last: its prediction does not apply",
    ], None)
    assert judged(optimizer="sgd", accum_steps=2)[0] == [
        "note: --opt sgd differs from the recommendation's adamw: its prediction does not apply",
        "note: --accum-steps 2 differs from the recommendation's 1: its prediction does not apply",
    ]


# ---------------------------------------------------------------- fit --pipeline best end to end


def test_best_trains_with_the_recommendation_s_step_and_records_it(data, tmp_path, capsys):
    recommendation = _write_recommendation(tmp_path / "recommendation.json", data, loss_every=2)
    out = tmp_path / "out"
    assert main(_best_args(data, out, recommendation)) == 0
    printed = capsys.readouterr().out
    summary = _summary(out)
    assert summary["step"] == {**StepConfig.for_device("cpu").to_dict(), "loss_every": 2}
    (start,) = [line for line in printed.splitlines() if line.startswith("fit: ")]
    assert start.endswith("; step: adamw, fp32, NCHW, loss read every 2")
    assert "note: " not in printed
    assert summary["history"][0]["predicted_ips"] == 1000.0 and "predicted 1000.0 img/s" in summary["prediction"]


def test_an_override_of_the_recommendation_is_noted_and_its_prediction_does_not_apply(data, tmp_path, capsys):
    recommendation = _write_recommendation(tmp_path / "recommendation.json", data, loss_every=2)
    out = tmp_path / "out"
    assert main(_best_args(data, out, recommendation, "--loss-every", "4", "--batch", "4")) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert notes == ["note: --batch 4 differs from the recommendation's 8: its prediction does not apply",
                     "note: --loss-every 4 differs from the recommendation's 2: its prediction does not apply"]
    summary = _summary(out)
    assert summary["step"]["loss_every"] == 4
    assert summary["prediction"].startswith("no applicable prediction")
    assert [row["predicted_ips"] for row in summary["history"]] == [None]


def test_a_recommendation_without_a_step_is_refused_with_the_command_that_makes_a_new_one(data, tmp_path, capsys):
    record = _recommendation(data)
    del record["step"]  # made before tune recorded the step it measured
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record))
    assert main(_best_args(data, tmp_path / "out", path)) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert 'no "step"' in line and f"`feedbench tune --data {data} --model {TINY} --device cpu`" in line
    assert not (tmp_path / "out").exists()
    path.write_text(json.dumps({**record, "step": {"amp": "yes"}}))
    assert main(_best_args(data, tmp_path / "out", path)) == 2
    assert 'unreadable "step"' in capsys.readouterr().err


# ---------------------------------------------------------------- the step in the run


def test_channels_last_reaches_the_model_and_every_batch_trained_and_validated(data, tmp_path):
    SEEN.clear()
    out = tmp_path / "out"
    assert main(fit_args(data, out, "--channels-last", model=PROBE, epochs=1)) == 0
    assert {entry["training"] for entry in SEEN} == {True, False}  # training and validation batches
    assert all(entry["channels_last"] for entry in SEEN)
    weight = torch.load(out / "last.pt", weights_only=True)["model"]["1.weight"]  # the first convolution
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert _summary(out)["step"]["channels_last"] is True


def test_resuming_with_another_step_warns(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(fit_args(data, out, epochs=1)) == 0
    capsys.readouterr()
    assert main(fit_args(data, out, "--resume", "--loss-every", "3", epochs=2)) == 0
    assert "warning: the training step differs from the checkpoint's: loss_every: 3 here, 1 there" in \
        capsys.readouterr().err


@pytest.mark.gpu
def test_on_cuda_the_step_sets_cudnn_benchmark_for_the_run_and_restores_it(data, tmp_path):
    SEEN.clear()
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        assert main(fit_args(data, tmp_path / "out", "--device", "cuda", model=PROBE, epochs=1)) == 0
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = previous
    assert SEEN and all(entry["cudnn_benchmark"] and entry["channels_last"] for entry in SEEN)
    step = _summary(tmp_path / "out")["step"]
    assert (step["amp"], step["channels_last"], step["cudnn_benchmark"]) == (True, True, True)
