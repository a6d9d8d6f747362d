"""The DALI backend: one DALI pipeline decodes and augments, on the CPU or the GPU.

The graph follows DALI's ResNet-50 example: a small ``@pipeline_def`` function
(reader + one shared processing function), a reader named ``"Reader"`` that the
iterator is pointed at, and an explicit last-batch policy. Decode runs on
``"cpu"``, or on ``"mixed"`` (nvJPEG / nvImageCodec) when ``decode_device`` is
CUDA; every later op then runs on the decoder's side ("cpu" or "gpu"), so both
paths are the same graph with the device chosen.

What this module decides, and why:

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
  ``feeding.decode`` does (see ``dali_reads_as_pil``) are transcoded once to
  lossless PNG in the cache, and DALI reads the copy.
- Decode-time downscale: DALI's decoders have no reduced-scale (libjpeg
  ``scale_num/scale_denom``) decode, so a Resize-first plan decodes at full size
  and resizes (antialiased) afterwards. Only region-of-interest decoding exists:
  a RandomResizedCrop-first plan decodes just its crop window
  (``fn.decoders.image_random_crop``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import ExifTags, Image

from feeding import decode
from feeding.cache import cache_dir
from feeding.errors import BadFile, FeedError, MissingDependencyError
from feeding.feeder import Batch, FeedConfig, Feeder, shard_indices
from feeding.resources import check_dali_memory, free_memory_for
from feeding.scan import scan
from feeding.sources import Samples
from feeding.spec import CenterCrop, ColorJitter, HorizontalFlip, Op, RandomResizedCrop, Resize, Rotate

try:
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dali_math
    from nvidia.dali.backend import ReleaseUnusedMemory
    from nvidia.dali.pipeline import Pipeline
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError as error:
    raise MissingDependencyError(
        "the 'dali' pipeline needs NVIDIA DALI for CUDA 13 (torch's build): "
        f"pip install nvidia-dali-cuda130  ({error})"
    ) from error

log = logging.getLogger(__name__)

READER = "Reader"
OUTPUTS = ("images", "labels")
TRANSCODE_VERSION = 1  # bump when the transcoding rule changes: it is part of every cache key
# Distinct first words keep the seed streams apart (as in feeding.seeding).
_SHUFFLE_STREAM, _PIPELINE_STREAM = 10, 11
PROBED_FILES = 256  # headers read, spread over the file list, to size the decoded batches

# ---------------------------------------------------------------- which files DALI reads as PIL does

# (format, mode) pairs that DALI 2.4's CPU decoder delivers as feeding.decode does
# (8-bit RGB, EXIF orientation applied, alpha dropped, 16-bit -> high byte): identical
# pixels, or +-1 level for CMYK (tests/test_dali.py checks them). Anything else is
# transcoded. DALI refuses GIF (whatever the name) and TIFF in LA, 1-bit or 32-bit
# integer mode; it ignores an orientation that only XMP gives.
_DALI_MODES = {
    "JPEG": {"L", "RGB", "CMYK"},
    "MPO": {"L", "RGB", "CMYK"},  # DALI decodes the first picture, as PIL does
    "PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"},  # 16-bit RGB(A) PNGs open as "RGB(A)"
    "BMP": {"L", "P", "RGB"},
    "PPM": {"L", "RGB"},
    "TIFF": {"L", "P", "RGB", "RGBA", "CMYK", "I;16"},
}
_ORIENTATION = ExifTags.Base.Orientation


def _orientation_only_in_xmp(image: Image.Image) -> bool:
    """True when the orientation that feeding.decode applies comes from XMP (DALI reads only EXIF)."""
    if not (image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")):
        return False
    # PIL's base getexif() reads the header only and falls back to XMP's
    # tiff:Orientation when EXIF has none: the rule feeding.decode follows.
    if Image.Image.getexif(image).get(_ORIENTATION, 1) == 1:
        return False
    raw = image.info.get("exif")
    exif = Image.Exif()
    if raw:
        exif.load(raw)
    in_exif = _ORIENTATION in exif or _ORIENTATION in getattr(image, "tag_v2", {})
    return not in_exif


def dali_reads_as_pil(path: str) -> bool:
    """Whether DALI's decoder delivers ``path`` as ``feeding.decode.load_pil`` does; header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's warnings about odd headers are the scan's business
            with Image.open(path, formats=decode.IMAGE_OPEN_FORMATS) as image:
                return image.mode in _DALI_MODES.get(image.format or "", ()) and not _orientation_only_in_xmp(image)
    except Exception:  # noqa: BLE001 - any header PIL cannot parse: let the transcoder name the problem
        return False


