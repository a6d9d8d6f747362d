"""Step checkpoints: ``training.fit --checkpoint-every N`` killed with SIGKILL at any moment resumes at
the update its last.pt holds and ends with the weights and metrics of a run never stopped (bit for bit
on the CPU); SIGTERM checkpoints at the next update and exits 143; a checkpoint that does not fit the
run is refused with what differs; every rank of a distributed run draws its own dropout masks; ranks
that generate the sample at once leave one whole copy."""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.test_training_fit import METRIC_KEYS, REPO, SLOW_TINY, TINY
from training.checkpoint import CHECKPOINT_FORMAT, LAST
from training.fit import main

EVERY = 2  # updates between step checkpoints


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from feeding.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("steps") / "sample", people=6, eval_people=0)


def _args(data: Path, out: Path, *extra: str, model: str = SLOW_TINY, batch: int = 4) -> list[str]:
    # 28 training images in batches of 4: 7 updates an epoch, so the step checkpoints (every 2) fall inside
    # epochs and across their ends (update 8 is batch 1 of epoch 2).
    return ["--pipeline", "pil", "--data", str(data), "--model", model, "--epochs", "2", "--size", "32",
            "--batch", str(batch), "--workers", "0", "--checkpoint-every", str(EVERY), "--out", str(out), *extra]


def _metrics(out: Path) -> list[dict]:
    return [{key: row[key] for key in METRIC_KEYS} for row in json.loads((out / "summary.json").read_text())["history"]]


def _weights(out: Path) -> list[torch.Tensor]:
    return list(torch.load(out / LAST, weights_only=True)["model"].values())


def _updates(out: Path) -> int | None:
    """The update the last.pt on disk holds (None: none yet, or being replaced right now)."""
    try:
        return int(torch.load(out / LAST, map_location="cpu", weights_only=True, mmap=True)["updates"])
    except Exception:
        return None


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("steps") / "uninterrupted"
    assert main(_args(data, out)) == 0
    return out


def test_sigkill_at_three_points_then_resume_gives_the_run_never_stopped(data, uninterrupted, tmp_path):
    """Killed right after a step checkpoint lands, between two checkpoints (mid-step), and in the second
    epoch, each time resumed from what the last kill left: the same metrics and weights in the end."""
    out = tmp_path / "killed"
    # (the update whose checkpoint must be on disk, then how long to let the run go on before the kill)
    points = ((EVERY, 0.0), (2 * EVERY, 0.2), (5 * EVERY, 0.05))
    held = []
    for number, (checkpointed, then) in enumerate(points):
        command = [sys.executable, "-m", "training.fit", *_args(data, out, *(("--resume",) if number else ()))]
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while (_updates(out) or 0) < checkpointed and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(then)
            assert process.poll() is None, f"the run ended before kill {number + 1}: {process.stderr.read()[-2000:]}"
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            process.kill()
            process.stderr.close()
        held.append(_updates(out))
    assert held[0] >= EVERY and held[1] >= 2 * EVERY and held[2] >= 5 * EVERY  # each kill lost < EVERY updates...
    assert all(h % EVERY == 0 for h in held)  # ...of a checkpoint every EVERY
    state = torch.load(out / LAST, weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["within_epoch"]["epoch"] == 1  # mid-epoch 2
    assert main(_args(data, out, "--resume")) == 0
    assert _metrics(out) == _metrics(uninterrupted)
    for tensor, reference in zip(_weights(out), _weights(uninterrupted), strict=True):
        assert torch.equal(tensor, reference)


def test_sigterm_writes_a_step_checkpoint_at_the_next_update_and_exits_143(data, uninterrupted, tmp_path, capsys):
    """What a preempting scheduler sends; here to this process, while main() trains in it."""
    out = tmp_path / "preempted"
    before = signal.getsignal(signal.SIGTERM)  # the default, or what an earlier test's library left (Ray's)
    args = _args(data, out)
    args[args.index("--checkpoint-every") + 1] = "1000"  # no step checkpoint but the one the signal asks for

    def send_sigterm_mid_epoch_2() -> None:
        deadline = time.monotonic() + 120
        while _updates(out) != 7 and time.monotonic() < deadline:  # epoch 1's checkpoint is on disk
            time.sleep(0.01)
        time.sleep(0.3)  # a step or two into epoch 2 (each forward sleeps 0.15 s)
        if signal.getsignal(signal.SIGTERM) is not before:  # the run's handler, never the default's kill
            os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send_sigterm_mid_epoch_2)
    sender.start()
    code = main(args)
    sender.join()
    assert code == 143
    assert signal.getsignal(signal.SIGTERM) is before  # the handler was the run's alone, and given back
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "SIGTERM" in line]
    found = re.fullmatch(rf"training\.fit: stopped by SIGTERM; {re.escape(str(out))}/last\.pt holds epoch 2, "
                         r"batch (\d) \(update (\d+)\) \(resume: (.*)\)", line)
    assert found, line
    batch, update = int(found[1]), int(found[2])
    assert 1 <= batch < 7 and update == 7 + batch == _updates(out)  # the update after the signal, inside epoch 2
    command = shlex.split(found[3])
    assert command[:3] == ["python", "-m", "training.fit"] and command[-3:] == ["--resume", "--out", str(out)]
    assert main(command[3:]) == 0
    assert _metrics(out) == _metrics(uninterrupted)
    for tensor, reference in zip(_weights(out), _weights(uninterrupted), strict=True):
        assert torch.equal(tensor, reference)


