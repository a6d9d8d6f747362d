"""The DALI backend: one DALI pipeline decodes and augments, on the CPU or the GPU.

The graph is ``feeding.backends.dali_graph``; which files DALI reads itself and
which it reads as transcoded copies is ``feeding.backends.dali_files``. This
module is the feeder around them, and what it decides, and why:

- Epochs: the reader reshuffles the whole data set after every epoch
  (``shuffle_after_epoch``, seeded from ``config.seed``, the same seed on every
  shard, so the shards of one epoch are disjoint and complete). That order, and
  the random ops' generators, carry state from one epoch to the next, so epoch
  ``e`` exists only after epochs ``0..e-1`` have run. ``set_epoch(e)`` is
  honoured exactly: forward by running the missing epochs through the pipeline
  and discarding them (that costs their decoding; a warning is logged), and
  backward by rebuilding the pipeline and doing the same from epoch 0. The usual
  ``set_epoch(epoch)`` before each epoch costs nothing. An epoch left half-way
  is finished (and discarded) when the next one starts.
- Last batch: the reader pads each shard with its last sample
  (``pad_last_batch``) so every epoch is exactly one pass over the shard, and
  the iterator runs with ``LastBatchPolicy.PARTIAL``, which trims the padding.
  ``drop_last`` then leaves out the short batch here. DALI's own ``DROP`` policy
  is not used: it rounds every shard down to ``len(data) // num_shards``
  samples, so with uneven shards it would yield fewer batches than ``len()``.
- Bad and odd files: DALI cannot leave a file out of a batch, so the validation
  scan runs first and bad files are dropped (``on_bad="skip"``) or refused
  (``"fail"``). Valid files that DALI's decoder does not deliver as
  ``feeding.decode`` does (see ``dali_files.dali_reads_as_pil``) are transcoded once to
  lossless PNG in the cache, and DALI reads the copy.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from feeding import decode
from feeding.backends.dali_files import dali_paths
from feeding.backends.dali_graph import OUTPUTS, READER, describe_geometry, feed_pipeline, missing_dali, warp_steps
from feeding.errors import BadFile, FeedError
from feeding.feeder import Batch, FeedConfig, Feeder, shard_indices
from feeding.resources import check_dali_memory, free_memory_for
from feeding.scan import scan
from feeding.sources import Samples

try:
    from nvidia.dali.backend import ReleaseUnusedMemory
    from nvidia.dali.pipeline import Pipeline
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError as error:
    raise missing_dali(error) from error

log = logging.getLogger(__name__)

# Distinct first words keep the seed streams apart (as in feeding.seeding).
_SHUFFLE_STREAM, _PIPELINE_STREAM = 10, 11
PROBED_FILES = 256  # headers read, spread over the file list, to size the decoded batches


def _derived_seed(*words: int) -> int:
    """A 31-bit seed from words (DALI takes non-negative int seeds)."""
    sequence = np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words])
    return int(sequence.generate_state(1)[0]) & 0x7FFFFFFF


def _describe(bad: list[BadFile], limit: int = 3) -> str:
    shown = "; ".join(f"{b.path}: {b.reason}" for b in bad[:limit])
    return shown + (f"; and {len(bad) - limit} more" if len(bad) > limit else "")


class DaliFeeder(Feeder):
    """A Feeder backed by one DALI pipeline; images on the GPU when ``decode_device`` is CUDA, as
    (N, 3, H, W) uint8 views of DALI's HWC buffers (``channels_last_view``)."""

    def __init__(self, samples: Samples, config: FeedConfig) -> None:
        check_decode_device(config)  # before the scan: a GPU that is not there is not worth scanning for
        good, skipped = validated_samples(samples, config)
        super().__init__(good, config)
        self._record_skips(skipped)
        self._check_settings(config.workers)  # more shards than images, or a batch beyond them: say so now
        self._check_memory()
        root = Path(config.cache_dir) if config.cache_dir else None
        self._files = dali_paths(good.paths, config.max_pixels, root)
        self._pipe: Pipeline | None = None
        self._iterator: DALIGenericIterator | None = None
        self._pipeline_epoch = 0  # the epoch the pipeline delivers next
        self._mid_epoch = False  # the pipeline's current epoch has been started but not finished
        self._build()

    def _check_memory(self) -> None:
        """Refuse a batch whose decoded images would not fit, before DALI allocates any (a std::bad_alloc
        inside DALI's threads leaves them allocating until the kernel's OOM killer ends the process)."""
        cfg = self.config
        where, free = free_memory_for(cfg.gpu_id)
        check_dali_memory(cfg.batch_size, cfg.prefetch_factor, largest_source(self.samples.paths, cfg.max_pixels),
                          cfg.plan.output_size, free, where)

    # -- the pipeline

    def _build(self) -> None:
        self._release()  # at most one pipeline alive: a rebuild frees the old one's threads and buffers first
        cfg = self.config
        pipe = feed_pipeline(
            batch_size=cfg.batch_size,
            num_threads=max(1, cfg.workers),  # DALI's CPU threads play the DataLoader workers' part
            device_id=cfg.gpu_id,  # None: a CPU-only pipeline
            seed=_derived_seed(_PIPELINE_STREAM, cfg.seed, cfg.shard_id),  # augmentations differ per shard
            prefetch_queue_depth=cfg.prefetch_factor,
            exec_dynamic=True,
            files=self._files,
            labels=self.samples.labels.tolist(),
            steps=cfg.plan.steps,
            fused=self._warped_steps,  # 0 for a literal plan
            decoder="cpu" if cfg.gpu_id is None else "mixed",
            shard_id=cfg.shard_id,
            num_shards=cfg.num_shards,
            shuffle=cfg.shuffle,
            shuffle_seed=_derived_seed(_SHUFFLE_STREAM, cfg.seed),  # the same on every shard
        )
        self._pipe = pipe
        try:
            self._iterator = DALIGenericIterator(
                pipe,
                list(OUTPUTS),
                reader_name=READER,
                last_batch_policy=LastBatchPolicy.PARTIAL,
                auto_reset=True,
                prepare_first_batch=False,
            )
        except Exception as error:  # the iterator builds the pipeline: DALI refusing the graph or the device
            self._release()
            raise FeedError(f"DALI could not build its pipeline: {one_line(error)}") from error.with_traceback(None)
        self._pipeline_epoch = 0
        self._mid_epoch = False

    def _pipeline_batches(self) -> Iterator[Batch]:
        """The rest of the pipeline's current epoch, padding trimmed (a short or empty batch may come last)."""
        assert self._iterator is not None
        self._mid_epoch = True
        while True:
            try:
                outputs = next(self._iterator)
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001 - RuntimeError from an operator, MemoryError (std::bad_alloc)
                # A pipeline that raised cannot run again (it is rebuilt on next use). Stop it now:
                # dropping the iterator is not enough, since the error's traceback holds the iterator
                # and the pipeline, and their executor and worker threads live (and allocate) as long.
                self._release()
                raise self._explained(error) from error.with_traceback(None)
            out = outputs[0]
            yield channels_last_view(out["images"]), out["labels"].reshape(-1).to(torch.int64)
        self._mid_epoch = False
        self._pipeline_epoch += 1

    def _explained(self, error: Exception) -> FeedError:
        """A DALI error in one line: what ran out or failed, and which files no longer decode, if any."""
        epoch = self._pipeline_epoch
        if isinstance(error, MemoryError):  # pybind11's translation of a std::bad_alloc
            return FeedError(f"DALI ran out of memory in epoch {epoch} ({one_line(error) or 'MemoryError'}): "
                             "lower --batch")
        changed = self._no_longer_decode()
        files = (f"; {len(changed)} file(s) no longer decode (changed since the validation scan): "
                 f"{_describe(changed)}") if changed else ""
        return FeedError(f"DALI failed in epoch {epoch}: {one_line(error)}{files}")

    def _no_longer_decode(self) -> list[BadFile]:
        """The scanned files that fail now. A rescan decodes only files changed since the scan (the
        verdicts are cached by size and mtime), so it is cheap when nothing changed."""
        cfg = self.config
        try:
            result = scan(self.samples, cfg.max_pixels, Path(cfg.cache_dir) if cfg.cache_dir else None,
                          workers=cfg.workers)
        except Exception:  # noqa: BLE001 - the rescan only adds detail to the error being raised
            return []
        return [record for record in result.bad if record not in self.samples.problems]

    def _discard_epoch(self) -> None:
        for _ in self._pipeline_batches():
            pass

    def _advance_to(self, epoch: int) -> None:
        """Bring the pipeline to the start of ``epoch`` (see the module docstring)."""
        if epoch < 0:
            raise FeedError(f"epoch must be >= 0, got {epoch}")
        behind = epoch < self._pipeline_epoch or (epoch == self._pipeline_epoch and self._mid_epoch)
        if self._iterator is None or behind:
            self._build()
        if self._mid_epoch:
            self._discard_epoch()
        if epoch > self._pipeline_epoch:
            log.warning(
                "DALI: replaying %d epoch(s) to reach epoch %d (the reader's order and the random "
                "ops' state exist only after the epochs before)", epoch - self._pipeline_epoch, epoch)
        while self._pipeline_epoch < epoch:
            self._discard_epoch()

    def _epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """The reader's whole shard is read; each rank delivers the same ``num_samples`` of it."""
        self._advance_to(epoch)
        cfg = self.config
        full, expected, quota = self.batch_size, len(self), self.num_samples
        shard = len(shard_indices(len(self.samples), cfg.shard_id, cfg.num_shards))
        delivered = given = samples_seen = 0
        for images, labels in self._pipeline_batches():
            samples_seen += len(labels)
            take = min(len(labels), quota - given)  # a shard one sample larger leaves that one out
            if take < len(labels):
                images, labels = images[:take], labels[:take]
            if take == full or (take and not cfg.drop_last):
                delivered += 1
                given += take
                yield images, labels
        if delivered != expected or samples_seen != shard:
            raise FeedError(
                f"DALI delivered {samples_seen} samples in {delivered} batches for a shard of "
                f"{shard} samples ({expected} batches expected): reader and iterator disagree"
            )

    @property
    def pipeline_depth(self) -> int:
        return self.config.prefetch_factor  # DALI's prefetch_queue_depth

    @property
    def _warped_steps(self) -> int:
        """The plan's leading steps that the graph runs as one warp (``dali_graph.warp_steps``)."""
        plan = self.config.plan
        return warp_steps(plan.steps, plan.fused_steps)

    def describe_workers(self) -> str:
        return f"{super().describe_workers()}; {describe_geometry(self.config.plan.steps, self._warped_steps)}"

    def _release(self) -> None:
        """Stop the pipeline's threads and free its buffers now, whoever still holds a reference to it."""
        pipe, self._pipe, self._iterator = self._pipe, None, None
        if pipe is not None:
            # DALI's own teardown (what Pipeline.__del__ and its atexit hook run; DALI 2.4 has no public
            # name for it): shuts the executor down and frees the backend, so its threads end here.
            pipe._shutdown()
            ReleaseUnusedMemory()  # and hand the emptied pool blocks back (pinned host, device)

    def close(self) -> None:
        self._release()


