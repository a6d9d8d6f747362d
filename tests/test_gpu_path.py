"""The GPU path: DeviceFeeder's CUDA prefetch over producers that hand out their own device buffers
(DALI's GPU decode), and scripts/gpu_check.sh.

On the CPU the prefetch's bookkeeping runs against fake streams and events: which stream is current
when the producer is asked for a batch, and how long each batch the producer handed out is held.
The tests marked ``gpu`` run the real thing (they skip cleanly without CUDA).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

import feeding.device as device_module
from feeding import FeedConfig, create_feeder, discover
from feeding.device import DeviceFeeder, SourceHold, normalize_uint8
from feeding.spec import AugSpec, Normalize, Resize

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
MEAN = torch.tensor(Normalize().mean).view(1, 3, 1, 1)
STD = torch.tensor(Normalize().std).view(1, 3, 1, 1)


# ---------------------------------------------------------------- fake streams and events


class FakeEvent:
    def __init__(self) -> None:
        self.done = False
        self.stream = None

    def record(self, stream) -> None:
        self.stream = stream
        stream.events.append(self)

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True


class FakeStream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[FakeEvent] = []
        self.waits_for: list[FakeStream] = []

    def wait_stream(self, other: FakeStream) -> None:
        self.waits_for.append(other)

    def synchronize(self) -> None:
        for event in self.events:
            event.done = True


class FakeCuda:
    """torch.cuda's streams and events as DeviceFeeder uses them, run on the CPU."""

    def __init__(self) -> None:
        self.main = FakeStream("main")
        self.current = self.main
        self.events: list[FakeEvent] = []
        self.recorded: list[tuple[torch.Tensor, FakeStream]] = []  # record_stream calls

    def Stream(self, device=None) -> FakeStream:  # noqa: N802 - torch's name
        return FakeStream("side")

    @contextlib.contextmanager
    def stream(self, stream: FakeStream):
        previous, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = previous

    def current_stream(self, device=None) -> FakeStream:
        return self.current

    def Event(self) -> FakeEvent:  # noqa: N802
        event = FakeEvent()
        self.events.append(event)
        return event


@pytest.fixture()
def fake_cuda(monkeypatch) -> FakeCuda:
    fake = FakeCuda()
    for name in ("Stream", "stream", "current_stream", "Event"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: fake.recorded.append((tensor, stream)))
    monkeypatch.setattr(device_module, "_pinned", lambda tensor: tensor)  # pinning needs a CUDA driver
    return fake


class DevicePool:
    """A producer as DALI on the GPU is one: each batch a new tensor object over its own memory, and a
    note, per batch, of the stream that was current when it was asked for it (the one DLPack orders
    after the producer's work)."""

    def __init__(self, fake: FakeCuda, batches: int) -> None:
        self.fake, self.batches = fake, batches
        self.asked_on: list[str] = []
        self.handed: list[weakref.ref] = []
        self.labels: list[torch.Tensor] = []  # kept: the yielded labels must not share their memory
        self.closed = False

    def __iter__(self):
        try:
            for number in range(self.batches):
                self.asked_on.append(self.fake.current.name)
                images = torch.full((2, 3, 4, 4), number, dtype=torch.uint8)
                self.handed.append(weakref.ref(images))
                self.labels.append(torch.full((2,), number))
                yield images, self.labels[-1]
        finally:
            self.closed = True

    def alive(self) -> list[bool]:
        return [ref() is not None for ref in self.handed]


def expected(number: int) -> torch.Tensor:
    return (torch.full((2, 3, 4, 4), float(number)) / 255 - MEAN) / STD


def prefetch(pool: DevicePool):
    return DeviceFeeder(pool, "cpu", normalize=Normalize())._cuda_prefetch()


# ---------------------------------------------------------------- the prefetch's bookkeeping (CPU)