@pytest.mark.parametrize("change, message", [
    (("--batch", "7"), "batch size 4 != 7"),
    (("--seed", "3"), "seed 0 != 3"),
    (("--size", "40"), "augmentation spec"),
])
def test_a_step_checkpoint_for_another_feed_is_refused_with_what_differs(data, tmp_path, capsys, change, message):
    out = tmp_path / "run"
    args = _args(data, out, model=TINY)
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    state = torch.load(out / LAST, weights_only=True)
    assert state["ranks"][0]["feeder"]["epoch"] == 1  # the next epoch's start: what the resumed feed must be at
    args[args.index("--epochs") + 1] = "2"
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main([*args, "--resume"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert f"checkpoint {out / LAST} cannot resume this training feed" in line and message in line, line


def test_a_newer_or_truncated_checkpoint_is_a_clear_error(data, tmp_path, capsys):
    from training.checkpoint import save_checkpoint

    out = tmp_path / "run"
    args = _args(data, out, model=TINY)
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    args[args.index("--epochs") + 1] = "2"
    raw = (out / LAST).read_bytes()
    (out / LAST).write_bytes(raw[: len(raw) // 2])
    assert main([*args, "--resume"]) == 2
    assert f"checkpoint {out / LAST} is corrupt or not a checkpoint" in capsys.readouterr().err
    (out / LAST).write_bytes(raw)
    state = torch.load(out / LAST, weights_only=True)
    save_checkpoint(out / LAST, {**state, "format": CHECKPOINT_FORMAT + 1})
    assert main([*args, "--resume"]) == 2
    assert f"has format {CHECKPOINT_FORMAT + 1}, newer than this feedbench reads ({CHECKPOINT_FORMAT})" in \
        capsys.readouterr().err


def test_a_checkpoint_of_another_rank_count_is_refused():
    from training.checkpoint import CheckpointError, _rank_entry

    state = {"format": CHECKPOINT_FORMAT, "rng": {}, "ranks": [{"rng": {}, "feeder": {}}] * 2}
    with pytest.raises(CheckpointError, match=r"written by a run of 2 rank\(s\); this one has 4"):
        _rank_entry(state, Path("last.pt"), 0, 4)
    assert _rank_entry({"rng": "old"}, Path("last.pt"), 0, 4) == {"rng": "old", "feeder": None}  # format 1


def test_each_rank_draws_its_own_dropout_masks_from_the_same_weights():
    from training.config import FitConfig
    from training.step import StepConfig
    from training.trainer import build_training

    config, step = FitConfig(model=TINY, seed=5), StepConfig()
    built = []
    for rank in (0, 1, None):
        model, *_ = build_training(config, step, 4, torch.tensor([0, 1, 2, 3]), 4, torch.device("cpu"),
                                   announce=False, rank=rank)
        mask = torch.nn.functional.dropout(torch.ones(64), 0.5)  # what a dropout layer draws next
        built.append((list(model.state_dict().values()), mask))
    (weights0, mask0), (weights1, mask1), (weights_alone, mask_alone) = built
    assert all(torch.equal(a, b) for a, b in zip(weights0, weights1, strict=True))  # DDP starts from one model
    assert all(torch.equal(a, b) for a, b in zip(weights0, weights_alone, strict=True))
    assert not torch.equal(mask0, mask1)  # but the ranks' masks differ
    assert not torch.equal(mask0, mask_alone)  # (a single process keeps the seed's own stream)


def _write_sample_in_child(out: str, queue) -> None:
    from feeding.sample import write_sample

    try:
        root = write_sample(out, people=3, eval_people=0)
        queue.put(sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg")))
    except BaseException as error:  # noqa: BLE001 - reported to the test
        queue.put(repr(error))


def test_ranks_generating_the_sample_at_once_leave_one_whole_copy(tmp_path):
    """Three processes start writing the same sample together (as torchrun's ranks with no --data):
    one generates, the others wait for its stamp; every one of them then sees the whole data set."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    out = str(tmp_path / "sample")
    children = [context.Process(target=_write_sample_in_child, args=(out, queue)) for _ in range(3)]
    for child in children:
        child.start()
    listings = [queue.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=30)
    assert all(isinstance(listing, list) and len(listing) == 21 for listing in listings), listings
    assert listings[0] == listings[1] == listings[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]  # no partial copy, no lock file
