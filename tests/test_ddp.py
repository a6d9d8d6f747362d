"""Two-process DDP on the CPU (gloo): shards, per-epoch reshuffle, weights in sync, bad launches."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from training import distributed
from training.distributed import DistContext, DistributedError, context_from_env

IMAGES = 23  # odd: the two shards need padding (host) or trimming (DALI)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_class_per_image(image_folder, tmp_path_factory) -> Path:
    """A CSV manifest whose labels name the image: a delivered label says which file it was."""
    files = sorted(Path(image_folder).glob("*/*.jpg"))[:IMAGES]
    manifest = tmp_path_factory.mktemp("manifest") / "list.csv"
    manifest.write_text("path,label\n" + "".join(f"{path},img{i:02d}\n" for i, path in enumerate(files)))
    return manifest


def _rank_main(rank: int, world: int, port: int, manifest: str, pipeline: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from feeding import FeedConfig, create_feeder, discover
    from feeding.spec import AugSpec, Resize

    ctx = context_from_env()
    device = distributed.setup(ctx, "cpu", timeout_s=60)
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    feed = distributed.shard_feed(FeedConfig(pipeline=pipeline, batch_size=4, workers=0, drop_last=False,
                                             spec=AugSpec((Resize((16, 16)),))), ctx, device)
    feeder = create_feeder(discover(manifest), feed)
    model = distributed.wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, IMAGES)),
                             ctx, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    epochs = []
    for epoch in range(2):
        feeder.set_epoch(epoch)
        labels_seen = []
        for images, labels in feeder:
            loss = torch.nn.functional.cross_entropy(model(images.float() / 255), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            labels_seen += labels.tolist()
        epochs.append(labels_seen)
    steps = distributed.reduce_sum([float(len(feeder))], ctx, device)[0]
    weights = [p.detach().double().sum().item() for p in distributed.unwrap(model).parameters()]
    feeder.close()
    del model, optimizer  # before destroy_process_group: teardown under a live reducer aborts
    distributed.teardown(ctx)
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"epochs": epochs, "weights": weights, "batches": len(feeder), "steps_all_ranks": steps}))


def _run_two_ranks(manifest: Path, pipeline: str, out: Path) -> list[dict]:
    mp.spawn(_rank_main, args=(2, _free_port(), str(manifest), pipeline, str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("pipeline", [
    "pil",
    pytest.param("dali", marks=pytest.mark.skipif(
        __import__("importlib").util.find_spec("nvidia.dali") is None, reason="nvidia-dali not installed")),
])
def test_two_gloo_ranks_read_disjoint_reshuffled_shards_and_stay_in_sync(one_class_per_image, tmp_path, pipeline):
    ranks = _run_two_ranks(one_class_per_image, pipeline, tmp_path)
    assert ranks[0]["batches"] == ranks[1]["batches"]  # the same number of steps: no rank waits forever
    assert ranks[0]["steps_all_ranks"] == 2 * ranks[0]["batches"]
    for epoch in range(2):
        shards = [set(rank["epochs"][epoch]) for rank in ranks]
        counts = [len(rank["epochs"][epoch]) for rank in ranks]
        assert counts[0] == counts[1]
        if pipeline == "pil":  # DistributedSampler: every image, padded with repeats to equal shares
            assert shards[0] | shards[1] == set(range(IMAGES)) and counts[0] == -(-IMAGES // 2)
            assert len(shards[0] & shards[1]) <= 2 * counts[0] - IMAGES
        else:  # DALI: disjoint, IMAGES // 2 each, one image sits the epoch out
            assert not shards[0] & shards[1] and counts[0] == IMAGES // 2
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]  # set_epoch reshuffled
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=0, abs=1e-9)  # DDP kept them equal


def test_context_from_env_validates_the_launch():
    assert context_from_env({}) == DistContext()
    assert context_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == DistContext(3, 4, 1)
    with pytest.raises(DistributedError, match="outside WORLD_SIZE"):
        context_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(DistributedError, match="integers"):
        context_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="LOCAL_RANK"):
        context_from_env({"RANK": "0", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})


def test_dali_reads_by_global_rank_on_the_local_gpu():
    from feeding import FeedConfig

    ctx = DistContext(rank=9, world_size=16, local_rank=1)  # second node, second GPU
    feed = distributed.shard_feed(FeedConfig(pipeline="dali"), ctx, torch.device("cuda", 1))
    assert (feed.shard_id, feed.num_shards, feed.decode_device) == (9, 16, "cuda:1")
    host = distributed.shard_feed(FeedConfig(pipeline="pil"), ctx, torch.device("cpu"))
    assert (host.shard_id, host.num_shards, host.decode_device) == (9, 16, "cpu")


def _torchrun(sample_dir: Path, out: Path, *extra: str) -> list[str]:
    """`torchrun --standalone --nproc-per-node 2 -m training.fit` with gloo on this CPU: 3 batches a rank
    an epoch, a step checkpoint after every update (so that the resumed run below has one mid-epoch)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "training.fit", "--pipeline", "pil", "--data", str(sample_dir), "--model",
            "tests.test_training_fit:slow_tiny_net", "--epochs", "2", "--size", "32", "--batch", "4",
            "--workers", "0", "--val-fraction", "0.34", "--checkpoint-every", "1", "--out", str(out), *extra]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended while we looked
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def _kill(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def two_rank_run(sample_dir, tmp_path_factory):
    import subprocess

    out = tmp_path_factory.mktemp("ddp") / "run"
    result = subprocess.run(_torchrun(sample_dir, out), capture_output=True, text=True, timeout=220,
                            env=TORCHRUN_ENV, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


@pytest.mark.timeout(240)
def test_torchrun_two_cpu_ranks_train_and_only_rank_zero_writes(two_rank_run):
    out, result = two_rank_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and len(summary["history"]) == 2
    assert result.stdout.count("fit: ") == 1 and result.stdout.count("epoch 2/2") == 1  # rank 0 alone speaks
    assert (out / "best.pt").exists() and (out / "last.pt").exists()
    state = torch.load(out / "last.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in state["model"])  # saved unwrapped: loads without DDP
    assert [entry["feeder"]["fingerprint"]["shard"] for entry in state["ranks"]] == [[0, 2], [1, 2]]
    assert state["ranks"][0]["rng"]["torch"].tolist() != state["ranks"][1]["rng"]["torch"].tolist()


@pytest.mark.timeout(300)
def test_torchrun_killed_mid_epoch_resumes_to_the_run_never_stopped(sample_dir, two_rank_run, tmp_path):
    """SIGKILL to the whole job (torchrun and both ranks) inside epoch 2, then the same torchrun with
    --resume: each rank takes its own RNG and feeder state back, and the job ends as the uninterrupted one."""
    import subprocess
    import time

    reference, _ = two_rank_run
    out = tmp_path / "run"
    job = subprocess.Popen(_torchrun(sample_dir, out), env=TORCHRUN_ENV, cwd=Path(__file__).resolve().parents[1],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and job.poll() is None:
            try:
                state = torch.load(out / "last.pt", map_location="cpu", weights_only=True, mmap=True)
                if state["within_epoch"] and state["within_epoch"]["epoch"] == 1:
                    break  # a step checkpoint inside epoch 2
            except Exception:  # not written yet, or being replaced
                pass
            time.sleep(0.02)
        assert job.poll() is None, "the job ended before it could be killed"
        for pid in [*_descendants(job.pid), job.pid]:  # the ranks run in sessions of their own: kill each
            _kill(pid)
        job.wait(timeout=30)
    finally:
        for pid in [*_descendants(job.pid), job.pid]:
            _kill(pid)
    result = subprocess.run(_torchrun(sample_dir, out, "--resume"), capture_output=True, text=True, timeout=220,
                            env=TORCHRUN_ENV, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from" in result.stdout and ", batch " in result.stdout  # mid-epoch, not the epoch's start
    keys = ("epoch", "loss", "lr", "macro_f1", "accuracy")
    rows = [[{k: row[k] for k in keys} for row in json.loads((run / "summary.json").read_text())["history"]]
            for run in (out, reference)]
    assert rows[0] == rows[1]
    weights = [torch.load(run / "last.pt", weights_only=True)["model"] for run in (out, reference)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])
