"""The one contract, checked for every backend on the same files."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feeding import FeedConfig, create_feeder, discover
from feeding.errors import FeedError
from feeding.spec import AugSpec, ColorJitter, HorizontalFlip, Resize, Rotate, train_spec
from tests.conftest import dominant_channel
from tests.imaging import psnr

PIPELINES = [
    "pil",
    "albumentations",
    pytest.param("dali", marks=pytest.mark.skipif(
        __import__("importlib").util.find_spec("nvidia.dali") is None, reason="nvidia-dali not installed")),
]
RESIZE_ONLY = AugSpec((Resize((64, 64)),))


def _config(pipeline: str, **overrides) -> FeedConfig:
    settings = dict(pipeline=pipeline, batch_size=5, workers=2, spec=RESIZE_ONLY, seed=3)
    settings.update(overrides)
    return FeedConfig(**settings)


def _digests(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in images]


def _epoch(feeder) -> tuple[list[str], list[int], list[torch.Tensor]]:
    digests, labels, batches = [], [], []
    for images, batch_labels in feeder:
        digests += _digests(images)
        labels += batch_labels.tolist()
        batches.append(images)
    return digests, labels, batches


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_batches_are_uint8_nchw_with_correct_labels(pipeline, image_folder):
    samples = discover(image_folder)
    with create_feeder(samples, _config(pipeline, spec=train_spec((96, 80)))) as feeder:
        images, labels = next(iter(feeder))
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 96, 80)
    assert labels.dtype == torch.int64 and labels.shape == (5,)
    # Class k is tinted towards channel k, and that survives rotate, flip and resize.
    assert dominant_channel(images).tolist() == labels.tolist()


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("drop_last", [True, False])
def test_len_and_every_image_once_per_epoch_reshuffled(pipeline, drop_last, image_folder):
    samples = discover(image_folder)  # 24 images
    feeder = create_feeder(samples, _config(pipeline, drop_last=drop_last))
    first, labels, batches = _epoch(feeder)
    second, _, _ = _epoch(feeder)
    assert len(batches) == len(feeder) == (4 if drop_last else 5)
    if drop_last:
        assert len(first) == 20 and all(len(b) == 5 for b in batches)
    else:
        assert len(first) == len(set(first)) == 24  # each image exactly once
        assert sorted(labels) == sorted(samples.labels.tolist())
        assert set(first) == set(second)
    assert first != second  # a new order every epoch
    feeder.close()


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_same_seed_same_stream(pipeline, image_folder):
    samples = discover(image_folder)
    spec = AugSpec((Rotate(20), Resize((48, 48)), HorizontalFlip()))
    runs = []
    for _ in range(2):
        with create_feeder(samples, _config(pipeline, spec=spec, seed=11)) as feeder:
            runs.append([_epoch(feeder)[0] for _ in range(2)])
    assert runs[0] == runs[1]
    with create_feeder(samples, _config(pipeline, spec=spec, seed=12)) as feeder:
        assert _epoch(feeder)[0] != runs[0][0]


@pytest.mark.parametrize("pipeline", ["pil", "albumentations"])
def test_host_stream_does_not_depend_on_worker_count_or_executor(pipeline, image_folder):
    samples = discover(image_folder)
    spec = AugSpec((Rotate(20), Resize((48, 48)), HorizontalFlip()))
    streams = {}
    for workers, executor in ((0, "auto"), (1, "process"), (3, "process"), (1, "thread"), (3, "thread")):
        with create_feeder(samples, _config(pipeline, spec=spec, workers=workers, executor=executor)) as feeder:
            assert feeder.executor == ("main" if workers == 0 else executor)
            streams[workers, executor] = [_epoch(feeder)[0] for _ in range(2)]
    first = streams[0, "auto"]
    assert first[0] != first[1]
    assert all(stream == first for stream in streams.values())


@pytest.mark.parametrize("pipeline, spec, executor", [
    ("albumentations", train_spec((48, 48)), "thread"),  # one fused warp: the GIL is released
    ("albumentations", AugSpec((Resize((48, 48)), ColorJitter(0.2, 0.2, 0.2))), "thread"),  # jitter as lookup tables
    # A colour op between geometric ones ends the fast path: albumentations' Python runs the rest.
    ("albumentations", AugSpec((Rotate(10), ColorJitter(0.2, 0.2, 0.2), Resize((48, 48)))), "process"),
    ("pil", train_spec((48, 48)), "process"),
])  # fmt: skip
def test_auto_executor_takes_threads_only_where_the_gil_is_released(pipeline, spec, executor, image_folder,
                                                                   monkeypatch):
    monkeypatch.setattr("feeding.backends.host.os.cpu_count", lambda: 2)  # a small machine, as CI's
    with create_feeder(discover(image_folder), _config(pipeline, spec=spec)) as feeder:
        assert feeder.executor == executor
        images, _ = next(iter(feeder))
    assert images.shape == (5, 3, 48, 48)


@pytest.mark.parametrize("cores, workers, expected", [(2, 2, "thread"), (4, 4, "thread"), (2, 6, "process"),
                                                      (16, 4, "process"), (16, 0, "main")])
def test_auto_executor_leaves_threads_to_small_machines(cores, workers, expected, image_folder):
    """On many cores the GIL caps threads well below processes (results/executors-*.txt)."""
    from feeding.backends.host import choose_executor

    feeder = create_feeder(discover(image_folder), _config("albumentations", spec=train_spec((32, 32)), workers=0))
    assert feeder.dataset.transform.releases_gil
    assert choose_executor("auto", feeder.dataset.transform, workers, cores) == expected
    assert choose_executor("process", feeder.dataset.transform, workers, cores) == (
        "main" if not workers else "process")


def test_close_stops_the_worker_threads(image_folder):
    config = _config("albumentations", spec=train_spec((32, 32)), executor="thread")
    feeder = create_feeder(discover(image_folder), config)
    epoch = iter(feeder)
    next(epoch)  # suspended mid-epoch, batches still queued
    threads = list(feeder._threads._threads)
    feeder.close()
    assert threads and not any(thread.is_alive() for thread in threads)


def test_closing_gives_the_main_process_its_opencv_thread_count_back(image_folder, monkeypatch):
    """OpenCV is single-threaded while an albumentations transform is open (worker threads share the
    main process's setting), and the count it found comes back when the last open one closes."""
    import cv2

    from feeding.backends import albu

    monkeypatch.setattr(albu, "MAIN_PROCESS_OPENCV", albu.SingleThreadedOpenCV())  # apart from other tests' feeders
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        config = _config("albumentations", spec=train_spec((32, 32)), executor="thread")
        with create_feeder(discover(image_folder), config) as feeder:
            epoch = iter(feeder)
            next(epoch)  # the worker threads ran (and the epoch is still open: abandoning it closes the feeder)
            assert cv2.getNumThreads() == 1
            other = albu.AlbumentationsTransform(config.plan, config.max_pixels)
            transform, clone = feeder.dataset.transform, feeder.dataset.transform.clone()
            epoch.close()
        # Closing the feeder closed its transform; a second close releases nothing more.
        transform.close()
        clone.close()  # a thread's clone holds nothing
        assert cv2.getNumThreads() == 1  # the other transform is still open
        other.close()
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_an_abandoned_thread_feeder_lets_python_exit_cleanly(image_folder):
    """Threads still in OpenCV code at exit would abort the interpreter (std::terminate)."""
    import subprocess
    import sys

    script = (
        "from feeding import FeedConfig, create_feeder, discover; from feeding.spec import train_spec\n"
        f"f = create_feeder(discover({str(image_folder)!r}), FeedConfig(pipeline='albumentations', "
        "batch_size=4, workers=2, executor='thread', spec=train_spec((64, 64))))\n"
        "next(iter(f)); print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    assert "terminate" not in result.stderr


def test_thread_workers_survive_an_abandoned_epoch(image_folder):
    config = _config("albumentations", spec=train_spec((32, 32)), executor="thread")
    with create_feeder(discover(image_folder), config) as feeder:
        next(iter(feeder))  # abandoned after one batch
        digests, _, batches = _epoch(feeder)
    assert len(batches) == len(feeder) and len(set(digests)) == len(digests)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_no_augmentation_draw_repeats_across_workers_and_epochs(pipeline, tmp_path, image_folder):
    # 12 copies of one image: any two identical outputs would mean a repeated draw.
    source = next((image_folder / "class0").iterdir())
    for i in range(12):
        (tmp_path / "only").mkdir(exist_ok=True)
        shutil.copy(source, tmp_path / "only" / f"copy{i:02d}.jpg")
    spec = AugSpec((Rotate(45), Resize((64, 64))))
    with create_feeder(discover(tmp_path), _config(pipeline, spec=spec, batch_size=3)) as feeder:
        outputs = _epoch(feeder)[0] + _epoch(feeder)[0] + _epoch(feeder)[0]
    assert len(outputs) == 36
    assert len(set(outputs)) == 36


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("size", [(224, 224), (96, 80)])  # 96x80: decode-time downscale on the fast paths
def test_parity_with_the_pil_reference(pipeline, size, image_folder):
    """The same deterministic spec through every backend agrees with plain PIL to >= 30 dB."""
    samples = discover(image_folder)
    config = _config(pipeline, spec=AugSpec((Resize(size),)), shuffle=False, drop_last=False, workers=1)
    with create_feeder(samples, config) as feeder:
        delivered = torch.cat([images for images, _ in feeder]).numpy()
    assert len(delivered) == len(samples)
    for path, image in zip(samples.paths, delivered):
        with Image.open(path) as img:
            reference = np.asarray(img.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))
        assert psnr(image.transpose(1, 2, 0), reference) >= 30.0, path


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_competition_layout_delivers_its_18_class_labels(pipeline, sample_dir):
    samples = discover(sample_dir)
    with create_feeder(samples, _config(pipeline, batch_size=7, drop_last=False)) as feeder:
        _, labels, _ = _epoch(feeder)
    assert sorted(labels) == sorted(samples.labels.tolist())
    assert max(labels) < 18


def test_unknown_pipeline_and_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown pipeline"):
        FeedConfig(pipeline="tensorflow")
    with pytest.raises(ValueError, match="batch_size"):
        FeedConfig(batch_size=0)
    with pytest.raises(ValueError, match="on_bad"):
        FeedConfig(on_bad="ignore")
    with pytest.raises(ValueError, match="only the dali pipeline"):
        FeedConfig(pipeline="pil", decode_device="cuda")


def test_more_shards_than_images_is_a_clear_error(image_folder):
    samples = discover(image_folder).subset(np.arange(3))
    with pytest.raises(FeedError, match="shards"):
        len(create_feeder(samples, _config("pil", num_shards=4, shard_id=3)))


def _path_stream(feeder) -> list[list[str]]:
    """Which files each batch of one epoch holds (read from the sampler the feeder iterates)."""
    feeder._sampler.epoch = feeder.epoch
    keys = list(feeder._sampler)
    feeder.epoch += 1
    return [[str(feeder.samples.paths[i]) for i in key.indices] for key in keys]


@pytest.mark.parametrize("n, batch_size, drop_last", [(24, 5, False), (23, 5, False), (23, 4, True)])
def test_host_shards_follow_distributed_sampler(image_folder, n, batch_size, drop_last):
    """Every rank: the same number of batches; together all files (padded with repeats to equal
    shares, as DistributedSampler does); a new global shuffle each epoch via set_epoch."""
    samples = discover(image_folder).subset(np.arange(n))
    feeders = [create_feeder(samples, _config("pil", batch_size=batch_size, drop_last=drop_last, num_shards=2,
                                              shard_id=rank, workers=0)) for rank in range(2)]
    assert len(feeders[0]) == len(feeders[1]) and feeders[0].num_samples == -(-n // 2)
    epochs = []
    for epoch in range(2):
        for feeder in feeders:
            feeder.set_epoch(epoch)
        shards = [sum(_path_stream(feeder), []) for feeder in feeders]
        if not drop_last:
            assert set(shards[0]) | set(shards[1]) == set(map(str, samples.paths))
            assert len(shards[0]) == len(shards[1]) == -(-n // 2)
            repeats = len(shards[0]) + len(shards[1]) - n
            assert len(set(shards[0]) & set(shards[1])) <= repeats
        epochs.append(shards)
    assert epochs[0] != epochs[1]


def test_shards_draw_different_augmentations(tmp_path, image_folder):
    """Batch k of rank 0 and batch k of rank 1 must not share rotations and flips."""
    source = next((image_folder / "class0").iterdir())
    (tmp_path / "only").mkdir()
    for i in range(8):
        shutil.copy(source, tmp_path / "only" / f"copy{i}.jpg")
    spec = AugSpec((Rotate(45), Resize((48, 48)), HorizontalFlip()))
    first_batches = []
    for rank in range(2):
        config = _config("albumentations", spec=spec, batch_size=4, num_shards=2, shard_id=rank, workers=0)
        with create_feeder(discover(tmp_path), config) as feeder:
            first_batches.append(_digests(next(iter(feeder))[0]))
    assert not set(first_batches[0]) & set(first_batches[1])


class _GlobalDrawTransform:
    """Wraps a PIL transform: stamps each image with a draw from NumPy's *global* generator."""

    @staticmethod
    def make(config):
        from feeding.backends.pil import PilTransform

        class Stamped(PilTransform):
            def augment(self, decoded, rng):
                image = np.array(super().augment(decoded, rng))
                image[0, :8, 0] = np.frombuffer(np.random.bytes(8), dtype=np.uint8)
                return image

        return Stamped(config.plan, config.max_pixels)


def test_worker_global_rngs_are_reseeded_per_epoch_and_reproducible(image_folder):
    from feeding.backends.host import HostFeeder

    config = _config("pil", workers=2, batch_size=4)
    samples = discover(image_folder)

    def stamps(feeder):
        return [bytes(img[0, 0, :8].numpy()) for images, _ in feeder for img in images]

    running = HostFeeder(samples, config, _GlobalDrawTransform.make(config))
    epoch0, epoch1 = stamps(running), stamps(running)
    running.close()
    fresh = HostFeeder(samples, config, _GlobalDrawTransform.make(config))
    fresh.set_epoch(1)
    assert stamps(fresh) == epoch1  # each epoch's worker seeds come from (seed, epoch, worker)
    fresh.close()
    assert not set(epoch0) & set(epoch1)
    assert len(set(epoch0)) == len(epoch0)  # and no two workers share a stream


@pytest.mark.parametrize("pipeline", ["pil", "albumentations"])
@pytest.mark.parametrize("size", [(224, 224), (96, 80)])
def test_fused_warp_agrees_with_the_step_by_step_reference(pipeline, size, image_folder):
    """Resize, rotate and flip fused into one warp: same draws, same picture (>= 30 dB) as PIL step by step."""
    from feeding.spec import HorizontalFlip

    samples = discover(image_folder)
    spec = AugSpec((Rotate(10), Resize(size), HorizontalFlip(0.5)))
    common = dict(spec=spec, shuffle=False, drop_last=False, workers=0, seed=5)
    fused_config = _config(pipeline, **common)
    assert fused_config.plan.fused_steps == 3
    reference_config = _config("pil", fast_paths=False, **common)
    assert reference_config.plan.fused_steps == 0
    with create_feeder(samples, fused_config) as fused, create_feeder(samples, reference_config) as reference:
        pairs = list(zip(torch.cat([x for x, _ in fused]).numpy(), torch.cat([x for x, _ in reference]).numpy()))
    assert len(pairs) == len(samples)
    for got, expected in pairs:
        assert psnr(got, expected) >= 30.0


def _with_a_corrupt_file(tmp_path, image_folder, position: int = 4) -> list[str]:
    """A copy of the image folder whose class1 has one truncated JPEG; returns the readable paths."""
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    victim = sorted((root / "class1").iterdir())[position]
    victim.write_bytes(victim.read_bytes()[:300])  # a header and no scan data
    return sorted(str(p) for p in root.rglob("*.jpg") if p != victim)


@pytest.mark.parametrize("pipeline, executor", [("pil", "process"), ("albumentations", "process"),
                                                ("albumentations", "thread"), ("dali", "auto")])
@pytest.mark.parametrize("batch_size", [5, 8])
def test_validation_delivers_every_readable_file_exactly_once(pipeline, executor, batch_size, tmp_path,
                                                              image_folder):
    """shuffle=False, drop_last=False: no substitute fills a bad file's slot, on any backend, so
    validation metrics do not depend on the backend or the batch size."""
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    readable = _with_a_corrupt_file(tmp_path, image_folder)
    samples = discover(tmp_path / "data")
    config = _config(pipeline, spec=RESIZE_ONLY, shuffle=False, drop_last=False, executor=executor,
                     batch_size=batch_size, workers=2)
    with create_feeder(samples, config) as feeder:
        digests, labels, _ = _epoch(feeder)
        assert len(feeder.skipped) == 1
    assert len(digests) == len(readable) == 23
    assert len(set(digests)) == 23  # no image twice
    by_path = dict(zip(samples.paths.tolist(), samples.labels.tolist()))
    assert labels == [by_path[p] for p in readable]  # in file order, each with its own label


@pytest.mark.parametrize("pipeline", ["pil", "albumentations"])
def test_training_keeps_batches_full_with_a_substitute(pipeline, tmp_path, image_folder):
    _with_a_corrupt_file(tmp_path, image_folder)
    config = _config(pipeline, spec=RESIZE_ONLY, batch_size=4, drop_last=True, workers=1)
    with create_feeder(discover(tmp_path / "data"), config) as feeder:
        sizes = [len(labels) for _, labels in feeder]
        assert len(feeder.skipped) == 1
    assert sizes == [4] * 6


def test_worker_counts_that_cannot_pay_are_noted(image_folder):
    from feeding.feeder import worker_notes

    assert worker_notes(2, 2, 10) == []
    assert "beyond 2x the cores" in worker_notes(9, 4, 100)[0]
    assert worker_notes(6, 8, 4) == ["6 workers for 4 batches per epoch: 2 of them have no batch to make"]
    with create_feeder(discover(image_folder), _config("pil", batch_size=12, workers=3)) as feeder:
        assert any("3 workers for 2 batches per epoch" in note for note in feeder.notes)


def test_worker_processes_outlast_a_sigterm_to_the_job_and_end_with_close(image_folder):
    """A preempting scheduler may send SIGTERM to every process of the job: the workers ignore it, so
    that training.fit can take the batches up to its checkpoint; close() still ends them."""
    import os
    import signal

    config = FeedConfig(pipeline="pil", batch_size=4, workers=2, executor="process",
                        spec=AugSpec((Resize((32, 32)),)))
    feeder = create_feeder(discover(image_folder), config)
    batches = iter(feeder)
    next(batches)
    workers = [w.pid for w in feeder._data_loader._iterator._workers]
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    assert len(list(batches)) == len(feeder) - 1  # the epoch goes on: no worker died
    assert all(Path(f"/proc/{pid}").exists() for pid in workers)  # persistent, between epochs
    feeder.close()
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # ended and reaped
