"""The Ray Data backend (``--pipeline ray``): the host transforms, run by a pool of Ray actors.

The pipeline, per epoch (or per run of several epochs, for Ray Train):

1. ``from_items``: one row per batch -- the same ``BatchKey``s (epoch, number,
   indices) the host pipelines' sampler makes, so the order, the shards and
   ``drop_last`` are theirs;
2. ``map_batches(read_files)``: Ray tasks read each batch's files as bytes;
3. ``map_batches(TransformActor, compute=ActorPoolStrategy(size=actors))``:
   each actor runs ``BatchDataset`` of ``feeding.backends.host`` -- the very
   code of the albumentations (or PIL) host pipeline, with its per-batch seeded
   stream (``seeding.batch_rng``), its substitution of unreadable files and its
   skip records -- over the bytes it was handed, and emits one row per image;
4. ``iter_torch_batches``: rows back into batches, in order.

For a seed, the pixels are those the host pipeline delivers (tested). On a
cluster the actors run wherever Ray finds CPUs, e.g. CPU-only nodes; every node
needs feedbench installed and the files at the same paths (a shared file system).
"""
from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch

from feeding.backends.host import (
    BatchDataset,
    BatchKey,
    EpochBatchSampler,
    HostTransform,
)
from feeding.backends.ray_cluster import (
    RayConfig,
    address_from_env,
    check_reachable,
    data_cpu_limit,
)
from feeding.errors import BadFile, BadImageError, FeedError, MissingDependencyError
from feeding.feeder import Batch, FeedConfig, Feeder
from feeding.sources import Samples

try:
    import ray
    import ray.data
    from ray.data.collate_fn import NumpyBatchCollateFn
except ImportError as error:  # the optional extra is not installed
    raise MissingDependencyError(
        "the ray pipeline needs Ray Data: pip install 'feedbench[ray]' (or pip install 'ray[data,train]')"
    ) from error

# What one row per image carries out of the actors (and what the collate reads back).
IMAGE, LABEL, SKIPPED = "image", "label", "skipped"
# Images one Ray Data execution lists at least (see epochs_per_run): ~10 s of actor start-up
# amortized over 50,000 images is ~15% at 800 img/s, and less on faster clusters.
MIN_IMAGES_PER_RUN = 50_000
# Batch rows per input block. A block per batch would stream finest, but from_items pays
# ~3 ms per block (one object store put each): 4 keeps that to ~1 s a run. Ray Data's unit
# is the block: an actor task maps one input block and emits its output as one block once
# all its batches are made, so the feeder's batches arrive in bursts of 4 (see batches_ahead).
BATCHES_PER_BLOCK = 4


def ray_config_for(config: FeedConfig, environ: dict[str, str] | None = None) -> RayConfig:
    """The RayConfig a plain ``--pipeline ray`` uses: RAY_ADDRESS or a local Ray, ``workers`` actors."""
    return RayConfig(address=address_from_env(environ), actors=max(1, config.workers))


def connect(ray_config: RayConfig) -> bool:
    """Make sure Ray is running; True when this call started it (so its owner shuts it down)."""
    named = not ray_config.is_local and ray_config.address != "auto"
    if named:  # before ray.init, which retries an unreachable address for minutes
        check_reachable(ray_config.address, ray_config.connect_timeout_s)
    if ray.is_initialized():
        return False
    if ray_config.is_local:
        ray.init(address="local", num_cpus=ray_config.local_cpus, include_dashboard=False,
                 object_store_memory=ray_config.object_store_mb * 2**20, log_to_driver=False)
        return True
    try:
        ray.init(address=ray_config.address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as error:  # "auto" with no cluster on this host
        raise FeedError(f"cannot join the Ray cluster at {ray_config.address!r}: {error} (a cluster started with "
                        "token authentication, Ray's default from 2.60, also needs RAY_AUTH_MODE=token here and "
                        "its token: `ray get-auth-token`)") from error
    return True


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))


def _host_transform(config: FeedConfig, kind: str) -> HostTransform:
    if kind == "pil":
        from feeding.backends.pil import PilTransform

        return PilTransform(config.plan, config.max_pixels)
    from feeding.backends.albu import AlbumentationsTransform

    return AlbumentationsTransform(config.plan, config.max_pixels)


def key_rows(keys: list[BatchKey], paths: np.ndarray) -> list[dict]:
    """One row per batch: its key, and the paths the read stage opens."""
    return [{"epoch": key.epoch, "number": key.number, "indices": key.indices.tolist(),
             "paths": paths[key.indices].tolist()} for key in keys]


