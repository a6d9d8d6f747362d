"""The DALI backend: one DALI pipeline decodes and augments, on the CPU or the GPU.

The graph is ``feeding.backends.dali_graph``; which files DALI reads itself and
which it reads as transcoded copies is ``feeding.backends.dali_files``. This
module is the feeder around them, and what it decides, and why:

- Epochs: the reader reshuffles the whole data set after every epoch
  (``shuffle_after_epoch``, seeded from ``config.seed``, the same seed on every
  shard, so the shards of one epoch are disjoint and complete). That order, and
  the random ops' generators, carry state from one epoch to the next, so epoch
  ``e`` exists only after epochs ``0..e-1`` have run, or from a DALI checkpoint
  of it (below). ``set_epoch(e)`` is honoured exactly: forward by running the
  missing epochs through the pipeline and discarding them (that costs their
  decoding; a warning is logged), and backward by rebuilding the pipeline from a
  kept checkpoint of that place where there is one, else from epoch 0 and doing
  the same. The usual ``set_epoch(epoch)`` before each epoch costs nothing. An
  epoch left half-way is finished (and discarded) when the next one starts.
- State: the pipeline runs with DALI's checkpointing (``enable_checkpointing``),
  and ``state_dict()`` carries DALI's checkpoint of its place: the reader's
  position, epoch and shuffle, and every random op's generators (base64, with the
  DALI version and a sha256 of checkpoint and place: protobuf has no checksum).
  ``load_state_dict`` builds the pipeline from it (``checkpoint=``): nothing before
  is decoded, an epoch's start included. Checked on DALI 2.4's CPU pipelines
  (tests/test_dali_state.py): the rest of the stream is the original's pixel for
  pixel with another ``workers`` (``num_threads``) or ``prefetch_factor``, since a
  checkpoint is that of the last batch handed out, not of those DALI prefetched
  (the executor keeps one per iteration). One is taken as each batch comes out
  (about 0.25 ms and 0.5-2.5 kB) and the last ``CHECKPOINTS_KEPT`` are kept, so a
  consumer that reads ahead (``feeding.device``) can ask for its state a few
  batches behind; an older place is a ``FeederStateError``. An epoch's last batch
  is handed out once the reader has finished the epoch, so that the state there is
  the next epoch's start (a checkpoint taken before would restore an empty epoch
  first). Refused: another DALI version's checkpoint (DALI reads only its own), a
  damaged one, or one of another graph (the plan's step order, warp and decoder
  are in the fingerprint: DALI calls that undefined behaviour). A place without a
  checkpoint (``start_at`` alone) is reached by running the batches before it,
  with a warning. With checkpointing on, DALI shuffles epochs after the first
  differently than without (its docs say so): the order for a seed changed once.
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

import base64
import binascii
import hashlib
import itertools
import logging
import re
from collections import deque
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
from feeding.state import FeederStateError

try:
    from nvidia.dali import __version__ as DALI_VERSION
    from nvidia.dali.backend import ReleaseUnusedMemory
    from nvidia.dali.pipeline import Pipeline
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError as error:
    raise missing_dali(error) from error

log = logging.getLogger(__name__)

# Distinct first words keep the seed streams apart (as in feeding.seeding).
_SHUFFLE_STREAM, _PIPELINE_STREAM = 10, 11
PROBED_FILES = 256  # headers read, spread over the file list, to size the decoded batches
# Places whose DALI checkpoint is kept: the last batches handed out. A prefetching consumer asks for its state
# up to a couple of batches behind the feeder (feeding.device reads one ahead).
CHECKPOINTS_KEPT = 4

Position = tuple[int, int]  # (epoch, batches of it delivered), as Feeder.state_at takes it


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
        self._pipeline_at: Position = (0, 0)  # (epoch, batches of it) the pipeline has handed out
        self._checkpoints: deque[tuple[Position, bytes]] = deque(maxlen=CHECKPOINTS_KEPT)  # DALI's, per place
        self._build()

    def _check_memory(self) -> None:
        """Refuse a batch whose decoded images would not fit, before DALI allocates any (a std::bad_alloc
        inside DALI's threads leaves them allocating until the kernel's OOM killer ends the process)."""
        cfg = self.config
        where, free = free_memory_for(cfg.gpu_id)
        check_dali_memory(cfg.batch_size, cfg.prefetch_factor, largest_source(self.samples.paths, cfg.max_pixels),
                          cfg.plan.output_size, free, where)

    # -- the pipeline

    @property
    def _decoder(self) -> str:
        return "cpu" if self.config.gpu_id is None else "mixed"

    def _build(self, checkpoint: bytes | None = None, at: Position = (0, 0)) -> None:
        """A new pipeline at the stream's start, or at ``at`` from DALI's ``checkpoint`` of that place."""
        self._release()  # at most one pipeline alive: a rebuild frees the old one's threads and buffers first
        cfg = self.config
        pipe = feed_pipeline(
            batch_size=cfg.batch_size,
            num_threads=max(1, cfg.workers),  # DALI's CPU threads play the DataLoader workers' part
            device_id=cfg.gpu_id,  # None: a CPU-only pipeline
            seed=_derived_seed(_PIPELINE_STREAM, cfg.seed, cfg.shard_id),  # augmentations differ per shard
            prefetch_queue_depth=cfg.prefetch_factor,
            exec_dynamic=True,
            enable_checkpointing=True,  # the reader's and random ops' state, for state_dict() (module docstring)
            checkpoint=checkpoint,
            files=self._files,
            labels=self.samples.labels.tolist(),
            steps=cfg.plan.steps,
            fused=self._warped_steps,  # 0 for a literal plan
            decoder=self._decoder,
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
        except Exception as error:  # the iterator builds the pipeline: DALI refusing the graph, device or checkpoint
            self._release()
            if checkpoint is not None:
                raise FeederStateError(f"DALI {DALI_VERSION} refused the checkpoint in the feeder state: "
                                       f"{one_line(error)}") from error.with_traceback(None)
            raise FeedError(f"DALI could not build its pipeline: {one_line(error)}") from error.with_traceback(None)
        self._pipeline_at = at
        self._checkpoints.clear()  # a failed build leaves them: the feeder's place can still be rebuilt from one
        self._checkpoints.append((at, checkpoint if checkpoint is not None else self._iterator.checkpoints()[0]))

    def _pipeline_batches(self) -> Iterator[Batch]:
        """The rest of the pipeline's current epoch, padding trimmed (a short or empty batch may come last),
        keeping DALI's checkpoint of each place on the way (``_kept``)."""
        assert self._iterator is not None
        epoch, number = self._pipeline_at
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
            number += 1
            self._pipeline_at = (epoch, number)
            if number < len(self):  # a batch at or past len() may still have the shard's tail after it
                self._keep(self._pipeline_at)
            out = outputs[0]
            yield channels_last_view(out["images"]), out["labels"].reshape(-1).to(torch.int64)
        self._pipeline_at = (epoch + 1, 0)
        self._keep(self._pipeline_at)  # the reader past the epoch's end (auto_reset): the next one's start

    def _keep(self, position: Position) -> None:
        """Keep DALI's checkpoint of the batch just taken: the state after it (the prefetched ones not counted)."""
        assert self._iterator is not None
        self._checkpoints.append((position, self._iterator.checkpoints()[0]))

    def _kept(self, position: Position) -> bytes | None:
        return next((checkpoint for place, checkpoint in self._checkpoints if place == position), None)

    def _explained(self, error: Exception) -> FeedError:
        """A DALI error in one line: what ran out or failed, and which files no longer decode, if any."""
        epoch = self._pipeline_at[0]
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

    def _discard(self, batches: int | None = None) -> None:
        """Run the pipeline's next ``batches`` batches (None: the rest of its epoch) and drop them."""
        for _ in itertools.islice(self._pipeline_batches(), batches):
            pass

    def _seek(self, target: Position) -> None:
        """Bring the pipeline to ``target`` (epoch, batches of it taken; an epoch's end is the next one's start):
        where it stands, from a kept checkpoint of that place, else by running the batches before (see the
        module docstring)."""
        epoch, start = target
        if epoch < 0:
            raise FeedError(f"epoch must be >= 0, got {epoch}")
        if self._iterator is not None and self._pipeline_at == target:
            return
        checkpoint = self._kept(target)
        if checkpoint is not None:
            self._build(checkpoint, target)
            return
        if self._iterator is None or self._pipeline_at > target:
            self._build()
        if self._pipeline_at[1] and self._pipeline_at[0] < epoch:
            self._discard()  # finish the epoch left half-way
        if epoch > self._pipeline_at[0]:
            log.warning(
                "DALI: replaying %d epoch(s) to reach epoch %d (the reader's order and the random "
                "ops' state exist only after the epochs before)", epoch - self._pipeline_at[0], epoch)
        while self._pipeline_at[0] < epoch:
            self._discard()
        if start > self._pipeline_at[1]:
            log.warning("DALI: replaying %d batch(es) of epoch %d to reach its batch %d (no DALI checkpoint of "
                        "that place: load a state_dict() to skip them)", start - self._pipeline_at[1], epoch, start)
            self._discard(start - self._pipeline_at[1])

    def _epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The reader's whole shard is read; each rank delivers the same ``num_samples`` of it. The epoch's
        last batch comes once the reader has read the shard to its end: the state there is the next epoch's
        start, whose checkpoint is then kept."""
        cfg = self.config
        full, expected, quota = self.batch_size, len(self), self.num_samples
        if start >= expected:  # start_at an epoch's end: nothing of it is left
            return
        self._seek((epoch, start))
        shard = len(shard_indices(len(self.samples), cfg.shard_id, cfg.num_shards))
        delivered, given, samples_seen = start, start * full, start * full  # the batches before are full ones
        last: Batch | None = None
        for images, labels in self._pipeline_batches():
            samples_seen += len(labels)
            take = min(len(labels), quota - given)  # a shard one sample larger leaves that one out
            if take < len(labels):
                images, labels = images[:take], labels[:take]
            if take == full or (take and not cfg.drop_last):
                delivered += 1
                given += take
                if delivered < expected:
                    yield images, labels
                else:
                    last = (images, labels)
        if delivered != expected or samples_seen != shard:
            raise FeedError(
                f"DALI delivered {samples_seen} samples in {delivered} batches for a shard of "
                f"{shard} samples ({expected} batches expected): reader and iterator disagree"
            )
        if last is not None:
            yield last

    # -- state

    def fingerprint(self) -> dict:
        """The feeders' fingerprint, with what makes the DALI graph beyond the spec: the plan's steps in the
        order the graph runs them, how many it warps as one, and the decoder. A DALI checkpoint fits only the
        graph that wrote it (DALI's docs: another is undefined behaviour)."""
        steps = ", ".join(type(op).__name__ for op in self.config.plan.steps)
        return {**super().fingerprint(), "dali_graph": f"{steps}; {self._warped_steps} warped; {self._decoder} decode"}

    def _boundary(self, position: Position) -> Position:
        """``position`` with an epoch's end written as the next epoch's start (as ``state_record`` writes it)."""
        epoch, batches = position
        return (epoch + 1, 0) if len(self) and batches >= len(self) else (epoch, batches)

    def _extra_state(self, position: Position) -> dict:
        """DALI's checkpoint of ``position``: a kept one, or (the feeder's own place, not reached yet, as after
        ``set_epoch``) the pipeline brought there as ``iter()`` would bring it."""
        place = self._boundary(position)
        if self._kept(place) is None and place == self._boundary(self._position):
            self._seek(place)
        checkpoint = self._kept(place)
        if checkpoint is None:
            kept = ", ".join(f"epoch {e} batch {b}" for (e, b), _ in self._checkpoints)
            raise FeederStateError(f"no DALI checkpoint of epoch {place[0]} batch {place[1]}: the DALI feeder keeps "
                                   f"those of its last {CHECKPOINTS_KEPT} places ({kept})")
        return {"dali": {"version": DALI_VERSION, "checkpoint": base64.b64encode(checkpoint).decode("ascii"),
                         "sha256": _checkpoint_digest(place, checkpoint)}}

    def _load_extra_state(self, state: dict, position: Position) -> None:
        """Build the pipeline from the state's DALI checkpoint: nothing before ``position`` is decoded."""
        self._build(_state_checkpoint(state, position), position)

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


def _checkpoint_digest(place: Position, checkpoint: bytes) -> str:
    """sha256 (16 hex digits) of a DALI checkpoint with its place: protobuf has no checksum of its own, and a
    changed byte in a number would restore another reader position or generator, not fail."""
    return hashlib.sha256(f"{place[0]}:{place[1]}:".encode() + checkpoint).hexdigest()[:16]


def _state_checkpoint(state: dict, place: Position) -> bytes:
    """The DALI checkpoint a feeder state carries for ``place``, checked (``FeederStateError`` otherwise)."""
    entry = state.get("dali")
    if not isinstance(entry, dict) or not isinstance(entry.get("checkpoint"), str):
        raise FeederStateError("the feeder state has no DALI checkpoint: pass what the DALI feeder's state_dict() "
                               "returned")
    if entry.get("version") != DALI_VERSION:
        raise FeederStateError(f"the feeder state's DALI checkpoint was written by DALI {entry.get('version')!r}, "
                               f"this is DALI {DALI_VERSION!r}, and DALI restores only its own version's checkpoints: "
                               f"restore it with DALI {entry.get('version')}")
    try:
        checkpoint = base64.b64decode(entry["checkpoint"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise FeederStateError(f"the DALI checkpoint in the feeder state is damaged: not base64 ({error})") from None
    if entry.get("sha256") != _checkpoint_digest(place, checkpoint):
        raise FeederStateError(f"the DALI checkpoint in the feeder state is damaged, or not the one of epoch "
                               f"{place[0]} batch {place[1]}: its sha256 does not match")
    return checkpoint


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
