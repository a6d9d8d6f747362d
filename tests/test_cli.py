"""The ``feedbench`` command line: the real console script where it measures, its ``main`` in this process
where the parse, an error message or a written file is what is checked (a fresh interpreter costs ~2.5 s
a run here)."""
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


def _main(capsys, *args: str) -> subprocess.CompletedProcess:
    """``feedbench ARGS`` run by ``bench.cli.main`` here, as ``_run`` reports it (argparse's exit included)."""
    from bench.cli import main

    try:
        code = main(list(args))
    except SystemExit as exited:
        code = int(exited.code or 0)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["feedbench", *args], code, captured.out, captured.err)


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
    assert record["images"] == record["batches"] * 8 >= 2 * 2 * 8  # windows may be lengthened to the read-ahead
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
def test_bad_arguments_give_a_clear_message_and_nonzero_exit(args, message, capsys):
    result = _main(capsys, *args)
    assert result.returncode == 2
    assert message in result.stderr


COMMANDS = ("feedbench [run]", "feedbench tune", "feedbench compare", "feedbench data sample", "feedbench data inspect")


def test_help_lists_every_command_once_and_shows_defaults(capsys):
    result = _main(capsys, "--help")
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    for command in COMMANDS:
        assert sum(line.startswith(command + " ") for line in lines) == 1, command
    assert "(default: pil)" in result.stdout and "(default: 224)" in result.stdout
    assert "``" not in result.stdout


def _help(capsys, *argv: str) -> str:
    from bench.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_data_help_lists_sample_and_inspect_and_inspect_has_its_own_options(capsys):
    data_help = _help(capsys, "data", "--help")
    assert "{sample,inspect}" in data_help
    listed = [line.split()[0] for line in data_help.splitlines() if line.startswith("    ") and line[4] != " "]
    assert listed == ["sample", "inspect"]  # one entry each (continuation lines are indented further)
    inspect_help = _help(capsys, "data", "inspect", "--help")
    assert "usage: feedbench data inspect" in inspect_help
    assert "--max-pixels" in inspect_help and "(default: results)" in inspect_help
    assert "height x width" in _help(capsys, "run", "--help")  # 'run' is the default command, spelled out


def _options(parser, name: str):
    """(command, option, help) of every option of ``parser`` and of its sub-commands."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _options(sub, f"{name} {sub_name}")
        elif not isinstance(action, argparse._HelpAction):
            yield name, action.option_strings or [action.dest], action.help


def test_every_option_has_help_text_without_rst_markup():
    from bench.cli import make_data_parser, make_run_parser

    options = [*_options(make_run_parser(), "feedbench"), *_options(make_data_parser(), "feedbench data")]
    assert {name for name, _, _ in options} == {"feedbench", "feedbench data sample", "feedbench data inspect"}
    assert [(name, flags) for name, flags, text in options if not text] == []
    assert [(name, flags) for name, flags, text in options if "``" in text] == []
    for parser in (make_run_parser(), make_data_parser()):
        assert "``" not in parser.format_help()


def test_on_bad_reaches_the_manifest_reading(image_folder, tmp_path, capsys):
    """A label typo in the user's manifest: fail names the row; skip leaves the row out and reports it."""
    manifest = tmp_path / "labels.csv"
    rows = [f"{image_folder / f'class{i % 2}' / f'img{i:03d}.jpg'},{i % 2}" for i in range(8)]
    rows[1] = rows[1].rsplit(",", 1)[0] + ",kitty"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    common = ["--pipeline", "pil", "--batch", "2", "--workers", "0", "--data", str(manifest), "--size", "32",
              "--batches", "1", "--repeats", "1", "--warmup", "0"]
    failed = _main(capsys, *common, "--on-bad", "fail")
    assert failed.returncode == 2
    assert f"{manifest}:3: label 'kitty'" in failed.stderr and "Traceback" not in failed.stderr
    out = tmp_path / "skip.json"
    skipped = _main(capsys, *common, "--on-bad", "skip", "--json", str(out))
    assert skipped.returncode == 0, skipped.stderr
    assert f"skipped: {manifest}:3: label 'kitty'" in skipped.stdout
    record = json.loads(out.read_text())
    assert [r["path"] for r in record["skipped"]] == [f"{manifest}:3"] and record["dataset_images"] == 7


def test_notes_are_warnings_on_stderr_and_kept_in_the_json(sample_dir, tmp_path):
    out = tmp_path / "noted.json"
    # 42 images in batches of 32 make one batch an epoch: the second worker has nothing to do.
    result = _run("--pipeline", "pil", "--executor", "process", "--workers", "2", "--batch", "32", "--data",
                  str(sample_dir), "--size", "32", "--batches", "1", "--repeats", "1", "--warmup", "0",
                  "--json", str(out))
    assert result.returncode == 0, result.stderr
    note = "2 workers for 1 batches per epoch: 1 of them have no batch to make"
    assert f"warning: {note}" in result.stderr.splitlines()
    assert note not in result.stdout
    assert note in json.loads(out.read_text())["notes"]
    assert "workers: 2 worker processes" in result.stdout and "processs" not in result.stdout


def test_data_sample_writes_the_competition_layout(tmp_path, capsys):
    result = _main(capsys, "data", "sample", str(tmp_path / "s"), "--people", "3", "--eval-people", "1")
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


@pytest.mark.parametrize("pipeline", ["albumentations", "dali"])  # a host pipeline (pil's shares its code) and DALI
def test_on_bad_skip_and_fail_from_the_command_line(pipeline, messy_competition, tmp_path, capsys):
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    root, broken = messy_competition
    common = ["--pipeline", pipeline, "--batch", "4", "--workers", "2", "--data", str(root), "--size", "64",
              "--batches", "2", "--repeats", "1", "--warmup", "0"]
    out = tmp_path / "skip.json"
    skipped = _main(capsys, *common, "--on-bad", "skip", "--json", str(out))
    assert skipped.returncode == 0, skipped.stderr
    assert f"skipped: {broken}" in skipped.stdout
    assert [r["path"] for r in json.loads(out.read_text())["skipped"]] == [str(broken)]
    failed = _main(capsys, *common, "--on-bad", "fail")
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
