"""``--spec FILE``: the user's own augmentation, read from YAML or JSON, validated in one-line messages,
recorded in every result, and taken by feedbench, compare, tune, training.fit and training.predict."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from feeding.spec import (
    AugSpec,
    CenterCrop,
    ColorJitter,
    HorizontalFlip,
    Normalize,
    RandomResizedCrop,
    Resize,
    Rotate,
    eval_spec,
    train_spec,
)
from feeding.spec_file import (
    SpecFile,
    SpecFileError,
    describe_spec,
    load_spec_file,
    spec_from_record,
    spec_record,
)

GOOD_YAML = """\
train:
  - RandomResizedCrop: {size: 224, scale: [0.08, 1.0]}
  - HorizontalFlip: {p: 0.5}
  - ColorJitter: {brightness: 0.4, contrast: 0.4, saturation: 0.4}
  - Normalize: {}
eval:
  - Resize: {size: 256}
  - CenterCrop: {size: 224}
  - Normalize: {}
"""
GOOD_TRAIN = AugSpec((RandomResizedCrop(224, scale=(0.08, 1.0)), HorizontalFlip(0.5),
                      ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4), Normalize()))
GOOD_EVAL = AugSpec((Resize(256), CenterCrop(224), Normalize()))
# What the command tests run: small, so that a batch is quick on every backend.
SMALL_YAML = """\
train:
  - RandomResizedCrop: {size: 32, scale: [0.25, 1.0]}
  - HorizontalFlip
  - ColorJitter: {brightness: 0.2, contrast: 0.2, saturation: 0.2}
  - Normalize: {}
eval:
  - Resize: {size: 40}
  - CenterCrop: {size: 32}
  - Normalize: {}
