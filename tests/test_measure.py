import time

import pytest
import torch

from bench.measure import EpochIterable, measure, measure_feeder
from bench.stats import summarize


class FakeFeeder:
    """Epochs of ``n`` batches of ``size`` items; records which batches were drawn."""

    def __init__(self, n: int, size: int = 4):
        self.n, self.batch_size, self.epoch = n, size, 0
        self.drawn = 0

    def __iter__(self):
        self.epoch += 1
        for _ in range(self.n):
            self.drawn += 1
            yield [0] * self.batch_size, None


class BurstyFeeder(FakeFeeder):
    """Hands over ``block`` batches at once after one wait of ``wait_s`` seconds, as Ray Data
    delivers a block of batches; ``block`` batches are made ahead."""

    def __init__(self, n: int, block: int, wait_s: float, size: int = 4):
        super().__init__(n, size)
        self.block, self.wait_s = block, wait_s
        self.pipeline_depth = block

    def __iter__(self):
        self.epoch += 1
        for _ in range(self.n):
            if self.drawn % self.block == 0:
                time.sleep(self.wait_s)
            self.drawn += 1
            yield [0] * self.batch_size, None


def test_warmup_windows_and_epoch_starts_are_accounted_separately():
    feeder = FakeFeeder(n=3)
    result = measure_feeder(feeder, batches=4, repeats=2, warmup=1)
    assert result.images == 4 * 2 * 4 and result.batches == 8
    assert result.images_per_sec.n == 2 and len(result.windows) == 2
    # The run's first batch and 1 more are warm-up; then 8 timed batches, across epoch boundaries.
    assert feeder.drawn == 10 and result.epochs == 4 and result.first_batch_s.n == 4
    assert result.images_per_sec.min <= result.images_per_sec.median <= result.images_per_sec.max


def test_whole_epoch_windows_start_at_an_epoch_and_end_at_one():
    """Epochs of 3 batches, windows of at least 4: each window is 2 whole epochs, after the
    warm-up (the first batch + 1) and the rest of that first epoch."""
    feeder = FakeFeeder(n=3)
    result = measure_feeder(feeder, batches=4, repeats=2, warmup=1, whole_epochs=True)
    assert result.batches == 12 and result.images == 12 * 4 and len(result.windows) == 2
    # 2 warm-up + 1 skipped to reach an epoch start + 12 timed + the first batch of the epoch after.
    assert feeder.drawn == 2 + 1 + 12 + 1


def test_the_overall_rate_is_images_over_seconds_not_a_window_median():
    """A bursty feeder: every other window is a burst. The median picks one kind; the total is right."""
    from bench.measure import FeedMeasurement

    rate = summarize([10_000.0, 400.0, 10_000.0])
    measured = FeedMeasurement(rate, summarize([0.1]), images=3 * 128, batches=12, epochs=2,
                               windows=(10_000.0, 400.0, 10_000.0), seconds=2 * 128 / 10_000 + 128 / 400)
    assert measured.images_per_sec.median == 10_000.0
    assert measured.overall_images_per_sec == pytest.approx(384 / (0.0256 + 0.32))
    real = measure_feeder(FakeFeeder(n=3), batches=4, repeats=2, warmup=1)
    assert real.overall_images_per_sec == pytest.approx(real.images / real.seconds) and real.seconds > 0


def test_warmup_drains_the_batches_made_ahead():
    """A feeder whose workers run 6 batches ahead: those are warm-up, never timed."""
    feeder = FakeFeeder(n=3)
    feeder.pipeline_depth = 6
    result = measure_feeder(feeder, batches=4, repeats=2, warmup=1)
    assert feeder.drawn == 1 + 6 + 2 * 6  # and each window outlasts the read-ahead (6, not 4)
    assert result.window_batches == 6 and result.batches == 12


def test_a_window_shorter_than_the_read_ahead_is_lengthened_so_it_cannot_time_a_burst_alone():
    """Blocks of 4 batches, each after a 20 ms wait: windows of 2 would alternate a burst (two
    batches at once) and a wait. Lengthened to 4, every window holds one wait, and none is faster
    than the burst-free rate (4 batches per wait)."""
    feeder = BurstyFeeder(n=100, block=4, wait_s=0.02)
    result = measure_feeder(feeder, batches=2, repeats=4, warmup=1)
    assert result.window_batches == 4 and result.batches == 4 * 4 and len(result.windows) == 4
    assert result.notes and "lengthened from 2 to 4 batches" in result.notes[0]
    burst_free = feeder.block * feeder.batch_size / feeder.wait_s  # img/s when each block costs one wait
    assert max(result.windows) <= burst_free
    assert max(result.windows) < 1.5 * min(result.windows)  # every window pays the same
    assert measure_feeder(FakeFeeder(n=3), batches=4, repeats=1).notes == ()  # nothing made ahead: as asked