def read_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The read stage: each batch row gains the bytes of its files (b"" where a file cannot be read;
    the actor then reads it again itself, which reports the error the host pipelines report)."""
    rows = len(batch["paths"])
    paths, data = np.empty(rows, dtype=object), np.empty(rows, dtype=object)
    for row, names in enumerate(batch["paths"]):
        paths[row] = [str(name) for name in names]  # plain lists: Arrow stores them without pickling
        data[row] = [_read_or_empty(name) for name in paths[row]]
    return {**batch, "paths": paths, "data": data}


def _read_or_empty(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


class TransformActor:
    """Decode and augment one batch row into one row per image, with the host pipelines' code."""

    def __init__(self, samples: Samples, config: FeedConfig, transform: str) -> None:
        host = _host_transform(config, transform)
        host.setup_worker(in_worker=True)  # e.g. OpenCV single-threaded: one actor per CPU
        self.dataset = BatchDataset(samples, host, config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, labels, skipped = [], [], []
        for epoch, number, indices, paths, data in zip(batch["epoch"], batch["number"], batch["indices"],
                                                       batch["paths"], batch["data"]):
            key = BatchKey(int(epoch), int(number), np.asarray(indices, dtype=np.int64))
            # The bytes read upstream, seen through the transform's byte cache: a substitute
            # for an unreadable file is read from storage, as in the host pipelines.
            self.dataset.transform.byte_cache = {str(p): bytes(d) for p, d in zip(paths, data) if len(d)}
            made = self.dataset[key]
            self.dataset.transform.byte_cache = None
            if made.images is None:  # on_bad="fail": the host code reports the file instead of raising
                raise BadImageError(made.skipped[0].path, made.skipped[0].reason)
            images.append(made.images.permute(0, 2, 3, 1).numpy())  # back to the NHWC storage it was made in
            labels.append(made.labels.numpy())
            notes = [""] * len(made.labels)
            notes[0] = json.dumps([record.to_dict() for record in made.skipped]) if made.skipped else ""
            skipped.extend(notes)
        return {IMAGE: np.concatenate(images), LABEL: np.concatenate(labels), SKIPPED: np.array(skipped, dtype=object)}


class BatchCollate(NumpyBatchCollateFn):
    """Rows back into a feeder batch: uint8 (N, 3, H, W) channels_last, int64 labels, skip records."""

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list[BadFile]]:
        # Zero-copy blocks are read-only, and torch will not wrap read-only memory without a warning.
        images = np.require(batch[IMAGE], dtype=np.uint8, requirements=("C", "W"))
        labels = np.require(batch[LABEL], dtype=np.int64, requirements=("C", "W"))
        skipped = [BadFile(**record) for note in batch[SKIPPED] if note for record in json.loads(note)]
        return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels), skipped


def build_dataset(samples: Samples, config: FeedConfig, ray_config: RayConfig, keys: list[BatchKey],
                  data_cpus: float):
    """The lazy Ray Dataset for ``keys`` (any number of epochs); nothing runs until it is iterated."""
    from ray.data import ActorPoolStrategy, ExecutionResources

    rows = key_rows(keys, samples.paths)
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // BATCHES_PER_BLOCK)))
    dataset = dataset.map_batches(read_files, batch_size=1, num_cpus=ray_config.cpus_per_actor)
    dataset = dataset.map_batches(
        TransformActor, batch_size=1, num_cpus=ray_config.cpus_per_actor,
        fn_constructor_kwargs={"samples": samples, "config": config, "transform": ray_config.transform},
        compute=ActorPoolStrategy(size=ray_config.actors, max_tasks_in_flight_per_actor=config.prefetch_factor),
    )
    options = dataset.context.execution_options
    options.preserve_order = True  # batches in the sampler's order: the feeder's stream is the seed's
    options.resource_limits = ExecutionResources.for_limits(  # never the reserved CPUs
        cpu=data_cpus, object_store_memory=read_ahead_bytes(config, ray_config))
    dataset.context.enable_progress_bars = False
    return dataset


# Bytes of one encoded image, for the read-ahead budget (a 384x512 photo is 30-60 kB).
ENCODED_BYTES_GUESS = 64 * 1024


