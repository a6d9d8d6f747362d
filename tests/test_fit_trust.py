"""training.fit on a user's own data fails loudly, never silently: run directories are never written
over, a resumed run's schedule follows its new length, pretrained files that fit nothing are refused,
Ctrl-C stops cleanly, a one-class data set is refused, skipped files and feed warnings are reported."""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_training_fit import REPO, SLOW_TINY, TINY, fit_args
from training.config import FitConfig
from training.fit import get_args_parser, main
from training.models import create_model
from training.runs import RunDirectoryError, choose_run_dir, run_files

CONSTANT = "tests.test_training_fit:constant_net"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from feeding.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("trust") / "sample", people=6, eval_people=0)


def _without_out(data: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["--pipeline", "pil", "--data", str(data), "--model", TINY, "--epochs", str(epochs), "--size", "32",
            "--batch", "8", "--workers", "0", *extra]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# ---------------------------------------------------------------- 1. run directories


def test_without_out_a_new_run_takes_the_next_free_directory_and_resume_the_newest(data, tmp_path, monkeypatch,
                                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "runs" / "fit" / "summary.json"  # an earlier run, as far as the directory shows
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"epochs_run": 10}')
    assert main(_without_out(data)) == 0
    assert capsys.readouterr().out.splitlines()[0] == ("run directory: runs/fit-2 (runs/fit holds an earlier run; "
                                                       "--out names another)")
    assert main(_without_out(data, "--resume", epochs=2)) == 0
    assert capsys.readouterr().out.splitlines()[0] == ("run directory: runs/fit-2 (resuming the newest run of "
                                                       "runs/fit*)")
    assert _summary(tmp_path / "runs/fit-2")["epochs_run"] == 2
    assert earlier.read_text() == '{"epochs_run": 10}' and sorted(earlier.parent.iterdir()) == [earlier]


def test_an_explicit_out_that_holds_a_run_is_refused_without_resume(data, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "fold1").mkdir(parents=True)
    (out / "fold1" / "best.pt").write_bytes(b"a fold's checkpoint")
    for extra in ((), ("--folds", "2")):
        assert main(fit_args(data, out, *extra)) == 2
        (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert f"{out} already holds a run (fold1/best.pt); pass --resume to continue it, or another --out" in line
    assert (out / "fold1" / "best.pt").read_bytes() == b"a fold's checkpoint"


def test_choose_run_dir_skips_runs_and_resumes_the_newest_last_checkpoint(tmp_path):
    base = tmp_path / "runs" / "fit"
    for name, files in (("fit", ["summary.json"]), ("fit-2", ["last.pt"]), ("fit-4", ["fold0/last.pt"])):
        for file in files:
            (base.parent / name / file).parent.mkdir(parents=True, exist_ok=True)
            (base.parent / name / file).write_bytes(b"x")
    (base.parent / "fit-3").mkdir()  # exists, but holds no run: free
    assert choose_run_dir(None, str(base), resume=False, folds=False)[0] == base.parent / "fit-3"
    assert run_files(base.parent / "fit-4") == ["fold0/last.pt"]
    os.utime(base.parent / "fit-2" / "last.pt", (1e9, 1e9))
    assert choose_run_dir(None, str(base), resume=True, folds=False)[0] == base.parent / "fit-2"
    assert choose_run_dir(None, str(base), resume=True, folds=True)[0] == base.parent / "fit-4"
    with pytest.raises(RunDirectoryError, match="no run with a last.pt in"):
        choose_run_dir(None, str(tmp_path / "elsewhere" / "fit"), resume=True, folds=False)


# ---------------------------------------------------------------- 2. resume beyond the planned schedule


@pytest.fixture(scope="module")
def two_epoch_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("planned") / "run"
    assert main(fit_args(data, out)) == 0
    return out


def test_resume_with_more_epochs_stretches_the_cosine_schedule(data, two_epoch_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(two_epoch_run, out)
    assert main(fit_args(data, out, "--resume", epochs=4)) == 0
    printed = capsys.readouterr().out
    summary = _summary(out)
    per_epoch = summary["train_images"] // 8  # updates per epoch: batch 8, drop_last
    assert f"schedule extended from 2 to 4 epochs: lr 5.00e-04 at update {2 * per_epoch}\n" in printed  # halfway

    def cosine(epoch: int, epochs: int) -> float:
        """The lr of the epoch's last update (number epoch * per_epoch), set after the update before it."""
        return 0.5 * 1e-3 * (1 + math.cos(math.pi * (epoch * per_epoch - 1) / (epochs * per_epoch)))

    lrs = [row["lr"] for row in summary["history"]]
    assert lrs[2] > 0 and lrs[3] > 0  # the 2-epoch plan would have ended at 0
    assert lrs == pytest.approx([cosine(1, 2), cosine(2, 2), cosine(3, 4), cosine(4, 4)], rel=1e-6)


def test_resume_with_no_epoch_left_is_refused(data, two_epoch_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(two_epoch_run, out)
    assert main(fit_args(data, out, "--resume", epochs=2)) == 2
    assert f"the run in {out} finished 2 epochs; pass --epochs > 2 to continue it" in capsys.readouterr().err


def test_plateau_schedule_keeps_its_counters_when_extended(data, tmp_path):
    out = tmp_path / "run"
    plateau = ("--sched", "plateau")
    assert main(fit_args(data, out, *plateau, model=CONSTANT, epochs=2)) == 0  # epoch 2 did not improve: 1 waited
    assert main(fit_args(data, out, *plateau, "--resume", model=CONSTANT, epochs=3)) == 0
    state = torch.load(out / "last.pt", weights_only=True)["scheduler"]["plateau"]
    assert state["num_bad_epochs"] == 2  # started afresh, it would have counted 0


# ---------------------------------------------------------------- 3. pretrained files


def _efficientnet_weights(seed: int = 5) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("test_efficientnet").state_dict()  # a 1000-class head, as a hub file would have


def test_pretrained_file_says_what_it_loaded_and_what_it_left_out(tmp_path, capsys):
    weights = _efficientnet_weights()
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 3}, path)  # a DDP checkpoint
    model = create_model(FitConfig(model="test_efficientnet", pretrained_file=str(path)), num_classes=18)
    own = model.state_dict()
    assert capsys.readouterr().out.strip() == (
        f"pretrained: loaded {len(own) - 2} of {len(own)} tensors from {path} "
        "(left out: classifier.weight, classifier.bias (classifier of another class count))")
    assert all(torch.equal(own[k], weights[k]) for k in weights if not k.startswith("classifier."))


def test_pretrained_safetensors_file_loads(tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.torch")
    weights = _efficientnet_weights()
    path = tmp_path / "weights.safetensors"
    safetensors.save_file(weights, str(path))
    model = create_model(FitConfig(model="test_efficientnet", pretrained_file=str(path)), num_classes=1000)
    assert f"loaded {len(weights)} of {len(weights)} tensors from {path}\n" in capsys.readouterr().out
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def _another_model(tmp_path: Path) -> tuple[Path, str]:
    import timm

    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    return path, "conv1.0.weight"


def _renamed(tmp_path: Path) -> tuple[Path, str]:
    """The model's own weights under another prefix; only the (1000-class) classifier keeps its name."""
    path = tmp_path / "renamed.pth"
    torch.save({(k if k.startswith("classifier.") else f"encoder.{k}"): v for k, v in _efficientnet_weights().items()},
               path)
    return path, "encoder.conv_stem.weight"


@pytest.mark.parametrize("make", [_another_model, _renamed])
def test_pretrained_file_that_fits_nothing_is_refused(data, tmp_path, capsys, make):
    path, file_key = make(tmp_path)
    assert main(fit_args(data, tmp_path / "out", "--pretrained-file", str(path), model="test_efficientnet",
                      epochs=1)) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert f"--pretrained-file {path} does not load into test_efficientnet: none of its" in line
    assert file_key in line and "model: conv_stem.weight" in line  # the file's names next to the model's
    assert not (tmp_path / "out" / "last.pt").exists()


def _text(path: Path) -> None:
    path.write_text("these are not the weights you are looking for\n")


def _jpeg(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 40, 40)).save(path, format="JPEG")


def _truncated(path: Path) -> None:
    torch.save(_efficientnet_weights(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


@pytest.mark.parametrize("name, write", [("notes.pth", _text), ("photo.pt", _jpeg), ("cut.pth", _truncated),
                                         ("noise.safetensors", _random_bytes)])
def test_a_file_that_is_not_weights_is_refused_as_such(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError) as caught:
        create_model(FitConfig(model="test_efficientnet", pretrained_file=str(path)), num_classes=18)
    message = str(caught.value)
    assert f"{path} is not a PyTorch weights file (.pt/.pth or .safetensors)" in message
    assert "weights_only" not in message and "\n" not in message


# ---------------------------------------------------------------- 4. Ctrl-C


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")
def test_ctrl_c_mid_epoch_is_a_clean_stop_and_the_printed_resume_works(data, tmp_path):
    out = tmp_path / "run"
    # Four epochs: the signal lands in the second, or later where this process was slow to wake (a
    # loaded machine), but not after the run's end.
    args = fit_args(data, out, model=SLOW_TINY, epochs=4)
    args[args.index("--workers") + 1] = "2"  # worker processes (pil holds the GIL): none may be left behind
    # Started as a terminal starts it: with Python's SIGINT handler. Under a background job of a
    # non-interactive shell (`bash .ci/run &`) the suite inherits SIGINT ignored, and Python keeps that.
    as_in_a_terminal = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "runpy.run_module('training.fit', run_name='__main__', alter_sys=True)")
    process = subprocess.Popen([sys.executable, "-c", as_in_a_terminal, *args], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in process.stdout:
            if line.startswith("epoch 1/4"):
                break
        time.sleep(0.2)  # into epoch 2: its forward passes take >= 0.6 s
        workers = _children(process.pid)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert workers and not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # closed, not orphaned
    (line,) = [line for line in err.splitlines() if "interrupted" in line]
    found = re.fullmatch(rf"training\.fit: interrupted in epoch (\d); {re.escape(str(out))}/last\.pt holds epoch (\d) "
                         r"\(resume: (.*)\)", line)
    assert found, line
    assert int(found[2]) == int(found[1]) - 1 >= 1 and int(found[1]) < 4
    command = shlex.split(found[3])
    assert command[:3] == ["python", "-m", "training.fit"] and command[-3:] == ["--resume", "--out", str(out)]
    assert main(command[3:]) == 0  # in this process: one interpreter start less
    assert _summary(out)["epochs_run"] == 4


# ---------------------------------------------------------------- 5. one class


def test_a_data_set_of_one_class_is_refused_up_front(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "one_class"
    (root / "cats").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (32, 32), (10 * i, 40, 40)).save(root / "cats" / f"{i}.jpg")
    assert main(fit_args(root, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"training.fit: error: need at least 2 classes to train a classifier; {root} has 1: cats" in err


# ---------------------------------------------------------------- 6. skipped files, feed warnings


def test_skipped_files_and_listing_problems_are_reported_and_in_the_summary(data, tmp_path, capsys):
    from feeding.sources import discover, person_split

    root = tmp_path / "sample"
    shutil.copytree(data, root)
    people = sorted(p for p in (root / "train" / "images").iterdir() if p.is_dir())
    stray = people[0] / "selfie.jpg"  # not one of the mask file names: a listing problem
    shutil.copy(people[0] / "normal.jpg", stray)
    corrupt = {str((person / "mask1.jpg").resolve()) for person in people}  # one per person: some in validation
    for path in corrupt:
        Path(path).write_bytes(b"not a JPEG")
    args = fit_args(root, tmp_path / "out", epochs=1)
    args[args.index("--workers") + 1] = "4"  # more workers than either feed has batches: noted
    assert main(args) == 0
    err = capsys.readouterr().err
    summary = _summary(tmp_path / "out")
    skipped = {record["path"] for record in summary["skipped"]}
    _, val = person_split(discover(root, on_bad="skip"), 0.2, 0)
    in_val = corrupt & {str(Path(p).resolve()) for p in val.paths}
    assert in_val and in_val <= {str(Path(p).resolve()) for p in skipped}  # validation reads every file once
    assert str(stray) in skipped and f"skipped: {stray}: file name 'selfie'" in err
    assert summary["history"][0]["val_images"] == summary["val_images"] - len(in_val)  # each readable one once
    assert len(re.findall(r"^warning: validation feed: 4 workers for \d batches per epoch", err, re.MULTILINE)) == 1
    assert len(re.findall(r"^warning: training feed: 4 workers for \d batches per epoch", err, re.MULTILINE)) == 1

    assert main(fit_args(root, tmp_path / "strict", "--on-bad", "fail", epochs=1)) == 2
    assert f"first: {stray}: file name 'selfie'" in capsys.readouterr().err


# ---------------------------------------------------------------- 7. --help


def test_help_gives_every_option_a_text_and_its_default_without_rst():
    parser = get_args_parser()
    assert all(action.help for action in parser._actions), [a.dest for a in parser._actions if not a.help]
    text = parser.format_help()
    assert "``" not in text
    assert "(default: 10)" in text and "--on-bad {skip,fail}" in text