"""
FEEDBENCH = Path(sys.executable).parent / "feedbench"


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small_spec(tmp_path) -> Path:
    return _write(tmp_path, SMALL_YAML, "small.yaml")


# ---------------------------------------------------------------- reading files


def test_a_yaml_file_gives_its_train_and_eval_specs(tmp_path):
    spec = load_spec_file(_write(tmp_path, GOOD_YAML))
    assert isinstance(spec, SpecFile) and spec.name == "spec.yaml"  # no machine's directories
    assert spec.train == GOOD_TRAIN and spec.eval == GOOD_EVAL
    assert spec.train.ops[0].scale == (0.08, 1.0)  # a YAML list, made the pair the op wants
    assert spec.train.output_size == spec.eval.output_size == (224, 224)


def test_a_json_file_gives_the_same_specs(tmp_path):
    import yaml

    path = _write(tmp_path, json.dumps(yaml.safe_load(GOOD_YAML)), "spec.json")
    assert load_spec_file(path) == SpecFile(GOOD_TRAIN, GOOD_EVAL, "spec.json")


def test_a_bare_name_or_an_empty_entry_takes_the_op_defaults(tmp_path):
    spec = load_spec_file(_write(tmp_path, "train:\n  - Resize: {size: [64, 48]}\n  - HorizontalFlip\n"
                                           "  - Rotate: {degrees: 5}\n  - Normalize:\n"))
    assert spec.train == AugSpec((Resize((64, 48)), HorizontalFlip(), Rotate(5), Normalize()))


def test_without_eval_the_eval_spec_is_the_deterministic_default_with_the_train_normalize(tmp_path):
    spec = load_spec_file(_write(tmp_path, "train:\n  - RandomResizedCrop: {size: [96, 64]}\n"
                                           "  - Normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}\n"))
    assert spec.eval == AugSpec((Resize((96, 64)), Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))))
    assert spec.eval.is_deterministic
    assert load_spec_file(_write(tmp_path, "train:\n  - CenterCrop: {size: 64}\n")).eval == eval_spec((64, 64))


def test_the_record_is_json_and_loads_back_to_the_same_spec(tmp_path):
    spec = load_spec_file(_write(tmp_path, GOOD_YAML))
    record = json.loads(json.dumps(spec.record()))
    assert record["train"][0] == {"RandomResizedCrop": {"size": [224, 224], "scale": [0.08, 1.0],
                                                        "ratio": [3 / 4, 4 / 3]}}
    assert spec_from_record(record["train"]) == spec.train and spec_from_record(record["eval"]) == spec.eval
    benchmark = train_spec((64, 48), degrees=7.5)
    assert spec_from_record(json.loads(json.dumps(spec_record(benchmark)))) == benchmark
    assert describe_spec(benchmark) == "Rotate(degrees=7.5) -> Resize(size=(64, 48)) -> HorizontalFlip() -> Normalize()"


BAD = [
    ("train:\n  - Resize: {size: 64}\n  - HorizontalFlip\n  - ColourJitter: {brightness: 0.1}\n",
     ["spec.yaml", "train[2]", "unknown op 'ColourJitter'", "ColorJitter"]),
    ("train:\n  - RandomResizedCrop: {size: 64, scales: [0.1, 1]}\n",
     ["spec.yaml", "train[0] RandomResizedCrop", "unknown field 'scales'", "fields: size, scale, ratio"]),
    ("train:\n  - RandomResizedCrop: {size: 64, scale: [0.5, 2.0]}\n",
     ["train[0]", "RandomResizedCrop.scale", "<= 1"]),
    ("train:\n  - RandomResizedCrop: {scale: [0.5, 1.0]}\n", ["train[0] RandomResizedCrop", "missing field(s) 'size'"]),
    ("train:\n  - Resize: {size: 64}\n  - HorizontalFlip: {p: 2}\n", ["train[1]", "HorizontalFlip.p"]),
    ("train:\n  - Resize: {size: 64}\n  - Normalize: {mean: 0.5}\n", ["train[1] Normalize(mean=0.5)"]),
    ("train:\n  - Resize: 64\n", ["train[0] Resize", "must be a mapping"]),
    ("train:\n  - {Resize: {size: 64}, HorizontalFlip: {}}\n", ["train[0]", "one-entry mapping"]),
    ("train:\n  - Resize: {size: [64, 64]}\neval:\n  - Normalize\n  - Resize: {size: [64, 64]}\n",
     ["spec.yaml: eval:", "Normalize may appear once"]),
    ("train:\n  - Resize: {size: 64}\n", ["spec.yaml: train:", "keeps each image's aspect ratio"]),
    ("train: []\n", ["spec.yaml: train:", "fix the output size"]),
    ("train: {Resize: {size: 64}}\n", ["spec.yaml: train", "list of ops"]),
    ("train:\n  - Resize: {size: 64}\ntest:\n  - Resize: {size: 64}\n", ["unknown section(s) 'test'"]),
    ("eval:\n  - Resize: {size: [64, 64]}\n", ["no train: section"]),
    ("- Resize: {size: 64}\n", ["expected a mapping"]),
    ("", ["an empty file"]),
    ("train:\n  - Resize: {size: [64, 64]\n  - HorizontalFlip\n", ["spec.yaml: line 2", "YAML syntax error"]),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_each_problem_is_one_line_naming_where_it_is(text, expected, tmp_path):
    with pytest.raises(SpecFileError) as raised:
        load_spec_file(_write(tmp_path, text))
    message = str(raised.value)
    assert "\n" not in message and isinstance(raised.value, ValueError)
    for part in expected:
        assert part in message, (part, message)


def test_a_missing_file_a_bad_suffix_and_bad_json_are_one_line_too(tmp_path):
    cases = [(tmp_path / "missing.yaml", "no such spec file"),
             (_write(tmp_path, GOOD_YAML, "spec.txt"), ".yaml, .yml, .json"),
             (_write(tmp_path, '{"train": [\n  {"Resize": }]}', "spec.json"), "spec.json: line 2: JSON syntax error")]
    for path, expected in cases:
        with pytest.raises(SpecFileError, match=None) as raised:
            load_spec_file(path)
        assert expected in str(raised.value) and "\n" not in str(raised.value)


# ---------------------------------------------------------------- feedbench [run]


def test_feedbench_with_a_bad_spec_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = _write(tmp_path, "train:\n  - ColourJitter: {}\n", "bad.yaml")
    result = subprocess.run([str(FEEDBENCH), "--spec", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ColourJitter" in lines[0] and "bad.yaml: train[0]" in lines[0]


@pytest.mark.parametrize("extra", [["--size", "64"], ["--rotate", "5"]])
def test_feedbench_refuses_size_or_rotate_beside_a_spec(extra, small_spec, capsys):
    from bench.cli import main

    assert main(["--spec", str(small_spec), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"drop {extra[0]}" in err


@pytest.mark.parametrize("pipeline", ["pil", "albumentations", "dali"])
def test_feedbench_runs_the_spec_and_records_it(pipeline, small_spec, sample_dir, tmp_path, capsys):
    from bench.cli import main

    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    out = tmp_path / "result.json"
    assert main(["--spec", str(small_spec), "--pipeline", pipeline, "--batch", "8", "--workers", "0",
                 "--batches", "1", "--repeats", "1", "--warmup", "0", "--data", str(sample_dir),
                 "--json", str(out)]) == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["size"] == [32, 32] and record["spec_file"] == "small.yaml"
    assert spec_from_record(record["spec"]["train"]) == load_spec_file(small_spec).train


# ---------------------------------------------------------------- compare and tune


def test_the_naive_row_runs_the_spec_with_torchvision():
    from bench.compare.reference import naive_description, torchvision_steps

    steps, missing = torchvision_steps(GOOD_TRAIN)
    assert [type(step).__name__ for step in steps] == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter",
                                                       "ToTensor", "Normalize"] and missing == ()
    assert tuple(steps[0].scale) == (0.08, 1.0) and tuple(steps[2].brightness) == pytest.approx((0.6, 1.4))
    assert "leaves" not in naive_description(GOOD_TRAIN)


def test_compare_runs_every_row_on_the_spec_and_records_it(small_spec, sample_dir, tmp_path, capsys):
    from bench.compare import compare_main

    out = tmp_path / "results"
    code = compare_main(["--data", str(sample_dir), "--spec", str(small_spec), "--pipelines", "naive,pil",
                         "--workers-max", "1", "--batch", "4", "--batches", "2", "--repeats", "1", "--warmup", "1",
                         "--rounds", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (path,) = out.glob("compare-*-small-32-b4-*c.json")  # the spec file is in the run's conditions
    report = json.loads(path.read_text())
    assert report["spec_file"] == "small.yaml" and report["spec"]["size"] == [32, 32]
    assert spec_from_record(report["spec"]["train"]) == load_spec_file(small_spec).train
    assert any("torchvision RandomResizedCrop, RandomHorizontalFlip, ColorJitter" in note for note in report["notes"])
    assert "RandomResizedCrop(size=(32, 32)" in path.with_suffix(".md").read_text()
    assert compare_main(["--spec", str(small_spec), "--size", "64", "--out", str(out)]) == 2
    assert "drop --size" in capsys.readouterr().err


@pytest.fixture
def tune_without_measuring(monkeypatch):
    """Every tune measurement made up (feed img/s grows with workers, the model 300 img/s); the
    feeds' specs are kept, to see what they ran."""
    from bench.tune import measure as tune_measure
    from bench.tune.forecast import ConsumePoint, FeedPoint

    specs = []

    def feed_point(samples, config, batches, device, threads, channels_last):
        specs.append(config.spec)
        return FeedPoint(100.0 + config.workers), ()

    monkeypatch.setattr(tune_measure, "feed_point", feed_point)
    monkeypatch.setattr(tune_measure, "consume_point", lambda config: ConsumePoint(300.0))
    end_to_end = {"measured_ips": 100.0, "data_wait_fraction": 0.1, "batches": 3, "seconds": 0.9, "epochs": 2,
                  "model_threads": 1, "decode_device": "cpu", "notes": [], "step": {}}
    monkeypatch.setattr(tune_measure, "check_end_to_end", lambda config, samples, best: (end_to_end, []))
    monkeypatch.setattr(tune_measure, "loader_stage", lambda config, samples, best: "decode")
    return specs