def test_the_producer_is_asked_with_the_side_stream_current(fake_cuda):
    """DLPack makes the consumer's current stream wait for DALI's work on a batch: that must be the
    stream that reads it (the side stream), not the training stream."""
    pool = DevicePool(fake_cuda, 3)
    delivered = list(prefetch(pool))
    assert pool.asked_on == ["side", "side", "side"]
    assert [labels.tolist() for _, labels in delivered] == [[0, 0], [1, 1], [2, 2]]
    for number, (images, _) in enumerate(delivered):
        torch.testing.assert_close(images, expected(number))
    assert all(stream is fake_cuda.main for _, stream in fake_cuda.recorded)  # what is yielded is read there
    assert fake_cuda.main.waits_for and {s.name for s in fake_cuda.main.waits_for} == {"side"}


def test_a_batch_handed_out_is_held_until_the_side_streams_reads_of_it_complete(fake_cuda):
    pool = DevicePool(fake_cuda, 4)
    batches = prefetch(pool)
    next(batches)  # batch 0 yielded; batch 1 read on the side stream
    assert pool.alive() == [True, True]  # no read has completed: the producer may reuse neither
    fake_cuda.events[0].done = True
    next(batches)  # batch 2 read; the hold looks again
    assert pool.alive() == [False, True, True]
    next(batches)
    batches.close()  # the consumer leaves mid-epoch
    assert all(event.done for event in fake_cuda.events)  # every read waited for, then let go
    assert pool.alive() == [False, False, False, False] and pool.closed


def test_the_labels_yielded_are_never_the_producers_memory(fake_cuda):
    pool = DevicePool(fake_cuda, 2)
    delivered = list(prefetch(pool))
    assert not {labels.data_ptr() for _, labels in delivered} & {labels.data_ptr() for labels in pool.labels}


def test_the_hold_keeps_each_batch_until_its_event_completes_and_at_most_its_limit(fake_cuda):
    hold, side = SourceHold(limit=2), FakeStream("side")
    tensors = [torch.zeros(2) for _ in range(3)]
    refs = [weakref.ref(tensor) for tensor in tensors]
    for tensor in tensors:
        hold.hold((tensor,), side)
    del tensors, tensor
    first, second, third = fake_cuda.events
    assert first.done and not second.done and not third.done  # beyond the limit: the oldest waited for
    assert [ref() is not None for ref in refs] == [False, True, True] and len(hold) == 2
    hold.release_done()
    assert len(hold) == 2  # nothing completed
    second.done = True
    hold.release_done()
    assert [ref() is not None for ref in refs] == [False, False, True]
    hold.release_all()
    assert third.done and refs[2]() is None and len(hold) == 0


# ---------------------------------------------------------------- on a GPU


class RecyclingProducer:
    """DALI's contract on the GPU, made adversarial: each batch is written on the producer's own stream
    after some work, the current stream is made to wait for it (as DLPack does), and a buffer is
    overwritten as soon as no tensor over it is alive. The current stream is kept busy before its
    reads, so a buffer given back before those reads ran is overwritten under them."""

    PRODUCER_WORK_CYCLES = 2_000_000  # ~1 ms at 2 GHz: the decode
    READER_DELAY_CYCLES = 20_000_000  # ~10 ms: the side stream's reads come after later batches' writes

    def __init__(self, batches: int, shape=(4, 3, 32, 32)) -> None:
        self.batches, self.shape = batches, shape
        self.stream = torch.cuda.Stream()
        self.pool: list[tuple[torch.Tensor, weakref.ref | None]] = []
        self.new_buffers = 0

    def _buffer(self) -> int:
        for slot, (_, handed) in enumerate(self.pool):
            if handed is None or handed() is None:
                return slot  # nobody holds it: reuse, as DALI's pool does
        self.pool.append((torch.zeros(self.shape, dtype=torch.uint8, device="cuda"), None))
        self.new_buffers += 1
        return len(self.pool) - 1

    def __iter__(self):
        for number in range(self.batches):
            slot = self._buffer()
            buffer = self.pool[slot][0]
            with torch.cuda.stream(self.stream):
                torch.cuda._sleep(self.PRODUCER_WORK_CYCLES)
                buffer.fill_(number)
                ready = torch.cuda.Event()
                ready.record(self.stream)
            torch.cuda.current_stream().wait_event(ready)
            torch.cuda._sleep(self.READER_DELAY_CYCLES)
            handed = buffer[:]  # a new tensor object over the buffer, as a DLPack import is
            self.pool[slot] = (buffer, weakref.ref(handed))
            yield handed, torch.full((self.shape[0],), number)