def test_measure_times_a_dataloader_as_feedbench_times_its_feeders():
    from torch.utils.data import DataLoader, TensorDataset

    images = torch.zeros(40, 3, 8, 8, dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.arange(40)), batch_size=4)  # 10 batches per epoch
    result = measure(loader, batches=3, repeats=2, warmup=1)
    assert result.images == 2 * 3 * 4 and result.batches == 6 and result.window_batches == 3
    assert result.epochs == 1 and result.first_batch_s.n == 1  # 2 warm-up + 6 timed batches: one epoch
    assert result.images_per_sec.n == 2 and result.overall_images_per_sec > 0
    feeder = FakeFeeder(n=3)  # anything with epoch and batch_size is timed as it is
    assert measure(feeder, batches=2, repeats=1, warmup=0).batches == 2 and feeder.drawn == 3


def test_a_dataloaders_workers_read_ahead_is_drained_and_outlasted():
    from torch.utils.data import DataLoader, TensorDataset

    dataset = TensorDataset(torch.zeros(40, 1), torch.zeros(40))  # 20 batches per epoch
    assert EpochIterable(DataLoader(dataset, batch_size=2)).pipeline_depth == 0
    loader = DataLoader(dataset, batch_size=2, num_workers=2, prefetch_factor=4)  # 8 batches made ahead
    assert EpochIterable(loader).pipeline_depth == 8
    result = measure(loader, batches=2, repeats=1, warmup=0)
    assert result.window_batches == result.batches == 8 and "lengthened from 2 to 8" in result.notes[0]


def test_measure_refuses_what_it_cannot_time_in_one_line(monkeypatch):
    with pytest.raises(TypeError, match="cannot time a int: expected a feedbench Feeder or an iterable"):
        measure(3)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu0'"):
        measure(FakeFeeder(n=3), device="gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available here"):
        measure(FakeFeeder(n=3), device="cuda")


@pytest.mark.parametrize("workers, executor, depth", [(3, "process", 6), (2, "thread", 4), (0, "auto", 0)])
def test_host_feeders_report_how_many_batches_they_make_ahead(image_folder, workers, executor, depth):
    from feeding import FeedConfig, create_feeder, discover
    from feeding.spec import train_spec

    config = FeedConfig(pipeline="albumentations", batch_size=2, workers=workers, prefetch_factor=2,
                        executor=executor, spec=train_spec((32, 32)))
    with create_feeder(discover(image_folder), config) as feeder:
        assert feeder.pipeline_depth == depth


def test_an_empty_epoch_is_an_error_not_a_hang():
    with pytest.raises(ValueError, match="no batch"):
        measure_feeder(FakeFeeder(n=0), batches=1, repeats=1)


def test_summary_statistics():
    summary = summarize([1, 2, 3, 4, 100])
    assert (summary.median, summary.min, summary.max, summary.n) == (3, 1, 100, 5)
    assert summary.iqr == 2
    with pytest.raises(ValueError):
        summarize([])


def _pid_and_modules():
    import os
    import sys

    return os.getpid(), "bench.tune" in sys.modules


def _raise_feed_error():
    from feeding.errors import FeedError

    raise FeedError("clear message from the child")


def test_in_fresh_process_runs_in_a_new_interpreter_and_reraises():
    import os

    import bench.tune  # noqa: F401  (loaded here; a fresh interpreter must not have it)
    from bench.isolate import in_fresh_process
    from feeding.errors import FeedError

    pid, has_tune = in_fresh_process(_pid_and_modules)
    assert pid != os.getpid() and not has_tune
    with pytest.raises(FeedError, match="clear message from the child"):
        in_fresh_process(_raise_feed_error)


def test_reported_commands_do_not_carry_machine_directories(tmp_path, monkeypatch):
    from bench.provenance import display_command
    from feeding.cache import cache_root

    data = cache_root() / "sample" / "v1-p60-s0"
    argv = ["--data", str(data), f"--out={tmp_path.home()}/runs", "--sizes", "224"]
    command = display_command("feedbench tune", argv)
    assert str(cache_root()) not in command and str(tmp_path.home()) not in command
    assert "<cache>/sample/v1-p60-s0" in command and "~/runs" in command and command.endswith("--sizes 224")
    monkeypatch.chdir(tmp_path)  # a relative path stays relative: resolved, it would name this directory
    assert display_command("feedbench compare", ["--out", "results"]) == "feedbench compare --out results"