def test_tune_measures_the_spec_at_its_shape_only(tune_without_measuring, small_spec, sample_dir, tmp_path,
                                                  capsys):
    from bench.tune import tune_main

    out = tmp_path / "results"
    assert tune_main(["--data", str(sample_dir), "--spec", str(small_spec), "--model", "tests.test_tune:tiny_net",
                      "--workers-max", "2", "--batches", "4", "--pipelines", "pil", "--out", str(out)]) == 0
    spec = load_spec_file(small_spec)
    assert tune_without_measuring and all(measured == spec.train for measured in tune_without_measuring)
    record = json.loads((out / "recommendation.json").read_text())
    assert record["size"] == [32, 32] and record["shape_fixed_by_spec"] is True and record["spec_file"] == "small.yaml"
    assert {tuple(row["size"]) for row in record["shape_profile"]["rows"]} == {(32, 32)}
    assert spec_from_record(record["spec"]["train"]) == spec.train
    stdout = capsys.readouterr().out
    assert "fixed by the spec small.yaml" in stdout and f"--spec {small_spec.name}" in stdout.splitlines()[-1]
    assert tune_main(["--data", str(sample_dir), "--spec", str(small_spec), "--sizes", "48", "--out", str(out)]) == 2
    assert "drop --sizes" in capsys.readouterr().err