def channels_last_view(images: torch.Tensor) -> torch.Tensor:
    """DALI's (N, H, W, 3) uint8 batch as (N, 3, H, W) in channels_last memory: a view, no copy (as the
    host pipelines deliver theirs; feeding.backends.host).

    With exec_dynamic, DALI's iterator hands out its output buffers by DLPack, without a copy. Each
    tensor holds a reference to its buffer (DLPack's shared ownership), and DALI reuses the buffer
    only once that reference is gone, so a batch kept by the caller stays intact. On the GPU,
    ``torch.from_dlpack`` makes the stream current at ``next()`` wait for DALI's work on the batch;
    a reader on another stream must be ordered after it and hold the tensor until its reads are done,
    as ``feeding.device.DeviceFeeder`` does.
    """
    return images.permute(0, 3, 1, 2)


def check_decode_device(config: FeedConfig) -> None:
    """Refuse a GPU decode on a machine without that GPU, in one line (DALI itself asserts deep in its backend)."""
    index = config.gpu_id
    if index is None:
        return
    if not torch.cuda.is_available():
        raise FeedError(f"decode_device {config.decode_device!r} asked for, but CUDA is not available here "
                        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}, no GPU "
                        "visible); use --decode-device cpu")
    count = torch.cuda.device_count()
    if index >= count:
        raise FeedError(f"decode_device {config.decode_device!r}: only {count} CUDA device(s) visible "
                        f"(cuda:0 to cuda:{count - 1})")