def batches_ahead(config: FeedConfig, ray_config: RayConfig) -> int:
    """Batches made ahead, counted in Ray Data's blocks of ``BATCHES_PER_BLOCK`` batches.

    Each actor has ``prefetch_factor`` tasks in flight, and a task is one input
    block, whose batches come out together when its last one is made (measured
    with one actor: a ~45 ms wait, then 3 more batches within ~1 ms).
    ``iter_torch_batches`` prefetches ``prefetch_factor`` batches' rows, which it
    fetches as whole blocks. A benchmark window shorter than this can time one burst.
    """
    fetched_blocks = -(-config.prefetch_factor // BATCHES_PER_BLOCK)
    return BATCHES_PER_BLOCK * (ray_config.actors * config.prefetch_factor + fetched_blocks)


def read_ahead_bytes(config: FeedConfig, ray_config: RayConfig) -> int:
    """Object-store bytes Ray Data may hold in flight: ``pipeline_depth`` batches and then some.

    Without a cap, Ray Data runs ahead as far as the object store allows (30% of
    RAM): with ``preserve_order``, one slow batch (a cold actor) lets the others
    pile up hundreds of finished batches, which a benchmark then reads at 10,000+
    img/s and mistakes for a pipeline. Capped, a feeder holds about what its
    ``pipeline_depth`` says, as the host pipelines do.
    """
    height, width = config.plan.output_size
    batch_bytes = config.batch_size * (height * width * 3 + ENCODED_BYTES_GUESS)
    # x2: a batch's rows exist as the actor's output and as the collated copy.
    return 2 * (batches_ahead(config, ray_config) + 1) * batch_bytes


def torch_batches(iterable, config: FeedConfig) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[BadFile]]]:
    """``iter_torch_batches`` over a dataset or a Ray Train shard, with the feeder's batch size."""
    return iterable.iter_torch_batches(batch_size=config.batch_size, drop_last=config.drop_last,
                                       collate_fn=BatchCollate(), prefetch_batches=config.prefetch_factor)


def explain(error: BaseException) -> BaseException:
    """The BadImageError or FeedError inside a Ray error, if any (Ray wraps what the actors raise)."""
    seen, current = set(), error
    while current is not None and id(current) not in seen:
        if isinstance(current, (BadImageError, FeedError)):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return error


