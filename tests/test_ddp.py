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


@pytest.mark.timeout(240)
def test_torchrun_two_cpu_ranks_train_and_only_rank_zero_writes(sample_dir, tmp_path):
    """`torchrun --standalone --nproc-per-node 2 -m training.fit` with gloo on this CPU."""
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "training.fit", "--pipeline", "pil", "--data", str(sample_dir), "--model",
               "tests.test_training_fit:tiny_net", "--epochs", "2", "--size", "32", "--batch", "4",
               "--workers", "0", "--val-fraction", "0.34", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=220, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and len(summary["history"]) == 2
    assert result.stdout.count("fit: ") == 1 and result.stdout.count("epoch 2/2") == 1  # rank 0 alone speaks
    assert (out / "best.pt").exists() and (out / "last.pt").exists()
    state = torch.load(out / "last.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in state["model"])  # saved unwrapped: loads without DDP
