"""The one iteration contract every backend honours, and its config.

A Feeder yields ``(images, labels)``: ``images`` a uint8 tensor of shape
(N, 3, H, W) and ``labels`` an int64 tensor of shape (N,). It has a DataLoader's
semantics: ``len()`` in batches, ``drop_last``, a fresh shuffle each time it is
iterated (each epoch), and the same stream for the same seed.

Its ``state_dict()`` says where that stream stands (``feeding.state``); a feeder given
it by ``load_state_dict()`` delivers next exactly what the original would have, as
torchdata's StatefulDataLoader does, but without decoding the batches it skips.
"""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from feeding import checks
from feeding.backends import BACKENDS, Capabilities, capabilities
from feeding.errors import BadFile, FeedError
from feeding.plan import Plan, make_plan
from feeding.sources import Samples
from feeding.spec import AugSpec, train_spec
from feeding.spec_file import spec_record
from feeding.state import check_state, state_record, stream_fingerprint

ON_BAD = ("skip", "fail")
# Who makes the CPU pipelines' batches: worker processes (a DataLoader), threads, or
# "auto": threads where the transform's hot path releases the GIL, processes elsewhere.
EXECUTORS = ("auto", "process", "thread")
DEFAULT_MAX_PIXELS = 64_000_000  # refuse larger images before decoding them (decompression bombs)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class FeedConfig:
    """Everything that decides what a feeder delivers and how fast; validated when built."""

    pipeline: str = "pil"
    batch_size: int = 64
    workers: int = 2
    executor: str = "auto"  # host pipelines only; see EXECUTORS
    spec: AugSpec = field(default_factory=train_spec)
    shuffle: bool = True
    drop_last: bool = True
    seed: int = 0
    on_bad: str = "skip"
    prefetch_factor: int = 2
    literal_order: bool = False  # each op its own step, in the written order (to measure what fusing gains)
    fast_paths: bool = True  # let the planner fuse crop/resize/rotate/flip into one warp
    reorder: bool = False  # let the planner run shrinking ops first: cheaper step by step, a different picture
    decode_device: str = "cpu"  # "cpu", or "cuda"/"cuda:N" for DALI's GPU ("mixed") decode
    shard_id: int = 0
    num_shards: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    worker_timeout_s: float = 120.0  # a worker silent this long is reported dead, not waited on
    cache_dir: str | None = None  # where validation scans are cached (default: feeding.cache)

    def __post_init__(self) -> None:
        backend = capabilities(self.pipeline)
        checks.choice("executor", self.executor, EXECUTORS)
        checks.choice("on_bad", self.on_bad, ON_BAD)
        checks.count("batch_size", self.batch_size)
        checks.count("workers", self.workers, minimum=0)
        checks.count("prefetch_factor", self.prefetch_factor)
        checks.count("num_shards", self.num_shards)
        if not (0 <= checks.count("shard_id", self.shard_id, minimum=0) < self.num_shards):
            raise ValueError(f"need 0 <= shard_id < num_shards, got {self.shard_id} of {self.num_shards}")
        checks.count("max_pixels", self.max_pixels)
        checks.positive("worker_timeout_s", self.worker_timeout_s)
        checks.device("decode_device", self.decode_device)
        if self.literal_order and self.reorder:
            raise ValueError("literal_order runs the written order; it cannot also reorder")
        if self.decode_device != "cpu" and not backend.gpu_decode:
            gpu = " or ".join(name for name, b in BACKENDS.items() if b.gpu_decode)
            raise ValueError(f"only the {gpu} pipeline decodes on the GPU; use decode_device='cpu'")

    @property
    def capabilities(self) -> Capabilities:
        return capabilities(self.pipeline)

    @property
    def plan(self) -> Plan:
        return make_plan(self.spec, literal=self.literal_order, fuse=self.fast_paths and not self.literal_order,
                         reorder=self.reorder)

    @property
    def gpu_id(self) -> int | None:
        """The CUDA device index for GPU decode, or None for CPU decode."""
        return checks.device_index(self.decode_device)


def worker_notes(workers: int, cores: int, batches: int) -> list[str]:
    """Warnings for worker counts that cannot pay (pure): far above the cores, or above the
    batches of an epoch (each worker makes whole batches, so the rest have nothing to do)."""
    notes = []
    if workers > 2 * cores:
        notes.append(f"{workers} workers on {cores} cores: beyond 2x the cores, workers only take turns "
                     "on them (and each holds its own memory)")
    if batches and workers > batches:
        notes.append(f"{workers} workers for {batches} batches per epoch: {workers - batches} of them have "
                     "no batch to make")
    return notes


def check_shards(n: int, num_shards: int) -> None:
    if num_shards > n:
        raise FeedError(f"{num_shards} shards for {n} images: some shards would be empty")


def shard_indices(n: int, shard_id: int, num_shards: int) -> np.ndarray:
    """Contiguous, disjoint shard of ``range(n)`` (as DALI's reader shards)."""
    check_shards(n, num_shards)
    start = n * shard_id // num_shards
    stop = n * (shard_id + 1) // num_shards
    return np.arange(start, stop)


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