# ---------------------------------------------------------------- training.fit and training.predict


def test_fit_trains_on_the_train_section_validates_on_eval_and_records_both(small_spec, sample_dir, tmp_path,
                                                                          capsys):
    from training.fit import main as fit_main
    from training.predict import main as predict_main

    out = tmp_path / "run"
    args = ["--pipeline", "pil", "--data", str(sample_dir), "--model", "tests.test_training_fit:tiny_net",
            "--epochs", "1", "--batch", "8", "--workers", "0", "--spec", str(small_spec), "--out", str(out)]
    assert fit_main(args) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    spec = load_spec_file(small_spec)
    assert summary["spec_file"] == "small.yaml" and summary["spec"] == spec.record()
    assert summary["config"]["spec"] == spec.record() and summary["config"]["size"] == [32, 32]
    assert "32x32 (spec small.yaml)" in capsys.readouterr().out
    assert fit_main([*args[:-2], "--size", "64", "--out", str(tmp_path / "other")]) == 2
    assert "drop --size" in capsys.readouterr().err
    # Prediction validates as the run did: the checkpoint's eval section, unless --spec gives another.
    predictions = tmp_path / "predictions.csv"
    assert predict_main(["--checkpoints", str(out), "--data", str(sample_dir / "eval"), "--out", str(predictions),
                         "--workers", "0", "--batch", "4"]) == 0
    assert json.loads(predictions.with_suffix(".json").read_text())["spec"] == {"eval": spec.record()["eval"]}
    other = _write(tmp_path, "train:\n  - Resize: {size: [24, 24]}\n", "other.yaml")
    assert predict_main(["--checkpoints", str(out), "--data", str(sample_dir / "eval"), "--out", str(predictions),
                         "--workers", "0", "--batch", "4", "--spec", str(other)]) == 0
    result = json.loads(predictions.with_suffix(".json").read_text())
    assert result["spec_file"] == "other.yaml" and result["spec"] == {"eval": spec_record(eval_spec((24, 24)))}