def _transcode_key(path: str) -> str:
    stat = os.stat(path)
    identity = f"{TRANSCODE_VERSION}\0{os.path.realpath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()


def transcode_for_dali(path: str, max_pixels: int, root: Path | None = None) -> str:
    """A lossless 8-bit RGB PNG of ``path`` as ``feeding.decode`` reads it, made once and cached.

    The cache key holds the file's real path, size and modification time, so an
    edited file is transcoded again. Written atomically (temporary file + rename).
    """
    key = _transcode_key(path)
    folder = root / "dali-transcoded" / key[:2] if root is not None else cache_dir("dali-transcoded", key[:2])
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}.png"
    if target.is_file():
        return str(target)
    image = decode.load_pil(path, max_pixels)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG", compress_level=1)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return str(target)


def dali_paths(paths: np.ndarray, max_pixels: int, root: Path | None = None) -> list[str]:
    """The paths DALI should read: each file itself, or its transcoded copy when DALI would misread it."""
    return [p if dali_reads_as_pil(p) else transcode_for_dali(p, max_pixels, root) for p in paths.tolist()]


# ---------------------------------------------------------------- the graph


def _uniform_factor(amount: float):
    """A per-sample factor drawn from [1 - amount, 1 + amount]."""
    return fn.random.uniform(range=(1.0 - amount, 1.0 + amount))


def _apply(images, op: Op, device: str):
    """One plan step as DALI ops on ``device``."""
    if isinstance(op, Resize):
        height, width = _shorter_side_shape(images, op.size) if op.keeps_aspect else op.size
        return fn.resize(images, device=device, resize_x=width, resize_y=height,
                         interp_type=types.INTERP_LINEAR, antialias=True)
    if isinstance(op, RandomResizedCrop):
        return fn.random_resized_crop(images, device=device, size=op.size, random_area=op.scale,
                                      random_aspect_ratio=op.ratio, interp_type=types.INTERP_LINEAR,
                                      antialias=True)
    if isinstance(op, CenterCrop):
        # rounding="truncate" puts the window at (H - h) // 2 as feeding.plan.center_box does.
        return fn.crop(images, device=device, crop=op.size, rounding="truncate",
                       out_of_bounds_policy="pad", fill_values=0)
    if isinstance(op, Rotate):
        if not op.degrees:
            return images
        return fn.rotate(images, device=device, angle=fn.random.uniform(range=(-op.degrees, op.degrees)),
                         keep_size=True, fill_value=0, interp_type=types.INTERP_LINEAR)
    if isinstance(op, HorizontalFlip):
        return images if op.p == 0 else fn.flip(images, device=device, horizontal=_flip_draw(op))
    if isinstance(op, ColorJitter):
        # As PIL's ImageEnhance (the PIL backend): brightness scales, contrast pivots
        # on the image's mean grey, saturation blends with the grey image.
        if op.brightness or op.contrast:
            mean_grey = fn.reductions.mean(
                fn.color_space_conversion(images, device=device, image_type=types.RGB, output_type=types.GRAY))
            if device == "gpu":
                mean_grey = mean_grey.cpu()  # named arguments must live on the CPU (one scalar per image)
            images = fn.brightness_contrast(
                images, device=device,
                brightness=_uniform_factor(op.brightness) if op.brightness else 1.0,
                contrast=_uniform_factor(op.contrast) if op.contrast else 1.0,
                contrast_center=mean_grey)
        if op.saturation:
            images = fn.saturation(images, device=device, saturation=_uniform_factor(op.saturation))
        return images
    raise TypeError(f"the DALI backend has no implementation of {op!r}")


