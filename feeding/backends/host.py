"""CPU backends: one batch per worker task, skips kept out of batches.

Workers build whole batches (the sampler hands out lists of indices), writing
each image straight into one preallocated uint8 array: no per-sample tensors,
no default_collate. The array is NHWC, so each image lands with one contiguous
copy (a transposing copy into NCHW costs ~15x more), and the batch is delivered
as an (N, 3, H, W) tensor in channels_last memory format, which is what
convolutions on the device prefer anyway.

The workers are torch DataLoader processes, or threads (backends/threads.py)
where the transform releases the GIL. A file that fails to load travels back
with its batch to be reported. With ``drop_last`` (training) it is replaced by
another randomly drawn file, so batches stay full; the replacement carries its
own label. Without ``drop_last`` (validation, prediction) its slot is left out
and the batch is one image shorter: every readable file is delivered exactly
once, as DALI (which drops bad files after its scan) delivers them, so metrics
do not depend on the backend.
"""
from __future__ import annotations

import copy
import os
import signal
import threading
import time
import traceback
import warnings
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from feeding import decode, seeding
from feeding.affine import REVEALS
from feeding.errors import BadFile, BadImageError, FeedError
from feeding.feeder import Batch, FeedConfig, Feeder, check_shards
from feeding.backends.threads import ThreadBatches
from feeding.plan import Plan
from feeding.resources import check_worker_memory
from feeding.sources import Samples

# Give up after this many unreadable files in a row: the data set is broken, not a few files.
MAX_CONSECUTIVE_FAILURES = 64


STAGES = ("read", "decode", "augment", "collate")


class HostTransform(ABC):
    """Turns one file into one HxWx3 uint8 image of the plan's output size, in three timed stages.

    ``read`` fetches the bytes (from storage, or from ``byte_cache`` when a
    benchmark preloads them to measure what storage costs), ``decode`` turns
    them into pixels, ``augment`` runs the plan's steps.
    """

    def __init__(self, plan: Plan, max_pixels: int) -> None:
        self.plan = plan
        self.max_pixels = max_pixels
        self.byte_cache: dict[str, bytes] | None = None

    def read(self, path: str) -> bytes:
        if self.byte_cache is not None and path in self.byte_cache:
            return self.byte_cache[path]
        return decode.read_bytes(path)

    @abstractmethod
    def decode(self, path: str, data: bytes, rng: np.random.Generator):
        """Pixels (in whatever form ``augment`` takes), plus what the plan decided on the way."""

    @abstractmethod
    def augment(self, decoded, rng: np.random.Generator) -> np.ndarray:
        """The plan's steps; returns HxWxC uint8 (C = 3, or 4 where ``write`` drops a padding channel)."""

    def write(self, image: np.ndarray, out: np.ndarray) -> None:
        """Put ``augment``'s result into ``out`` (HxWx3, a slot of the batch)."""
        out[...] = image

    def __call__(self, path: str, rng: np.random.Generator) -> np.ndarray:
        """One file through every stage: HxWx3 uint8."""
        out = np.empty((*self.plan.output_size, 3), dtype=np.uint8)
        self.write(self.augment(self.decode(path, self.read(path), rng), rng), out)
        return out

    def setup_worker(self, in_worker: bool) -> None:
        """Per-process settings (e.g. library thread counts): once per worker process, and in the main
        process (``in_worker=False``) before workers fork or threads start, until ``close``."""

    def close(self) -> None:
        """Give back what ``setup_worker(in_worker=False)`` took in the main process."""

    def start_batch(self, rng: np.random.Generator) -> None:
        """Called before each batch with the batch's generator (e.g. to seed a library)."""

    @property
    def releases_gil(self) -> bool:
        """True when decode and augment spend their time in C code that releases the GIL,
        so that threads scale like processes (the "auto" executor then picks threads)."""
        return False

    def describe_steps(self) -> str:
        """Which code runs each plan step (``Feeder.describe_steps``)."""
        fused = self.plan.steps[:self.plan.fused_steps]
        if not fused:
            return "one PIL call per step"
        if any(op.warp_role in REVEALS for op in fused):
            head = f"steps 1-{len(fused)}: one PIL transform (+ its antialiased resize where it shrinks)"
        else:
            head = f"steps 1-{len(fused)}: one PIL antialiased crop-and-resize (no rotation, no warp)"
        return head + ("; the rest: one PIL call each" if len(fused) < len(self.plan.steps) else "")

    def gil_holders(self) -> str:
        """What holds the GIL per image, in words, where ``releases_gil`` is False (reports, --show-plan)."""
        return "PIL's per-image Python (decode set-up, each op's call)"

    def clone(self) -> "HostTransform":
        """A copy for another thread: shares the read-only parts (plan, byte cache), not library state."""
        return copy.copy(self)


