"""Bad input: a clear error or a reported skip, never a hang or a silent mislabel."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch

from feeding import FeedConfig, create_feeder, discover
from feeding.backends.host import HostFeeder
from feeding.backends.pil import PilTransform
from feeding.errors import FeedError
from feeding.spec import AugSpec, Resize, train_spec
from tests.conftest import CLASS_TINTS, dominant_channel, textured_image
from tests.odd_images import write_bad_files, write_odd_images

PIPELINES = [
    "pil",
    "albumentations",
    pytest.param("dali", marks=pytest.mark.skipif(
        __import__("importlib").util.find_spec("nvidia.dali") is None, reason="nvidia-dali not installed")),
]


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """ImageFolder: class0 holds odd-but-valid images, class1 good JPEGs, class2 good JPEGs and bad files."""
    root = tmp_path_factory.mktemp("messy")
    odd = write_odd_images(root / "class0")
    rng = np.random.default_rng(5)
    for label in (1, 2):
        (root / f"class{label}").mkdir()
        for i in range(6):
            textured_image(rng, CLASS_TINTS[label], 64, 48).save(root / f"class{label}" / f"ok{i}.jpg")
    bad = write_bad_files(root / "class2")
    (root / "class1" / "README.txt").write_text("not an image by extension: ignored")
    return root, odd, bad


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_skip_reports_every_bad_file_and_keeps_batches_full(pipeline, messy_folder):
    root, odd, bad = messy_folder
    samples = discover(root)
    assert not any(p.endswith("README.txt") for p in samples.paths)
    config = FeedConfig(pipeline=pipeline, batch_size=4, workers=2, spec=AugSpec((Resize((32, 32)),)),
                        on_bad="skip", drop_last=True)
    delivered_labels = []
    with create_feeder(samples, config) as feeder:
        for epoch in range(2):
            for images, labels in feeder:
                assert images.shape == (4, 3, 32, 32)  # full batches of valid images
                delivered_labels += labels.tolist()
    skipped = {record.path for record in feeder.skipped}
    assert skipped == {str(path) for path in bad.values()}
    assert all(record.reason for record in feeder.skipped)
    assert delivered_labels.count(0) > 0  # odd images were delivered, not skipped


@pytest.mark.parametrize("executor", ["auto", "thread"])
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_fail_raises_an_error_that_names_the_file(pipeline, executor, messy_folder):
    if executor == "thread" and pipeline == "dali":
        pytest.skip("DALI has its own threads; executor applies to the host pipelines")
    root, _, bad = messy_folder
    config = FeedConfig(pipeline=pipeline, batch_size=4, workers=1, spec=AugSpec((Resize((32, 32)),)),
                        on_bad="fail", shuffle=False, executor=executor)
    with pytest.raises(FeedError) as error:
        with create_feeder(discover(root), config) as feeder:
            for _ in feeder:
                pass
    assert any(str(path) in str(error.value) for path in bad.values())


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_odd_images_arrive_as_rgb_with_their_label(pipeline, tmp_path):
    odd = write_odd_images(tmp_path / "odd")
    samples = discover(tmp_path)
    config = FeedConfig(pipeline=pipeline, batch_size=1, workers=1, spec=AugSpec((Resize((16, 16)),)),
                        on_bad="fail", shuffle=False, drop_last=False)
    with create_feeder(samples, config) as feeder:
        batches = list(feeder)
    assert len(batches) == len(odd) and not feeder.skipped
    assert all(images.shape == (1, 3, 16, 16) and labels.item() == 0 for images, labels in batches)


def test_labels_follow_substituted_images(tmp_path):
    """A skipped file is replaced by another image *with that image's own label*."""
    rng = np.random.default_rng(1)
    for label in range(3):
        (tmp_path / f"class{label}").mkdir()
        for i in range(4):
            textured_image(rng, CLASS_TINTS[label], 64, 48).save(tmp_path / f"class{label}" / f"{i}.jpg")
        for i in range(3):
            (tmp_path / f"class{label}" / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    config = FeedConfig(pipeline="pil", batch_size=6, workers=2, spec=train_spec((32, 32)), on_bad="skip")
    with create_feeder(discover(tmp_path), config) as feeder:
        for images, labels in feeder:
            assert dominant_channel(images).tolist() == labels.tolist()
    assert len(feeder.skipped) == 9


class _DyingTransform(PilTransform):
    def decode(self, path, data, rng):
        os.kill(os.getpid(), signal.SIGKILL)


class _StuckTransform(PilTransform):
    def decode(self, path, data, rng):
        time.sleep(60)


@pytest.mark.timeout(60)
def test_a_dead_worker_is_an_error_not_a_hang(image_folder):
    config = FeedConfig(pipeline="pil", batch_size=4, workers=2, spec=AugSpec((Resize((32, 32)),)))
    feeder = HostFeeder(discover(image_folder), config, _DyingTransform(config.plan, config.max_pixels))
    with pytest.raises(FeedError, match="worker"):
        next(iter(feeder))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["process", "thread"])
def test_a_stuck_worker_times_out_with_a_clear_message(image_folder, executor):
    config = FeedConfig(pipeline="pil", batch_size=4, workers=1, spec=AugSpec((Resize((32, 32)),)),
                        worker_timeout_s=2, executor=executor)
    feeder = HostFeeder(discover(image_folder), config, _StuckTransform(config.plan, config.max_pixels))
    started = time.perf_counter()
    with pytest.raises(FeedError, match="worker_timeout_s"):
        next(iter(feeder))
    assert time.perf_counter() - started < 30


