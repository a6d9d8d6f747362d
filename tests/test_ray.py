"""The ray pipeline (Ray Data) and training.ray_train (Ray Train), on a local Ray with CPUs only.

Tests that need Ray skip, with the reason, where the ``feedbench[ray]`` extra is not
installed; the pure ones (addresses, CPU arithmetic, node counts) always run. One
local Ray serves the module: starting one costs ~6 s on 2 cores, and each Ray
Data execution ~10 s more (its actors import torch, OpenCV and albumentations).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from bench.ray_scale import cpu_node_size, estimate_nodes, nodes_needed, per_node_feed, ray_candidate, scale_report
from feeding.backends.ray_cluster import (
    RayConfig,
    check_reachable,
    data_cpu_limit,
    parse_address,
)
from feeding.errors import FeedError
from feeding.feeder import FeedConfig
from feeding.sources import discover
from feeding.spec import train_spec
from tests.conftest import dominant_channel

# Ray's own start-up chatter, not ours to fix (pyproject turns warnings into errors).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::ResourceWarning",
                                        "ignore::pytest.PytestUnraisableExceptionWarning")

SIZE = (64, 64)


def _free_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 4 logical CPUs: 2 for trainer workers, 2 for the Ray Data actors."""
    ray = pytest.importorskip("ray", reason="the feedbench[ray] extra is not installed")
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------- pure: no Ray needed