def largest_source(paths: np.ndarray, max_pixels: int, limit: int = PROBED_FILES) -> tuple[int, int]:
    """(height, width) in pixels of the largest image among up to ``limit`` files spread over ``paths``
    (headers only; a file that no longer opens is left out: the pipeline reports it when it reaches it)."""
    return max(decode.sampled_sizes(paths, max_pixels, limit), key=lambda size: size[0] * size[1], default=(0, 0))


_OPERATOR = re.compile(r"Error in (\w+) operator `([^`]+)`")


def one_line(error: BaseException, limit: int = 500) -> str:
    """DALI's error text in one line: the operator and what it encountered, without the graph's
    traceback and the repeated "pipeline is no longer valid" lines."""
    text = str(error)
    head, found, encountered = text.partition("encountered:")
    if not found:
        return " ".join(text.split())[:limit]
    reason = " ".join(line.strip() for line in encountered.splitlines()
                      if line.strip() and "no longer valid" not in line)
    operator = _OPERATOR.search(head)
    where = f"{operator.group(1)} operator {operator.group(2)}: " if operator else ""
    return f"{where}{reason}"[:limit]


def validated_samples(samples: Samples, config: FeedConfig) -> tuple[Samples, list[BadFile]]:
    """The samples DALI may read, and the files left out (raises FeedError when on_bad='fail')."""
    result = scan(samples, config.max_pixels, Path(config.cache_dir) if config.cache_dir else None,
                  workers=config.workers)
    bad = list(result.bad)  # listing problems first, then files that do not decode
    if bad and config.on_bad == "fail":
        raise FeedError(f"{len(bad)} file(s) cannot be delivered (on_bad='fail'): {_describe(bad)}")
    if len(result.good) == 0:
        raise FeedError(f"no readable images among {len(samples)} in {samples.root}: {_describe(bad)}")
    return result.good, bad