@dataclass(frozen=True)
class BatchKey:
    """What the sampler hands a worker: which images make up one batch, and where it sits."""

    epoch: int
    number: int
    indices: np.ndarray


class EpochBatchSampler(Sampler[BatchKey]):
    """Yields the BatchKeys of one epoch: this shard's samples, shuffled per epoch.

    One shard: a permutation per epoch from feeding.seeding. Several shards (one
    per rank of a distributed run): torch's DistributedSampler with ``set_epoch``,
    so every rank draws from the same global shuffle, takes every
    ``num_shards``-th sample of it, and pads with repeats to an equal count.
    """

    def __init__(self, n: int, config: FeedConfig, epoch: int, start: int = 0) -> None:
        check_shards(n, config.num_shards)
        self.n = n
        self.config = config
        self.epoch = epoch
        self.start = start  # the first batch number yielded: a resumed epoch skips the keys before it

    @property
    def shard_size(self) -> int:
        return -(-self.n // self.config.num_shards)  # DistributedSampler pads to ceil(n / shards)

    def _order(self) -> np.ndarray:
        cfg = self.config
        if cfg.num_shards == 1:
            if not cfg.shuffle:
                return np.arange(self.n)
            return seeding.epoch_permutation(self.n, cfg.seed, self.epoch)
        sampler = DistributedSampler(range(self.n), num_replicas=cfg.num_shards, rank=cfg.shard_id,
                                     shuffle=cfg.shuffle, seed=cfg.seed, drop_last=False)
        sampler.set_epoch(self.epoch)
        return np.fromiter(sampler, dtype=np.int64, count=sampler.num_samples)

    def __iter__(self) -> Iterator[BatchKey]:
        cfg = self.config
        order = self._order()
        stop = len(order) - len(order) % cfg.batch_size if cfg.drop_last else len(order)
        for number in range(self.start, -(-stop // cfg.batch_size)):
            first = number * cfg.batch_size
            yield BatchKey(self.epoch, number, order[first : first + cfg.batch_size])

    def __len__(self) -> int:
        n, b = self.shard_size, self.config.batch_size
        return n // b if self.config.drop_last else -(-n // b)


class EpochStream(Sampler[BatchKey]):
    """The BatchKeys of epoch ``first_epoch``, then of the next epochs, without end.

    Iterated by one long-lived DataLoader (or thread pool), it keeps the workers busy across
    an epoch's end: while the consumer takes an epoch's last batches, the workers already make
    the next epoch's first ones, instead of draining to empty and refilling from cold (on the
    sample's 6-batch epochs with 2 workers x prefetch 2, the refill was a third of the epoch).
    ``first_epoch`` and ``first_batch`` are read when iteration starts: set them, then iterate anew, to jump.
    """

    def __init__(self, n: int, config: FeedConfig, first_epoch: int = 0) -> None:
        self.epochs = EpochBatchSampler(n, config, first_epoch)
        self.first_epoch = first_epoch
        self.first_batch = 0  # of the first epoch (a resumed one); later epochs start at their batch 0

    def __iter__(self) -> Iterator[BatchKey]:
        epoch, start = self.first_epoch, self.first_batch
        while True:
            self.epochs.epoch, self.epochs.start = epoch, start
            yield from iter(self.epochs)
            epoch, start = epoch + 1, 0


@dataclass
class WorkerBatch:
    """What a worker sends back: the batch, the files it skipped, and seconds spent per stage."""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    skipped: list[BadFile]
    stage_seconds: dict[str, float]


class BatchDataset(Dataset):
    """``dataset[BatchKey]`` -> (images uint8 NCHW, labels int64, skipped files)."""

    def __init__(self, samples: Samples, transform: HostTransform, config: FeedConfig) -> None:
        self.paths = samples.paths
        self.labels = samples.labels
        self.transform = transform
        self.config = config
        self._globals_epoch: int | None = None  # the epoch this worker's global RNGs were seeded for

    def __len__(self) -> int:
        return len(self.paths)

    def for_thread(self) -> "BatchDataset":
        """This dataset with a transform of its own, for one worker thread."""
        twin = copy.copy(self)
        twin.transform = self.transform.clone()
        return twin

    def __getitem__(self, key: BatchKey) -> WorkerBatch:
        """Under on_bad="fail" an unreadable file comes back as images=None, not as an
        exception: DataLoader re-raises worker exceptions as bare RuntimeErrors."""
        self._seed_worker_globals(key.epoch)
        stages = dict.fromkeys(STAGES, 0.0)
        try:
            images, labels, skipped = self._make_batch(key, stages)
        except BadImageError as error:
            return WorkerBatch(None, None, [error.record()], stages)
        return WorkerBatch(images, labels, skipped, stages)

    def _seed_worker_globals(self, epoch: int) -> None:
        """Workers live across epochs; reseed Python, NumPy and torch at each new epoch's first batch."""
        info = get_worker_info()
        if info is not None and epoch != self._globals_epoch:
            seeding.seed_globals(seeding.worker_seed(self.config.seed, epoch, info.id, self.config.shard_id))
            self._globals_epoch = epoch

    def _make_batch(self, key: BatchKey, stages: dict[str, float]):
        height, width = self.transform.plan.output_size
        rng = seeding.batch_rng(self.config.seed, key.epoch, key.number, self.config.shard_id)
        self.transform.start_batch(rng)
        images = np.empty((len(key.indices), height, width, 3), dtype=np.uint8)
        labels = np.empty(len(key.indices), dtype=np.int64)
        skipped: list[BadFile] = []
        filled = 0
        for index in key.indices:
            used = self._load_into(images, filled, int(index), rng, skipped, stages)
            if used is not None:
                labels[filled] = self.labels[used]
                filled += 1
        images, labels = images[:filled], labels[:filled]  # leading slices: still contiguous
        # (N, 3, H, W) over NHWC storage: torch's channels_last format, no copy.
        return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels), skipped

    def _load_into(self, images, slot: int, index: int, rng, skipped: list[BadFile], stages) -> int | None:
        """Fill images[slot] from sample ``index``; the sample used, or None when it is unreadable
        and the slot stays empty (no ``drop_last``: each readable file exactly once). With
        ``drop_last`` an unreadable sample is replaced by a random substitute."""
        transform, clock = self.transform, time.perf_counter
        for _ in range(MAX_CONSECUTIVE_FAILURES):
            path = str(self.paths[index])
            try:
                t0 = clock()
                data = transform.read(path)
                t1 = clock()
                decoded = transform.decode(path, data, rng)
                t2 = clock()
                image = transform.augment(decoded, rng)
                t3 = clock()
            except BadImageError as error:
                if self.config.on_bad == "fail":
                    raise
                skipped.append(error.record())
                if not self.config.drop_last:
                    return None
                index = int(rng.integers(len(self.paths)))
                continue
            transform.write(image, images[slot])
            stages["read"] += t1 - t0
            stages["decode"] += t2 - t1
            stages["augment"] += t3 - t2
            stages["collate"] += clock() - t3
            return index
        raise FeedError(
            f"{MAX_CONSECUTIVE_FAILURES} unreadable files in a row (last: {skipped[-1].path}: "
            f"{skipped[-1].reason}); is the data set readable?"
        )


def _worker_init(worker_id: int) -> None:
    # A scheduler that preempts a job may send SIGTERM to all its processes (SLURM does): the main
    # process answers with a checkpoint at its next update (training.fit), which needs its workers'
    # batches until then. The workers still end with the main process (DataLoader's shutdown, and
    # its watchdog when the main process is gone).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    get_worker_info().dataset.transform.setup_worker(in_worker=True)


# "auto" takes threads only on small machines. Measured (scripts/executors_e2e.py; the 16-core run is in
# git history at f1e425b, not in results/, as it was not made from a clean commit): on 2
# cores, 2-3 threads deliver ~10% more than as many processes (no batch pickling or
# shared-memory copy); on a 16-core GPU host, 8 threads deliver a quarter of what 8
# processes do, and 4 threads halve the end-to-end rate of a CUDA training loop whose
# kernel launches need the GIL too. The per-image Python that holds the GIL caps threads.
THREADS_ON_CORES_UP_TO = 4


def choose_executor(requested: str, transform: HostTransform, workers: int, cores: int | None = None) -> str:
    """"main" (no workers), "thread" or "process": "auto" takes threads where the GIL is
    released and the machine is small enough that the GIL is not the bottleneck."""
    if workers == 0:
        return "main"
    if requested != "auto":
        return requested
    cores = cores or os.cpu_count() or 1
    small = cores <= THREADS_ON_CORES_UP_TO and workers <= THREADS_ON_CORES_UP_TO
    return "thread" if transform.releases_gil and small else "process"


class HostFeeder(Feeder):
    """A Feeder for the CPU backends: worker processes or threads, each making whole batches."""

    def __init__(self, samples: Samples, config: FeedConfig, transform: HostTransform) -> None:
        super().__init__(samples, config)
        self._take_listing_problems()
        self.dataset = BatchDataset(samples, transform, config)
        self.executor = choose_executor(config.executor, transform, config.workers)
        height, width = config.plan.output_size
        self.reset_stage_times()
        self._sampler = EpochBatchSampler(len(samples), config, epoch=0)
        self._check_settings(config.workers)  # before the memory check: a batch beyond the data is not a memory problem
        budget = check_worker_memory(config.workers, config.prefetch_factor, config.batch_size, height, width,
                                     shared_memory=self.executor == "process")
        self.workers, self.prefetch_factor = budget.workers, budget.prefetch_factor
        self.notes.extend(budget.notes)
        self._stream_keys = EpochStream(len(samples), config)
        self._stream: Iterator[WorkerBatch] | None = None  # batches over epochs, while the workers run
        self._stream_at = (0, 0)  # the (epoch, batch number) the stream delivers next
        self._workers_stuck = False  # a worker missed worker_timeout_s: close() kills, not asks
        self._data_loader: DataLoader | None = None
        self._threads: ThreadBatches | None = None
        if self.executor != "process":
            transform.setup_worker(in_worker=False)  # threads share this process's settings

    @property
    def pipeline_depth(self) -> int:
        return self.workers * self.prefetch_factor

    def describe_workers(self) -> str:
        if self.executor == "main":
            return "the main process (0 workers)"
        transform = self.dataset.transform
        why = ("decode and every step release the GIL" if transform.releases_gil
               else f"the GIL is held by {transform.gil_holders()}")
        noun = {"thread": "threads", "process": "processes"}[self.executor]
        return f"{self.workers} worker {noun} ({why})"

    def describe_steps(self) -> str:
        return self.dataset.transform.describe_steps()

    def use_bytes(self, cache: dict[str, bytes] | None) -> None:
        """Read files from ``cache`` (path -> bytes) instead of storage, or from storage again (None): what the
        stage breakdown's differential run prices storage with. Restarts the workers, which inherit it."""
        self.close()
        self.dataset.transform.byte_cache = cache

    @property
    def num_samples(self) -> int:
        return self._sampler.shard_size  # DistributedSampler's padded share

    def reset_stage_times(self) -> None:
        """Worker seconds per stage (summed over workers) and the images they cover."""
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self.stage_images = 0

    def _loader(self) -> DataLoader:
        """One DataLoader whose workers live across epochs: no process start-up at each epoch."""
        if self._data_loader is None:
            parallel = self.workers > 0
            self._data_loader = DataLoader(
                self.dataset,
                batch_size=None,  # the sampler yields whole batches
                sampler=self._stream_keys,
                num_workers=self.workers,
                prefetch_factor=self.prefetch_factor if parallel else None,
                persistent_workers=parallel,
                worker_init_fn=_worker_init if parallel else None,
                timeout=self.config.worker_timeout_s if parallel else 0,
                multiprocessing_context="fork" if parallel and os.name == "posix" else None,
            )
        return self._data_loader

    def _thread_pool(self) -> ThreadBatches:
        """Worker threads that live across epochs, each with its own transform."""
        if self._threads is None:
            self._threads = ThreadBatches(lambda: self.dataset.for_thread().__getitem__, self.workers,
                                          self.prefetch_factor, self.config.worker_timeout_s)
        return self._threads

    def _open_stream(self, epoch: int, start: int) -> Iterator[WorkerBatch]:
        """Batches from batch ``start`` of ``epoch`` on, across epochs, from the (persistent) workers."""
        self._stream_keys.first_epoch, self._stream_keys.first_batch = epoch, start
        self.dataset.transform.setup_worker(in_worker=False)  # before a fork, or threads sharing this process
        if self.executor == "thread":
            return self._thread_pool().iterate(self._stream_keys)
        with warnings.catch_warnings():
            # More workers than cores is a setting the tuner measures on purpose
            # (workers that block on I/O); torch's advice against it is noise here.
            warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
            try:
                return iter(self._loader())
            except BaseException as stop:
                with _watch_paused():  # from here: the Ctrl-C (or fork failure) that stopped it may stop workers
                    _stop_half_started(stop.__traceback__)
                raise

    def _batches(self, epoch: int, start: int) -> Iterator[WorkerBatch]:
        """The WorkerBatches of ``epoch`` from batch ``start``: the open stream's next ones where it stands
        there (the workers made them ahead), else a stream reopened there (no earlier key is made)."""
        if self._stream is None or self._stream_at != (epoch, start):
            self._stream = self._open_stream(epoch, start)
        stream = self._stream
        for number in range(start, len(self._sampler)):  # the same number of batches every epoch
            batch = next(stream)
            self._stream_at = (epoch, number + 1)
            yield batch
        self._stream_at = (epoch + 1, 0)

    def _epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        iterator = self._batches(epoch, start)
        delivered = 0
        try:
            for batch in self._checked(iterator):
                self._record_skips(batch.skipped)
                for stage, seconds in batch.stage_seconds.items():
                    self.stage_seconds[stage] += seconds
                self.stage_images += len(batch.images)
                if len(batch.images) == 0:
                    continue  # every file of this batch was unreadable (no drop_last: no substitutes)
                delivered += len(batch.images)
                yield batch.images, batch.labels
            if delivered == 0 and len(self._sampler) > start:
                raise FeedError(f"no readable image in epoch {epoch} of {len(self.samples)} files "
                                f"(first skipped: {self.skipped[0].path}: {self.skipped[0].reason})"
                                if self.skipped else f"no image delivered in epoch {epoch}")
        except BaseException:
            self.close()  # a failed or abandoned loader is not reused
            raise

    def _checked(self, iterator) -> Iterator[WorkerBatch]:
        while True:
            try:
                batch: WorkerBatch = next(iterator)
            except StopIteration:
                return
            except (BadImageError, FeedError):
                raise
            except RuntimeError as error:
                self._workers_stuck = "timed out" in str(error)
                raise _explain_worker_failure(error, self.config) from error
            if batch.images is None:  # on_bad="fail": the worker reports the file instead of raising
                raise BadImageError(batch.skipped[0].path, batch.skipped[0].reason)
            yield batch

    def close(self) -> None:
        """Stop the workers now (they are restarted on the next epoch)."""
        self._stream = None
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.close()
        loader, self._data_loader = self._data_loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            # torch would wait on each stuck one for seconds first, and they would never answer
            _stop_workers(iterator, at_once=self._workers_stuck)
        self._workers_stuck = False  # the next epoch's workers are new
        self.dataset.transform.close()  # the main process's library settings, as they were


def _stop_half_started(trace) -> None:
    """Stop the workers of the DataLoader iterator whose start was interrupted in ``trace`` (a Ctrl-C,
    which reached its workers too, landing as torch forks them or fills their queues). Only the
    traceback holds that iterator: neither ``close`` nor its ``__del__`` would run yet, and torch's
    SIGCHLD watch of its workers would stay armed, raising their exit as "DataLoader worker exited
    unexpectedly" in whatever this process does next, such as writing the partial report or the
    checkpoint that the Ctrl-C asked for."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    for frame, _ in traceback.walk_tb(trace):
        iterator = frame.f_locals.get("self")
        if isinstance(iterator, _MultiProcessingDataLoaderIter):
            _stop_workers(iterator, at_once=True)  # it has nothing to finish
            return


def _stop_workers(iterator, at_once: bool) -> None:
    """Stop a DataLoader iterator's workers: asked to (torch's shutdown), or ``at_once``: out of torch's
    SIGCHLD watch, then killed, or their death would be raised as a worker crash.

    Once any is killed, torch's shutdown must not run: it sets the workers' done event, and a worker
    killed inside ``done_event.is_set()`` (where a Ctrl-C's KeyboardInterrupt takes each of them) holds
    that event's lock forever. So the iterator is marked shut down, and only its queues are closed.

    A worker that exits while they are asked to stop, because the Ctrl-C that is stopping this run
    reached it too, is raised by the watch in the middle of torch's shutdown. Here that is no crash:
    the others are stopped all the same."""
    if not at_once:
        try:
            iterator._shutdown_workers()
        except RuntimeError as error:
            if "DataLoader worker" not in str(error):
                raise
        else:
            _kill_live_workers(iterator)  # one that ignored the SIGTERM torch sent where it did not join
            return
    _unwatch(iterator)  # where the shutdown was cut short, its own unwatching may not have run
    _kill_live_workers(iterator)
    iterator._shutdown = True  # neither its __del__ nor torch's exit hook tries the shutdown again
    for queue in (*getattr(iterator, "_index_queues", ()), getattr(iterator, "_worker_result_queue", None)):
        if queue is not None:
            queue.cancel_join_thread()
            queue.close()


def _unwatch(iterator) -> None:
    """Take ``iterator``'s workers out of torch's SIGCHLD watch, with the watch paused meanwhile."""
    if getattr(iterator, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling

        with _watch_paused():
            signal_handling._remove_worker_pids(id(iterator))
            iterator._worker_pids_set = False


@contextmanager
def _watch_paused() -> Iterator[None]:
    """No SIGCHLD handler (torch's watch of the workers) meanwhile: a child's exit in between is dropped,
    not raised. Off the main thread, where no handler runs, nothing to pause."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watch = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL if watch is None else watch)  # None: not set from Python


def _kill_live_workers(iterator) -> None:
    """Kill those of ``iterator``'s workers still alive, and reap them (no zombie left)."""
    for worker in getattr(iterator, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


def _explain_worker_failure(error: RuntimeError, config: FeedConfig) -> Exception:
    text = str(error)
    if "timed out" in text:
        return FeedError(
            f"no batch from the workers within {config.worker_timeout_s:.0f} s (worker_timeout_s); "
            "a worker is stuck or the storage is too slow"
        )
    if "worker" in text.lower():
        return FeedError(f"a data-loading worker died: {text}")
    return error