def test_importing_feeding_and_bench_does_not_import_ray():
    code = "import sys, feeding, feeding.factory, bench.cli, bench.ray_scale; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)),
    ("head", ("head", 6379)),
    ("ray://head:10001", ("head", 10001)),
    ("ray://head", ("head", 10001)),
    ("[::1]:6380", ("::1", 6380)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("bad", [":6379", "head:port", "ray://"])
def test_malformed_address_is_refused_when_configured(bad):
    with pytest.raises(ValueError, match="HOST:PORT"):
        RayConfig(address=bad)


def test_unreachable_address_errors_fast_and_says_what_to_do():
    address = f"127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    with pytest.raises(FeedError, match=f"no Ray cluster answers at {address}.*ray start --head"):
        check_reachable(address, timeout_s=3.0)
    assert time.perf_counter() - started < 3.5


def test_data_cpus_are_what_the_trainers_leave():
    assert data_cpu_limit(8, reserved_cpus=4, actors_need=2) == 4
    with pytest.raises(FeedError, match="4 CPUs and 4 are reserved.*leaving 0 for Ray Data.*need 2"):
        data_cpu_limit(4, reserved_cpus=4, actors_need=2)


@pytest.mark.parametrize(("feed", "consume", "headroom", "nodes"), [
    (100.0, 300.0, 1.0, 3),  # exactly enough: no extra node for rounding noise
    (100.0, 301.0, 1.0, 4),
    (100.0, 300.0, 1.1, 4),
    (500.0, 20.0, 1.1, 1),  # one node already feeds more than the model eats
    (250.0, 0.0, 1.1, 1),
])
def test_nodes_needed(feed, consume, headroom, nodes):
    assert nodes_needed(feed, consume, headroom) == nodes
    assert estimate_nodes(feed, consume, headroom).feed_img_s >= headroom * consume


@pytest.mark.parametrize(("feed", "consume", "headroom"), [(0.0, 10.0, 1.1), (10.0, -1.0, 1.1), (10.0, 5.0, 0.9)])
def test_nodes_needed_refuses_meaningless_rates(feed, consume, headroom):
    with pytest.raises(ValueError):
        nodes_needed(feed, consume, headroom)


def _node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return {"Alive": alive, "Resources": resources}


def test_a_typical_cpu_node_is_the_median_live_node_without_gpus():
    cluster = [_node(8, gpus=8), _node(32), _node(16), _node(16), _node(64, alive=False)]
    assert cpu_node_size(cluster) == 16  # the GPU head and the dead node do not count
    assert cpu_node_size([_node(16, gpus=2), _node(24, gpus=4)]) == 20  # all have GPUs: all count
    with pytest.raises(ValueError, match="no live node with CPUs"):
        cpu_node_size([_node(8, alive=False)])


def test_tune_scales_the_feed_with_the_most_actors_to_whole_nodes():
    # 2 actors fed 300 img/s, 4 actors 500: 125 img/s per actor; a 16-CPU node runs 16 actors.
    report = scale_report({2: 300.0, 4: 500.0}, consume_img_s=5000.0, node_cpus=16)
    assert report["actors_measured"] == 4 and report["feed_per_node_img_s"] == pytest.approx(2000.0)
    assert report["nodes"] == 3  # 1.1 x 5000 = 5500 img/s asked: 3 x 2000
    assert "3 Ray CPU node(s)" in report["sentence"]
    assert per_node_feed(100.0, 1, 8, cpus_per_actor=2.0) == pytest.approx(400.0)
    with pytest.raises(ValueError):
        scale_report({}, 100.0, 8)


def test_tune_reports_the_node_count_where_ray_was_measured(monkeypatch):
    from bench import ray_scale, tune
    from bench.tune.forecast import FeedPoint

    pick = tune.Prediction(tune.Setup("albumentations", 2, 64, (224, 224)), feed_ips=900.0, consume_ips=3000.0,
                           predicted_ips=900.0, model_threads=None)
    feeds = {("albumentations", 2, (224, 224), 64): FeedPoint(900.0), ("ray", 1, (224, 224), 64): FeedPoint(200.0),
             ("ray", 2, (224, 224), 64): FeedPoint(380.0), ("ray", 4, (160, 160), 64): FeedPoint(1200.0)}
    monkeypatch.setattr(ray_scale, "cluster_nodes", lambda address: [_node(8, gpus=1), _node(4), _node(4)])
    report = tune.ray_nodes(feeds, pick, ranks=2)
    # 2 actors at 380 img/s -> 190 per actor -> 760 per 4-CPU node; 2 ranks x 3000 x 1.1 = 6600 asked.
    assert (report["actors_measured"], report["node_cpus"], report["nodes"]) == (2, 4.0, 9)
    assert report["consume_img_s"] == pytest.approx(6000.0) and report["batch"] == 64
    lines = "\n".join(tune.ray_scale_lines(report))
    assert "**9 CPU node(s)**" in lines and "760.0 img/s" in lines
    assert tune.ray_nodes({("pil", 2, (224, 224), 64): FeedPoint(500.0)}, pick, ranks=1) is None  # ray not measured

    def gone(address):
        raise FeedError("no Ray cluster answers at 10.0.0.1:6379")

    monkeypatch.setattr(ray_scale, "cluster_nodes", gone)
    assert "could not be read" in "\n".join(tune.ray_scale_lines(tune.ray_nodes(feeds, pick, ranks=1)))


def test_tune_considers_ray_only_with_a_reachable_cluster():
    pipelines = ("pil", "albumentations", "ray")
    assert ray_candidate(pipelines, environ={}) == ("pil", "albumentations")
    unreachable = {"RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}
    assert ray_candidate(pipelines, environ=unreachable, timeout_s=1.0) == ("pil", "albumentations")
    with socket.socket() as listener:  # something that answers, standing in for a cluster's head
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        reachable = {"RAY_ADDRESS": f"127.0.0.1:{listener.getsockname()[1]}"}
        assert ray_candidate(pipelines, environ=reachable, timeout_s=1.0) == pipelines


def test_more_workers_than_batches_is_refused_before_ray_starts():
    from training.ray_train import steps_per_epoch

    assert steps_per_epoch(100, 16, 2) == 3  # 6 full batches, 3 each
    with pytest.raises(FeedError, match="make 1 batch.*fewer than the 2 workers"):
        steps_per_epoch(20, 16, 2)


# ---------------------------------------------------------------- Ray Data: the feeder

@pytest.mark.timeout(180)
def test_ray_feeder_delivers_the_host_pipelines_batches_and_reshuffles(local_ray, image_folder):
    from feeding.backends.ray import RayFeeder
    from feeding.factory import create_feeder

    samples = discover(image_folder)  # 3 classes x 8 images, class k tinted towards channel k
    config = FeedConfig(pipeline="ray", batch_size=8, workers=2, spec=train_spec(SIZE), seed=7)
    feeder = create_feeder(samples, config)
    assert isinstance(feeder, RayFeeder) and len(feeder) == 3
    first, second = list(feeder), list(feeder)  # epochs 0 and 1 of one Ray Data execution
    for images, labels in first + second:
        assert images.shape == (8, 3, *SIZE) and images.dtype == torch.uint8
        assert labels.shape == (8,) and labels.dtype == torch.int64
        assert (dominant_channel(images) == labels.numpy()).all()  # each image came with its own label
    order = [torch.cat([labels for _, labels in epoch]) for epoch in (first, second)]
    assert not torch.equal(order[0], order[1]), "epoch 1 should be a new shuffle"
    assert sorted(order[0].tolist()) == sorted(order[1].tolist()) == sorted(samples.labels.tolist())
    # The same seed gives the albumentations host pipeline's stream, pixel for pixel, epoch after epoch.
    host = create_feeder(samples, FeedConfig(pipeline="albumentations", batch_size=8, workers=0,
                                             spec=train_spec(SIZE), seed=7))
    for ray_epoch, host_epoch in zip((first, second), (list(host), list(host))):
        for (ray_images, ray_labels), (host_images, host_labels) in zip(ray_epoch, host_epoch, strict=True):
            assert torch.equal(ray_labels, host_labels) and torch.equal(ray_images, host_images)
    feeder.close()
    assert local_ray.is_initialized(), "a feeder must not shut down a Ray it did not start"


def test_more_shards_than_images_is_refused(local_ray, image_folder):
    from feeding.factory import create_feeder

    samples = discover(image_folder)
    config = FeedConfig(pipeline="ray", batch_size=1, workers=1, spec=train_spec(SIZE),
                        shard_id=0, num_shards=len(samples) + 1)
    with pytest.raises(FeedError, match=f"{len(samples) + 1} shards for {len(samples)} images"):
        create_feeder(samples, config)


@pytest.mark.timeout(30)
def test_ray_feeder_with_an_unreachable_cluster_errors_fast(local_ray, image_folder):
    from feeding.backends.ray import RayFeeder

    address = f"127.0.0.1:{_free_port()}"
    config = FeedConfig(pipeline="ray", batch_size=8, workers=1, spec=train_spec(SIZE))
    started = time.perf_counter()
    with pytest.raises(FeedError, match=f"no Ray cluster answers at {address}"):
        RayFeeder(discover(image_folder), config, RayConfig(address=address, connect_timeout_s=2.0))
    assert time.perf_counter() - started < 5


def test_actors_that_cannot_get_a_cpu_are_refused_not_left_waiting(local_ray, image_folder):
    from feeding.backends.ray import RayFeeder

    config = FeedConfig(pipeline="ray", batch_size=8, workers=2, spec=train_spec(SIZE))
    every_cpu_to_trainers = RayConfig(actors=2, reserved_cpus=4)  # the module's Ray has 4 CPUs
    with pytest.raises(FeedError, match="leaving 0 for Ray Data"):
        RayFeeder(discover(image_folder), config, every_cpu_to_trainers)


@pytest.mark.timeout(120)
def test_the_read_ahead_covers_the_blocks_ray_data_hands_over(local_ray, image_folder):
    """Ray Data hands over a block of several batches at once, so a benchmark window (at least
    ``pipeline_depth`` batches) must hold whole blocks: each actor task in flight is one, and the
    iterator fetches one more at least."""
    from feeding.backends.ray import RayFeeder

    config = FeedConfig(pipeline="ray", batch_size=2, workers=1, prefetch_factor=1, spec=train_spec(SIZE))
    feeder = RayFeeder(discover(image_folder), config, RayConfig(actors=1))
    try:
        blocks = list(feeder.dataset(0).iter_internal_ref_bundles())  # what the actors emit, block by block
    finally:
        feeder.close()
    batches_per_block = max(bundle.num_rows() for bundle in blocks) // config.batch_size
    assert batches_per_block > 1
    in_flight = feeder.ray_config.actors * config.prefetch_factor  # one block per actor task in flight
    assert feeder.pipeline_depth >= batches_per_block * (in_flight + 1)


def test_cluster_nodes_reads_the_running_ray(local_ray):
    from bench.ray_scale import cluster_nodes

    nodes = cluster_nodes(None)  # joined already: the module's local Ray, left running
    assert cpu_node_size(nodes) == 4 and local_ray.is_initialized()


# ---------------------------------------------------------------- Ray Train

@pytest.mark.timeout(240)
def test_two_worker_cpu_torchtrainer_run_completes(local_ray, sample_dir, tmp_path):
    from training.ray_train import WEIGHTS_FILE, RayTrainConfig, run

    # 2 trainer workers x 1 CPU + 2 Ray Data actors: the module's 4 CPUs.
    config = RayTrainConfig(data=str(sample_dir), model="test_resnet", epochs=2, batch=8, size=(32, 32),
                            workers=2, actors=2, out=str(tmp_path))
    summary = run(config)
    assert [epoch["epoch"] for epoch in summary["epochs"]] == [0, 1]
    steps = summary["steps_per_epoch"]
    assert steps == summary["train_images"] // 8 // 2 >= 1
    for epoch in summary["epochs"]:
        assert epoch["images"] == steps * 8  # this worker's share, full batches only
        assert torch.isfinite(torch.tensor(epoch["loss"]))
    assert summary["data_cpus"] == 2
    assert os.path.isfile(os.path.join(summary["checkpoint"], WEIGHTS_FILE))


def test_ray_data_threads_are_waited_for_before_shutdown_and_stragglers_named():
    import threading

    from feeding.backends.ray import wait_for_ray_data_threads

    release = threading.Event()
    finishing = threading.Thread(target=time.sleep, args=(0.2,), name="StreamingExecutor-finishing", daemon=True)
    stuck = threading.Thread(target=release.wait, name="StreamingExecutor-stuck", daemon=True)
    other = threading.Thread(target=release.wait, name="someone-elses-thread", daemon=True)
    for thread in (finishing, stuck, other):
        thread.start()
    try:
        started = time.perf_counter()
        alive = wait_for_ray_data_threads(timeout_s=0.5)
        waited = time.perf_counter() - started
    finally:
        release.set()
    assert not finishing.is_alive()  # waited for: it would have called into Ray after the shutdown
    assert alive == ["StreamingExecutor-stuck"]  # named, not waited for without end
    assert 0.4 < waited < 5  # the timeout bounds the wait; another library's thread is not waited for


def test_a_fully_delivered_run_is_drained_to_its_end_not_abandoned():
    from feeding.backends.ray import _Run

    ended = []

    def execution():  # Ray Data stops its block prefetcher only after the last batch (not in a finally)
        yield from range(3)
        ended.append("prefetcher stopped")

    run = _Run(execution(), first_epoch=0, stop_epoch=1)
    assert [next(run.batches) for _ in range(3)] == [0, 1, 2]
    run.finish()
    assert ended == ["prefetcher stopped"]


@pytest.mark.timeout(180)
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::ResourceWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ray_feeder_restores_mid_epoch(local_ray, image_folder):
    """Mid-epoch: each batch is a Ray Data row keyed (epoch, number), so the run starts at the state's batch.
    Batch 5 without drop_last ends each epoch in a partial batch: one epoch a Ray Data execution. (The
    other backends' state tests are in tests/test_feeder_state.py.)"""
    from feeding.backends.ray import RayFeeder
    from feeding.factory import create_feeder
    from feeding.backends.ray_cluster import RayConfig
    from tests.test_feeder_state import _assert_refused, _assert_same, _config, _saved, _take

    samples = discover(image_folder)
    config = dict(batch_size=5, drop_last=False)
    with create_feeder(samples, _config("ray", 2, **config)) as original:
        epoch = iter(original)
        _take(epoch, 2)
        state = _saved(original)
        rest = _take(epoch)
    assert len(rest) == 3 and len(rest[-1][1]) == 4
    with create_feeder(samples, _config("ray", 1, **config)) as restored:
        restored.load_state_dict(state)
        _assert_same(list(restored), rest)
    _assert_refused(state, create_feeder(samples, _config("albumentations", **config)),
                    "pipeline 'ray' != 'albumentations'")
    with RayFeeder(samples, _config("ray", **config), RayConfig(transform="pil")) as pil_actors:
        _assert_refused(state, pil_actors, "transform 'albumentations' != 'pil'")  # other pixels