def _hold_until_killed(lock, holding) -> None:
    lock.acquire()
    holding.set()
    time.sleep(60)


@pytest.mark.timeout(60)
def test_a_ctrl_c_as_the_workers_start_stops_them_and_leaves_none_watched(image_folder, monkeypatch):
    """A Ctrl-C reaches the workers too. One that lands while torch is starting them (after it armed its
    SIGCHLD watch of them, before the iterator is the loader's) stops them; their exit must not then be
    raised as a worker crash in what the main process does next (the partial report, the checkpoint).
    Nor may their stopping wait on the lock of their done event, which one killed inside
    ``done_event.is_set()`` holds for ever (here a stand-in process, killed holding it)."""
    import multiprocessing

    from torch.utils.data import dataloader
    from torch.utils.data._utils import signal_handling

    started: list = []
    reset = dataloader._MultiProcessingDataLoaderIter._reset

    def interrupted(self, loader, first_iter=False):
        if not first_iter:
            return reset(self, loader, first_iter)
        fork = multiprocessing.get_context("fork")
        holding = fork.Event()
        holder = fork.Process(target=_hold_until_killed, args=(self._workers_done_event._cond, holding))
        holder.start()
        assert holding.wait(10)
        holder.kill()
        holder.join()
        started.extend(worker.pid for worker in self._workers)
        for worker in self._workers:  # the Ctrl-C, to the workers as to the main process (a terminal's, to the group)
            os.kill(worker.pid, signal.SIGINT)
        raise KeyboardInterrupt

    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "_reset", interrupted)
    config = FeedConfig(pipeline="pil", batch_size=4, workers=2, spec=AugSpec((Resize((32, 32)),)))
    feeder = HostFeeder(discover(image_folder), config, PilTransform(config.plan, config.max_pixels))
    with pytest.raises(KeyboardInterrupt) as stopped:  # its traceback keeps the half-started iterator alive
        next(iter(feeder))
    assert len(started) == 2 and stopped.traceback
    assert [pid for pid in started if os.path.exists(f"/proc/{pid}")] == []  # stopped and reaped, no zombie
    signal_handling._error_if_any_worker_fails()  # none is watched any more: nothing to raise
    feeder.close()
    del stopped  # the iterator's __del__ runs now: it must not try torch's shutdown (the lock) again


def test_memory_check_runs_before_workers_start(image_folder, monkeypatch):
    import feeding.resources as resources

    monkeypatch.setattr(resources, "available_shm", lambda path="/dev/shm": 1024)
    config = FeedConfig(pipeline="pil", batch_size=8, workers=2)  # 24 images: 3 batches
    with pytest.raises(FeedError, match="/dev/shm"):
        create_feeder(discover(image_folder), config)


def test_a_batch_beyond_the_data_says_so_before_the_memory_check(image_folder, monkeypatch):
    import feeding.resources as resources

    monkeypatch.setattr(resources, "available_shm", lambda path="/dev/shm": 1024)
    for pipeline in ("pil", "albumentations", "dali"):
        with pytest.raises(FeedError, match=r"batch 200 > 24 usable images"):
            create_feeder(discover(image_folder), FeedConfig(pipeline=pipeline, batch_size=200, workers=2))


def test_device_feeder_normalizes_on_the_device(image_folder):
    from feeding.device import DeviceFeeder

    config = FeedConfig(pipeline="pil", batch_size=4, workers=0, spec=AugSpec((Resize((32, 32)),)))
    raw_images, _ = next(iter(create_feeder(discover(image_folder), config)))
    device_feeder = DeviceFeeder(create_feeder(discover(image_folder), config), "cpu")
    images, labels = next(iter(device_feeder))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, (raw_images / 255.0 - mean) / std, atol=1e-5, rtol=1e-5)
    assert len(device_feeder) == 6


DALI = pytest.mark.skipif(__import__("importlib").util.find_spec("nvidia.dali") is None,
                          reason="nvidia-dali not installed")


@pytest.mark.gpu
@pytest.mark.parametrize("pipeline, decode_device", [
    ("pil", "cpu"), ("albumentations", "cpu"),
    pytest.param("dali", "cpu", marks=DALI),
    pytest.param("dali", "cuda", marks=DALI),  # DALI's own GPU buffers, read on the side stream
])  # fmt: skip
def test_device_feeder_prefetches_on_a_cuda_side_stream(image_folder, pipeline, decode_device):
    from feeding.device import DeviceFeeder

    config = FeedConfig(pipeline=pipeline, batch_size=4, workers=1, spec=AugSpec((Resize((32, 32)),)), shuffle=False,
                        decode_device=decode_device)
    reference = [images.cpu() for images, _ in create_feeder(discover(image_folder), config)]
    feed = DeviceFeeder(create_feeder(discover(image_folder), config), "cuda", channels_last=True)
    delivered = list(feed)
    assert len(delivered) == len(reference)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    atol = 0.02 if decode_device == "cuda" else 1e-5  # nvJPEG decoding twice may differ by one level
    for (images, labels), raw in zip(delivered, reference):
        assert images.is_cuda and labels.is_cuda
        assert images.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(images.cpu(), (raw.float() / 255 - mean) / std, atol=atol, rtol=1e-5)
    for _ in zip(range(2), feed):
        pass  # a consumer that leaves mid-epoch: what the side stream held is waited for and let go
    assert len(list(feed)) == len(feed)