@pytest.mark.gpu
def test_a_producer_that_recycles_its_buffers_is_never_read_after_reusing_them():
    producer = RecyclingProducer(batches=8)
    delivered = list(DeviceFeeder(producer, "cuda", normalize=Normalize(), channels_last=True))
    torch.cuda.synchronize()
    assert len(delivered) == 8
    for number, (images, labels) in enumerate(delivered):
        assert labels.tolist() == [number] * 4
        want = (torch.full(producer.shape, float(number)) / 255 - MEAN) / STD
        torch.testing.assert_close(images.cpu(), want)
    assert producer.new_buffers > 2  # buffers were still held while the side stream had not read them


@pytest.mark.gpu
def test_dali_gpu_batches_are_channels_last_views_normalized_on_the_side_stream(image_folder):
    pytest.importorskip("nvidia.dali")
    config = FeedConfig(pipeline="dali", batch_size=4, workers=2, spec=AugSpec((Resize((64, 48)),)), shuffle=False,
                        decode_device="cuda")
    raw = []
    for images, labels in create_feeder(discover(image_folder), config):
        assert images.is_cuda and images.shape[1:] == (3, 64, 48)
        assert images.is_contiguous(memory_format=torch.channels_last)  # HWC memory, no transpose
        raw.append((images.clone(), labels.clone()))
    for channels_last in (True, False):
        fed = list(DeviceFeeder(create_feeder(discover(image_folder), config), "cuda", channels_last=channels_last))
        assert len(fed) == len(raw)
        for (images, labels), (source, source_labels) in zip(fed, raw):
            memory = torch.channels_last if channels_last else torch.contiguous_format
            assert images.is_cuda and images.dtype == torch.float32 and images.is_contiguous(memory_format=memory)
            assert torch.equal(labels.cpu(), source_labels.cpu())
            want = normalize_uint8(source, MEAN.cuda(), STD.cuda(), torch.float32)
            torch.testing.assert_close(images, want, atol=0.02, rtol=0)  # nvJPEG twice: within one level


# ---------------------------------------------------------------- scripts/gpu_check.sh