def epochs_per_run(images_per_epoch: int, full_batches_only: bool) -> int:
    """Epochs one Ray Data execution covers (the feeder continues it from epoch to epoch).

    Each execution starts its actor pool afresh (Ray Data keeps no actor across
    executions); measured on 2 cores, that costs ~10 s, as long as several epochs
    of the sample data. A run therefore lists at least ``MIN_IMAGES_PER_RUN``
    images' worth of epochs (its rows are tiny: a key and the paths). Where an
    epoch ends in a partial batch (drop_last=False) a run is one epoch, since
    ``iter_torch_batches`` would join that batch to the next epoch's first.
    """
    if not full_batches_only:
        return 1
    return max(1, -(-MIN_IMAGES_PER_RUN // max(1, images_per_epoch)))


class _Run:
    """One Ray Data execution in progress: its batch iterator and the epoch it delivers next."""

    def __init__(self, batches: Iterator, first_epoch: int, stop_epoch: int) -> None:
        self.batches = batches
        self.next_epoch = first_epoch
        self.stop_epoch = stop_epoch

    def close(self) -> None:
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()  # stops the streaming executor and its actors now, not at garbage collection

    def finish(self) -> None:
        """Run a fully delivered execution to its end, then close it: only at its end does Ray Data
        stop its block prefetcher's thread (ray.data block_batching.iter_batches); a closed
        generator leaves it parked, and one woken late calls ``ray.wait`` into a Ray shut down."""
        for _ in self.batches:  # nothing is left: every batch of every epoch was delivered
            pass
        self.close()


class RayFeeder(Feeder):
    """A Feeder whose batches a Ray Data pipeline makes; local Ray or a cluster (see RayConfig)."""

    def __init__(self, samples: Samples, config: FeedConfig, ray_config: RayConfig | None = None) -> None:
        super().__init__(samples, config)
        self._take_listing_problems()
        self.ray_config = ray_config or ray_config_for(config)
        self._sampler = EpochBatchSampler(len(samples), config, epoch=0)  # more shards than images fails here
        self._run: _Run | None = None
        self.executor = "ray"
        self.workers = self.ray_config.actors
        self._check_settings(self.workers)
        if config.workers == 0:
            self.notes.append("the ray pipeline needs one actor at least: --workers 0 runs one")
        self._owns_ray = connect(self.ray_config)
        try:
            total = cluster_cpus()
            self.data_cpus = data_cpu_limit(total, self.ray_config.reserved_cpus, self.ray_config.data_cpus)
        except BaseException:
            self.close()
            raise
        self.notes.append(f"Ray: {self.ray_config.actors} actor(s) x {self.ray_config.cpus_per_actor:g} CPU running "
                          f"the {self.ray_config.transform} transform, Ray Data capped at {self.data_cpus:g} of "
                          f"{total:g} cluster CPUs")

    @property
    def num_samples(self) -> int:
        return self._sampler.shard_size  # the same padded share as the host pipelines

    @property
    def pipeline_depth(self) -> int:
        return batches_ahead(self.config, self.ray_config)

    def describe_workers(self) -> str:
        return f"{self.workers} Ray Data actor(s) running the {self.ray_config.transform} transform"

    def fingerprint(self) -> dict:
        """The host feeders' fingerprint, with the transform the actors run: it makes the pixels."""
        return {**super().fingerprint(), "transform": self.ray_config.transform}

    def epoch_keys(self, epoch: int) -> list[BatchKey]:
        self._sampler.epoch = epoch
        return list(self._sampler)

    def dataset(self, first_epoch: int, epochs: int = 1, first_batch: int = 0):
        """The lazy Ray Dataset of epochs ``first_epoch`` .. ``first_epoch + epochs - 1``, the first one from
        its batch ``first_batch`` on: each batch is a key (seed, epoch, number), so a resumed epoch
        leaves the keys before out and makes nothing of them."""
        keys = [key for epoch in range(first_epoch, first_epoch + epochs) for key in self.epoch_keys(epoch)
                if epoch > first_epoch or key.number >= first_batch]
        return build_dataset(self.samples, self.config, self.ray_config, keys, self.data_cpus)

    def _start_run(self, epoch: int, start: int = 0) -> _Run:
        full = self.config.drop_last or self.num_samples % self.config.batch_size == 0
        epochs = epochs_per_run(self.num_samples, full)
        return _Run(iter(torch_batches(self.dataset(epoch, epochs, start), self.config)), epoch, epoch + epochs)

    def _epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        if self._run is None or self._run.next_epoch != epoch or start:
            self._drop_run()
            self._run = self._start_run(epoch, start)
        run = self._run
        try:
            for _ in range(start, len(self)):
                images, labels, skipped = next(run.batches)
                self._record_skips(skipped)
                yield images, labels
        except BaseException as error:  # abandoned mid-epoch or failed: the run cannot be resumed
            self._drop_run()
            cause = explain(error) if isinstance(error, Exception) else error
            if cause is error:
                raise
            raise cause from error
        run.next_epoch += 1
        if run.next_epoch == run.stop_epoch:
            self._run = None
            run.finish()

    def _drop_run(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            run.close()

    def close(self) -> None:
        """Stop the pipeline; shut Ray down if this feeder started it (a Ray someone else started stays up)."""
        self._drop_run()
        if getattr(self, "_owns_ray", False) and ray.is_initialized():
            wait_for_ray_data_threads()
            ray.shutdown()
            self._owns_ray = False


# Ray Data's driver-side threads that end by themselves once their execution is over: the streaming
# executor, its metadata fetcher, the threads of ``iter_torch_batches`` (ray.data._internal:
# streaming_executor, metadata_fetcher, block_batching.util, util). The block prefetcher ("Prefetcher")
# ends only when told (see _Run.finish), so it is not waited for.
RAY_DATA_THREADS = ("StreamingExecutor-", "iter_threaded", "map_tp_", "ray-data-")


def wait_for_ray_data_threads(timeout_s: float = 5.0) -> list[str]:
    """Let Ray Data's driver threads finish before ``ray.shutdown()``; the names still alive after
    ``timeout_s``.

    A finished execution's executor thread still reports its stats for a moment after the last
    batch; a thread that reaches Ray after the shutdown makes Ray end the whole process ("The core
    worker has already been shutdown ... The process will exit", exit status 1), after the run's
    figures were measured. Collecting garbage first shuts down the executors of abandoned
    iterators (their ``__del__``).
    """
    gc.collect()
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name.startswith(RAY_DATA_THREADS):
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threading.enumerate() if t.is_alive() and t.name.startswith(RAY_DATA_THREADS)]
