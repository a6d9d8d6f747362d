"""training.fit --logger tensorboard,wandb, offline: the W&B run holds what TensorBoard holds; a missing package
or an unknown logger is a one-line error."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from training.fit import main

wandb = pytest.importorskip("wandb")

TINY = "tests.test_training_fit:tiny_net"
SCALARS = ("train/lr", "train/loss", "train/epoch", "val/macro_f1", "val/accuracy", "feed/data_wait_fraction",
           "feed/images_per_sec")
BLOCK, CHUNK_HEADER, FILE_HEADER = 32768, 7, 7  # the .wandb file: a LevelDB-style log of Record protobufs
FULL, LAST = 1, 4


def read_wandb_records(path: Path) -> list:
    """The Records of a .wandb transaction log: a 7-byte file header (":W&B", magic, version), then 32 KiB
    blocks of chunks, each (crc32 u32, length u16, type u8) and its bytes; a record ends with a FULL or LAST
    chunk; a block's tail shorter than a chunk header is padding. (W&B's Go core writes it; 0.31 has no
    Python reader.)"""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", FILE_HEADER
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        pending += data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(records) -> dict[str, dict[int, object]]:
    """{key: {step: value}} from the history records; a media value's keys joined, e.g. "val/confusion/_type"."""
    history: dict[str, dict[int, object]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, {})[record.history.step.num] = json.loads(item.value_json)
    return history


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from feeding.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("wandb") / "sample", people=6, eval_people=0)


def fit_args(data: Path, out: Path, logger: str) -> list[str]:
    return ["--pipeline", "pil", "--data", str(data), "--model", TINY, "--epochs", "2", "--size", "32",
            "--batch", "8", "--workers", "0", "--out", str(out), "--logger", logger]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_offline_wandb_run_has_the_scalars_config_and_images_tensorboard_has(data, tmp_path, offline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(fit_args(data, out, "tensorboard,wandb")) == 0
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    records = read_wandb_records(run_file)
    history = wandb_history(records)
    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0}).Reload()
    assert set(SCALARS) <= set(events.Tags()["scalars"])
    for tag in SCALARS:
        expected = {e.step: e.value for e in events.Scalars(tag)}
        assert history[tag].keys() == expected.keys(), tag
        assert history[tag] == pytest.approx(expected, rel=1e-6), tag  # TensorBoard stores float32
    updates = json.loads((out / "summary.json").read_text())["history"][-1]
    assert updates["epoch"] == 2
    for tag in ("train/fed_images", "val/confusion"):  # both loggers have both pictures
        assert events.Images(tag), tag
        assert {value for value in history[f"{tag}/_type"].values()} == {"image-file"}, tag
    assert history["train/fed_images/_type"].keys() == {0}
    assert history["val/confusion/_type"].keys() == set(history["val/macro_f1"])
    (run,) = (r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "feedbench" and run.display_name == "run"
    assert run.run_id == (out / "wandb-run-id").read_text().strip()
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["model"] == TINY and config["loggers"] == ["tensorboard", "wandb"]
    assert config["step"]["optimizer"] == "adamw" and "feed_predicted_images_per_sec" in config


def test_wandb_without_the_package_is_a_one_line_hint(data, tmp_path, offline, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(fit_args(data, tmp_path / "run", "wandb")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[wandb]'" in err


def test_wandb_without_a_login_or_offline_mode_says_how(data, tmp_path, monkeypatch, capsys):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert main(fit_args(data, tmp_path / "run", "wandb")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "WANDB_MODE=offline" in err and "wandb login" in err


def test_an_unknown_logger_is_named(data, tmp_path, capsys):
    assert main(fit_args(data, tmp_path / "run", "tensorboard,mlflow")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'mlflow'" in err


def test_a_resumed_run_continues_the_same_wandb_run(data, tmp_path, offline):
    out = tmp_path / "run"
    args = fit_args(data, out, "tensorboard,wandb")
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    run_id = (out / "wandb-run-id").read_text().strip()
    first, second = sorted(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert first.name == second.name == f"run-{run_id}.wandb"
    resumed = wandb_history(read_wandb_records(second))["val/macro_f1"]
    assert list(resumed) == [max(wandb_history(read_wandb_records(first))["val/macro_f1"]) * 2]