def _shorter_side_shape(images, shorter: int):
    """Per-sample (height, width) of ``feeding.spec.shorter_side_shape``, as float DALI nodes on the CPU.

    Not ``fn.resize(resize_shorter=...)``: it rounds the longer side to the
    nearest pixel, where torchvision (and the host backends) truncate.
    """
    shape = images.shape()  # HWC, int64, on the CPU (named arguments must live there)
    height, width = shape[0], shape[1]
    short = dali_math.min(height, width)
    return (fn.cast(shorter * height // short, dtype=types.FLOAT),
            fn.cast(shorter * width // short, dtype=types.FLOAT))


def _flip_draw(op: HorizontalFlip):
    return 1 if op.p >= 1 else fn.random.coin_flip(probability=op.p)


def process_images(encoded, steps: tuple[Op, ...], decoder: str):
    """Decode and run the plan's steps; uint8 CHW out. The ops run where the decoder puts the pixels."""
    device = "gpu" if decoder == "mixed" else "cpu"
    first = steps[0]
    if isinstance(first, RandomResizedCrop):
        # Region-of-interest decode: only the crop window is decoded.
        images = fn.decoders.image_random_crop(encoded, device=decoder, output_type=types.RGB,
                                               random_area=first.scale, random_aspect_ratio=first.ratio)
        images = fn.resize(images, device=device, resize_x=first.size[1], resize_y=first.size[0],
                           interp_type=types.INTERP_LINEAR, antialias=True)
        steps = steps[1:]
    else:
        # fn.decoders.image_crop is not used for a CenterCrop first: it fails on a
        # window larger than the image, where CenterCrop pads with black.
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
    mirror = 0
    if steps and isinstance(steps[-1], HorizontalFlip):
        # A flip at the end folds into the layout change below (one pass, not two).
        mirror = 0 if steps[-1].p == 0 else _flip_draw(steps[-1])
        steps = steps[:-1]
    for op in steps:
        images = _apply(images, op, device)
    # No mean/std: stays uint8 (Normalize runs on the device after transfer).
    return fn.crop_mirror_normalize(images, device=device, dtype=types.UINT8, output_layout="CHW", mirror=mirror)


@pipeline_def
def feed_pipeline(files, labels, steps, decoder, shard_id, num_shards, shuffle, shuffle_seed):
    """Read this shard's files in this epoch's order; decode and augment them."""
    encoded, labels = fn.readers.file(
        files=files,
        labels=labels,
        name=READER,
        shard_id=shard_id,
        num_shards=num_shards,
        shuffle_after_epoch=shuffle,
        shuffle_after_epoch_seed=shuffle_seed if shuffle else None,  # DALI complains if set unused
        # Without shuffling, each shard keeps its own slice every epoch (DALI would
        # otherwise move to the next shard); shuffle_after_epoch implies it.
        stick_to_shard=not shuffle,
        pad_last_batch=True,
    )
    return process_images(encoded, steps, decoder), labels


# ---------------------------------------------------------------- the feeder


def _derived_seed(*words: int) -> int:
    """A 31-bit seed from words (DALI takes non-negative int seeds)."""
    sequence = np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words])
    return int(sequence.generate_state(1)[0]) & 0x7FFFFFFF


def _describe(bad: list[BadFile], limit: int = 3) -> str:
    shown = "; ".join(f"{b.path}: {b.reason}" for b in bad[:limit])
    return shown + (f"; and {len(bad) - limit} more" if len(bad) > limit else "")


class DaliFeeder(Feeder):
    """A Feeder backed by one DALI pipeline; images on the GPU when ``decode_device`` is CUDA."""

    def __init__(self, samples: Samples, config: FeedConfig) -> None:
        check_decode_device(config)  # before the scan: a GPU that is not there is not worth scanning for
        good, skipped = _validated(samples, config)
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
            # exec_dynamic hands out tensors that own their memory (DLPack), not
            # views of a buffer DALI reuses, so no copy is needed.
            yield out["images"], out["labels"].reshape(-1).to(torch.int64)
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


def _validated(samples: Samples, config: FeedConfig) -> tuple[Samples, list[BadFile]]:
    """The samples DALI may read, and the files left out (raises FeedError when on_bad='fail')."""
    result = scan(samples, config.max_pixels, Path(config.cache_dir) if config.cache_dir else None,
                  workers=config.workers)
    bad = list(result.bad)  # listing problems first, then files that do not decode
    if bad and config.on_bad == "fail":
        raise FeedError(f"{len(bad)} file(s) cannot be delivered (on_bad='fail'): {_describe(bad)}")
    if len(result.good) == 0:
        raise FeedError(f"no readable images among {len(samples)} in {samples.root}: {_describe(bad)}")
    return result.good, bad
