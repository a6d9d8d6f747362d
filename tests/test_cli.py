"""Smoke tests of the real ``feedbench`` console script."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FEEDBENCH = Path(sys.executable).parent / "feedbench"


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    if not FEEDBENCH.exists():
        pytest.fail(f"console script missing at {FEEDBENCH}: is the package installed (pip install -e .)?")
    return subprocess.run([str(FEEDBENCH), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("pipeline", ["pil", "albumentations", "dali"])
def test_feedbench_measures_and_writes_json(pipeline, sample_dir, tmp_path):
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    out = tmp_path / "result.json"
    result = _run("--pipeline", pipeline, "--batch", "8", "--workers", "2", "--data", str(sample_dir),
                  "--size", "96", "--batches", "2", "--repeats", "2", "--warmup", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "img/s median" in result.stdout
    record = json.loads(out.read_text())
    for key in ("pipeline", "workers", "batch", "size", "images", "images_per_sec", "skipped", "pil_build"):
        assert key in record
    assert record["pipeline"] == pipeline and record["size"] == [96, 96]
    assert record["images"] == 2 * 2 * 8
    rate = record["images_per_sec"]
    assert 0 < rate["min"] <= rate["median"] <= rate["max"]
    assert record["pil_build"]["distribution"]
    assert record["commit"]["id"] is None or len(record["commit"]["id"]) == 40


@pytest.mark.parametrize("args,message", [
    (["--pipeline", "tensorflow"], "invalid choice"),
    (["--size", "0"], "size"),
    (["--batch", "-1"], ">= 1"),
    (["--data", "/nonexistent/data"], "does not exist"),
])
def test_bad_arguments_give_a_clear_message_and_nonzero_exit(args, message):
    result = _run(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_data_sample_writes_the_competition_layout(tmp_path):
    result = _run("data", "sample", str(tmp_path / "s"), "--people", "3", "--eval-people", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s" / "train" / "train.csv").is_file()


@pytest.fixture(scope="module")
def messy_competition(tmp_path_factory):
    """The sample layout with one truncated JPEG, one odd (grayscale PNG named .jpg) and one stray file."""
    from PIL import Image

    from feeding.sample import write_sample

    root = write_sample(tmp_path_factory.mktemp("messy") / "data", people=3, seed=1, eval_people=0)
    people = sorted((root / "train" / "images").iterdir())
    broken = people[0] / "mask2.jpg"
    broken.write_bytes(broken.read_bytes()[:5000])
    odd = people[1] / "normal.jpg"
    Image.open(odd).convert("L").save(odd, format="PNG")
    (people[2] / "Thumbs.db").write_bytes(b"not an image")
    return root, broken


@pytest.mark.parametrize("pipeline", ["pil", "albumentations", "dali"])
def test_on_bad_skip_and_fail_from_the_command_line(pipeline, messy_competition, tmp_path):
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    root, broken = messy_competition
    common = ["--pipeline", pipeline, "--batch", "4", "--workers", "2", "--data", str(root), "--size", "64",
              "--batches", "2", "--repeats", "1", "--warmup", "0"]
    out = tmp_path / "skip.json"
    skipped = _run(*common, "--on-bad", "skip", "--json", str(out))
    assert skipped.returncode == 0, skipped.stderr
    assert f"skipped: {broken}" in skipped.stdout
    assert [r["path"] for r in json.loads(out.read_text())["skipped"]] == [str(broken)]
    failed = _run(*common, "--on-bad", "fail")
    assert failed.returncode == 2
    assert str(broken) in failed.stderr and "Traceback" not in failed.stderr


def test_isolate_measures_in_a_fresh_process(sample_dir, tmp_path):
    out = tmp_path / "isolated.json"
    result = _run("--pipeline", "pil", "--batch", "8", "--workers", "1", "--data", str(sample_dir), "--size", "64",
                  "--batches", "2", "--repeats", "1", "--isolate", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["images_per_sec"]["median"] > 0


def test_feeding_never_imports_dali_unless_chosen():
    import subprocess
    import sys

    code = ("import sys, feeding, feeding.factory, feeding.backends.host, feeding.backends.pil, "
            "feeding.backends.albu; print('nvidia.dali' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