class Feeder(ABC):
    """Base of every backend. Subclasses implement ``_epoch_batches``."""

    executor: str | None = None  # who makes the batches where the backend chooses ("process", "thread", "main")

    def __init__(self, samples: Samples, config: FeedConfig) -> None:
        self.config = config
        self.samples = samples
        self.skipped: list[BadFile] = []
        self.notes: list[str] = []  # settings worth a warning (the CLIs print them)
        self.epoch = 0  # the epoch the next ``iter()`` will deliver
        self._position = (0, 0)  # (epoch, batches of it delivered): what state_dict() reports
        self._resume_at: tuple[int, int] | None = None  # where the next iter() starts, if not a batch 0

    def _take_listing_problems(self) -> None:
        """The rows ``discover`` left out: skipped files to report, or (on_bad="fail") an error."""
        problems = self.samples.problems
        if self.config.on_bad == "fail" and problems:
            raise FeedError(f"{len(problems)} problem(s) while listing the data, first: "
                            f"{problems[0].path}: {problems[0].reason}")
        self._record_skips(list(problems))

    def _check_settings(self, workers: int) -> None:
        """Refuse a batch that the data cannot fill once; note worker counts that cannot pay.

        Backends call this once their samples are final (after a scan that drops bad files).
        """
        cfg, usable = self.config, self.num_samples
        if cfg.drop_last and usable < cfg.batch_size:
            where = " in this shard" if cfg.num_shards > 1 else ""
            left_out = f", {len(self.skipped)} file(s) left out as unreadable" if self.skipped else ""
            raise FeedError(f"batch {cfg.batch_size} > {usable} usable images{where}{left_out}: no full batch "
                            "can be made; lower the batch size")
        self.notes.extend(worker_notes(workers, os.cpu_count() or 1, len(self)))

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def plan(self) -> Plan:
        return self.config.plan

    @property
    def num_samples(self) -> int:
        """Images this feeder (this shard) delivers per epoch before drop_last.

        The same on every shard, so that every rank of a distributed run takes the
        same number of steps (a rank with one batch more would hang DDP's last
        all-reduce): here the smallest shard's size, ``n // num_shards``. Backends
        that pad shards instead (DistributedSampler) say so by overriding this.
        """
        n, shards = len(self.samples), self.config.num_shards
        check_shards(n, shards)
        return n // shards

    def __len__(self) -> int:
        return batches_per_epoch(self.num_samples, self.config.batch_size, self.config.drop_last)

    @property
    def pipeline_depth(self) -> int:
        """Batches the workers make ahead of the consumer (what a benchmark must drain first)."""
        return 0

    @property
    def capabilities(self) -> Capabilities:
        return self.config.capabilities

    def describe_workers(self) -> str:
        """Who makes the batches, in a few words (``--show-plan``, reports)."""
        return f"{self.config.workers} {self.capabilities.workers}"

    def describe_steps(self) -> str:
        """Which code runs the plan's steps, where the backend can say (``--show-plan``); "" elsewhere."""
        return ""

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (and so the shuffle) that the next ``iter()`` delivers: from its first batch,
        or where a loaded state stands, if it stands in that epoch."""
        self.epoch = epoch
        if self._resume_at is not None and self._resume_at[0] != epoch:
            self._resume_at = None
        self._position = self._resume_at or (epoch, 0)

    def next_start(self) -> tuple[int, int]:
        """(epoch, batch number) where the next ``iter()`` starts."""
        resume = self._resume_at
        return (self.epoch, resume[1] if resume is not None and resume[0] == self.epoch else 0)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.next_start()
        self._resume_at = None
        self.epoch += 1
        self._position = (epoch, start)
        for number, batch in enumerate(self._epoch_batches(epoch, start), start + 1):
            self._position = (epoch, number)  # before the yield: the consumer holds this batch now
            yield batch

    # -- state

    def fingerprint(self) -> dict:
        """What decides this feeder's stream (``feeding.state.stream_fingerprint``)."""
        return stream_fingerprint(self.samples, self.config, spec_record(self.config.spec))

    def _known_fingerprint(self) -> dict:
        """``fingerprint()``, computed once: the samples and config are fixed, and hashing every path at each
        step checkpoint would cost tens of ms on a large data set."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self.fingerprint()
        return self._fingerprint

    def state_dict(self) -> dict:
        """Where the stream stands: the epoch and the batches of it delivered (an epoch's end is the next
        one's start), with the fingerprint that ``load_state_dict`` checks. JSON-safe; small."""
        return self.state_at(self._position)

    def state_at(self, position: tuple[int, int]) -> dict:
        """The state at ``position`` (epoch, batches delivered): ``state_dict()`` of a consumer that has taken
        fewer batches than this feeder delivered (a prefetching wrapper, ``feeding.device``)."""
        return state_record(position, self._known_fingerprint(), len(self), **self._extra_state(position))

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (another feeder's ``state_dict()``, possibly with another worker count):
        the next ``iter()`` delivers the batch after the last one that feeder delivered. A state from
        another data set, spec, batch size, seed, shard or backend is refused (``FeederStateError``)."""
        epoch, batches = check_state(state, self._known_fingerprint(), len(self))
        self._load_extra_state(state, (epoch, batches))
        self.start_at(epoch, batches)

    def start_at(self, epoch: int, batches: int) -> None:
        """Let the next ``iter()`` deliver ``epoch`` from its batch number ``batches`` on (unchecked)."""
        self.epoch = epoch
        self._position = (epoch, batches)
        self._resume_at = (epoch, batches) if batches else None

    def _extra_state(self, position: tuple[int, int]) -> dict:
        """What a backend adds to its state at ``position`` (e.g. DALI's own checkpoint); JSON-safe."""
        return {}

    def _load_extra_state(self, state: dict, position: tuple[int, int]) -> None:
        """Take what ``_extra_state`` added (raise ``FeederStateError`` where it does not fit)."""

    def _record_skips(self, records: list[BadFile]) -> None:
        for record in records:
            if record not in self.skipped:
                self.skipped.append(record)

    @abstractmethod
    def _epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Yield the batches of one epoch from its batch number ``start`` on, without making those before."""

    def close(self) -> None:
        """Release workers or pipelines (optional)."""

    def __enter__(self) -> "Feeder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