def run_script(*args: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_gpu_check_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "results"
    result = run_script("--dry-run", "--out", str(out), "--people", "300")
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    for step in ("gpu", "wheels", "data", "consume", "feed", "e2e", "tune", "fit", "report"):
        assert f"  {step} " in plan
    assert "data sample" in plan and "--people 300" in plan
    assert "tune --device cuda" in plan and f"--out {out}" in plan
    assert not out.exists()


@pytest.mark.parametrize("args, message", [(("--people", "x"), "--people must be a positive whole number"),
                                           (("--bogus",), "unknown argument '--bogus'")])
def test_gpu_check_refuses_bad_arguments_in_one_line(args, message):
    result = run_script(*args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.timeout(600)
@pytest.mark.skipif(not os.environ.get("FEEDBENCH_NETWORK_TESTS"),
                    reason="downloads ~9 MiB of wheels from PyPI: set FEEDBENCH_NETWORK_TESTS=1 to run it")
def test_gpu_check_prepare_fetches_the_wheels_the_gpu_machine_lacks(tmp_path):
    wheels = tmp_path / "wheels"
    result = run_script("--prepare", str(wheels), timeout=500)
    if result.returncode != 0 and "could not fetch" in result.stderr:
        pytest.skip(f"no package index reachable: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    names = {path.name.split("-")[0].lower() for path in wheels.glob("*.whl")}
    assert names == {"albumentations", "albucore", "simsimd", "stringzilla", "pydantic", "pydantic_core",
                     "annotated_types", "typing_inspection", "simplejpeg"}
    compiled = [path.name for path in wheels.glob("*.whl") if "none-any" not in path.name]
    assert compiled and all("cp312" in name and "x86_64" in name for name in compiled)


def tiny_net(num_classes: int) -> torch.nn.Module:
    """A few-hundred-parameter CNN (``tests.test_gpu_path:tiny_net``): the steps' code, not a model's speed."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, num_classes))


def load_helper():
    """scripts/gpu_check.py as a module (scripts/ is no package); registered, as dataclasses need."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


@pytest.mark.timeout(600)
def test_gpu_check_steps_run_small_on_the_cpu_and_make_the_report(sample_dir, tmp_path):
    """The helper's steps, with the GPU check's code, on the CPU at a toy size: every point measured,
    each end-to-end row holds the tuner's forecast from its feed and model-side points, and the
    report holds every part."""
    helper = load_helper()
    small = ["--out", str(tmp_path), "--device", "cpu", "--size", "32", "--models", "tests.test_gpu_path:tiny_net",
             "--consume-batches", "8", "--consume-steps", "2", "--feed-workers", "1", "--feed-batch", "8"]
    assert helper.main(["consume", *small]) == 0
    assert helper.main(["feed", *small, "--data", str(sample_dir)]) == 0
    assert helper.main(["e2e", *small, "--data", str(sample_dir)]) == 0
    (tmp_path / "steps.tsv").write_text("consume\tok\t3\ntune\tfailed (exit 2)\t1\n")
    assert helper.main(["report", *small, "--steps", str(tmp_path / "steps.tsv"), "--name", "check"]) == 0
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["plan"]["device"] == "cpu" and report["provenance"]["commit"]
    assert [row["pipeline"] for row in report["feed"]][:2] == ["pil", "albumentations"]
    for part in ("consume", "feed", "e2e"):
        assert report[part] and not [row for row in report[part] if "error" in row], report[part]
    assert all(row["epoch_outlasts_read_ahead"] for row in report["feed"])
    fed = {(row["pipeline"], row["decode_device"]): row["ips"] for row in report["feed"]}
    assert {(row["pipeline"], row["decode_device"]) for row in report["e2e"]} == set(fed)
    for row in report["e2e"]:
        assert row["feed_ips"] == fed[row["pipeline"], row["decode_device"]]
        assert row["consume_ips"] == report["consume"][0]["ips"]
        assert 0 < row["predicted_ips"] <= min(row["feed_ips"], row["consume_ips"])  # the slowest stage, or less
        assert row["bottleneck"] in row["stages"] or row["bottleneck"] in ("input", "host", "model")
        assert row["measured_ips"] > 0 and 0 <= row["data_wait_fraction"] <= 1
        assert row["prediction_error"] == pytest.approx(row["measured_ips"] / row["predicted_ips"] - 1)
    assert report["steps"][1] == {"step": "tune", "status": "failed (exit 2)", "seconds": 1.0}
    markdown = (tmp_path / "check.md").read_text()
    assert "## End to end in fit's loop against the tuner's forecast" in markdown
    assert "| tune | failed (exit 2) |" in markdown
    assert "no recommendation was written" in markdown


def test_gpu_check_a_step_whose_every_point_failed_exits_1(sample_dir, tmp_path):
    helper = load_helper()
    no_consumption = ["--out", str(tmp_path), "--device", "cpu", "--data", str(sample_dir), "--models", "resnet50"]
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "feed.json").write_text(json.dumps([
        {"pipeline": "pil", "decode_device": "cpu", "workers": 1, "batch": 8, "ips": 100.0}]))
    assert helper.main(["e2e", *no_consumption]) == 1
    (row,) = json.loads((tmp_path / "parts" / "e2e.json").read_text())
    assert row["error"] == "RuntimeError: no consumption measured for resnet50 at batch 8"
