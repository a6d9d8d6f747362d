"""The rows that are not feedbench pipelines: the naive reference a typical user writes, and this
machine's decode-only limit; also the plain DataLoader that runs a Dataset as a user would."""
from __future__ import annotations

import multiprocessing
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from feeding import decode
from feeding.backends.host import HostFeeder, HostTransform
from feeding.errors import BadFile, FeedError
from feeding.feeder import FeedConfig, Feeder
from feeding.plan import make_plan
from feeding.spec import AugSpec, Normalize, Resize, Shape, train_spec

UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)  # what PIL raises for a file it cannot open


# The torchvision transform that does each op's work, as a tutorial writes it (torchvision's defaults,
# e.g. RandomRotation's nearest-neighbour). An op not listed here is one the naive row cannot do: it
# is left out and named (``torchvision_steps``), never replaced by other work.
TORCHVISION_STEPS = {
    "Resize": lambda T, op: T.Resize(op.size),
    "RandomResizedCrop": lambda T, op: T.RandomResizedCrop(op.size, scale=op.scale, ratio=op.ratio),
    "CenterCrop": lambda T, op: T.CenterCrop(op.size),
    "Rotate": lambda T, op: T.RandomRotation(op.degrees),
    "HorizontalFlip": lambda T, op: T.RandomHorizontalFlip(op.p),
    "ColorJitter": lambda T, op: T.ColorJitter(brightness=op.brightness, contrast=op.contrast,
                                               saturation=op.saturation),
}


def torchvision_steps(spec: AugSpec) -> tuple[list, tuple[str, ...]]:
    """(the torchvision transforms that run ``spec`` in its written order, then ToTensor and Normalize
    on the CPU; the names of the ops torchvision has no counterpart for here, left out)."""
    from torchvision import transforms

    steps, missing = [], []
    for op in spec.host_ops:
        make = TORCHVISION_STEPS.get(type(op).__name__)
        if make is None:
            missing.append(type(op).__name__)
        else:
            steps.append(make(transforms, op))
    # What the feedbench rows' device step does (feeding.device.DeviceFeeder): the spec's Normalize, else the default.
    normalize = spec.normalize or Normalize()
    steps += [transforms.ToTensor(), transforms.Normalize(normalize.mean, normalize.std)]
    return steps, tuple(missing)


def naive_description(spec: AugSpec) -> str:
    """The naive row's transforms in words, and what it leaves out of ``spec`` (for the report's notes)."""
    steps, missing = torchvision_steps(spec)
    text = f"torchvision {', '.join(type(step).__name__ for step in steps)}"
    if missing:
        text += (f"; torchvision has no counterpart here for {', '.join(missing)}: the naive row leaves "
                 f"{'it' if len(missing) == 1 else 'them'} out, so it does less work than the other rows")
    return text


class NaiveTorchvisionDataset(Dataset):
    """REFERENCE ONLY, not a feedbench pipeline: the loader a typical user writes.

    PIL opens each file, torchvision runs the spec's ops in their written order on
    the full-resolution image (the benchmark spec rotates *before* resizing), and
    ``ToTensor``/``Normalize`` make float tensors on the CPU; a plain DataLoader
    then collates them with ``default_collate``. Kept as written in tutorials: it
    is the baseline the other rows are compared with. ``spec``: what it runs
    (default: the benchmark spec at ``size`` and ``degrees``); an op torchvision
    has no counterpart for is left out, and named in ``unexpressed``.

    A file PIL cannot open is what a user's try/except does with it: skipped, and the
    next file taken in its place. Which files were skipped is kept in shared memory
    (one flag per file), so the DataLoader's worker processes report them too.
    """

    def __init__(self, paths: Iterable[str], labels: Iterable[int], size: Shape = (224, 224),
                 degrees: float = 10.0, spec: AugSpec | None = None) -> None:
        from torchvision import transforms

        self.paths = [str(path) for path in paths]
        self.labels = list(labels)
        # Shared with the worker processes (handed to them when they start): 1 = skipped.
        self._unreadable = multiprocessing.Array("b", len(self.paths), lock=False)
        self._reasons: dict[str, str] = {}  # this process's record of why; workers only set the flags
        steps, self.unexpressed = torchvision_steps(spec or train_spec(size, degrees=degrees))
        self.transform = transforms.Compose(steps)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.paths)):
            used = (index + offset) % len(self.paths)
            try:
                image = _open_rgb(self.paths[used])
            except UNREADABLE as error:
                self._unreadable[used] = 1
                self._reasons[self.paths[used]] = f"{type(error).__name__}: {error}"
                continue
            return self.transform(image), self.labels[used]
        raise FeedError(f"PIL can open none of the {len(self.paths)} files (first: {self.paths[0]})")

    @property
    def skipped(self) -> list[BadFile]:
        """The files skipped so far, by this process or any of its DataLoader's workers."""
        flagged = np.flatnonzero(np.frombuffer(self._unreadable, dtype=np.int8))
        return [BadFile(self.paths[i], self._reason(self.paths[i])) for i in flagged]

    def _reason(self, path: str) -> str:
        """Why ``path`` was skipped; a file a worker skipped is opened again here to say."""
        if path not in self._reasons:
            try:
                _open_rgb(path)
                self._reasons[path] = "unreadable once, readable now"
            except UNREADABLE as error:
                self._reasons[path] = f"{type(error).__name__}: {error}"
        return self._reasons[path]


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:  # closed even when decoding fails
        return image.convert("RGB")


class DecodeOnlyTransform(HostTransform):
    """Full-resolution decode and nothing else: the machine's limit for these files.

    The same read, header check and decoder as the OpenCV pipeline
    (``decode.load_cv2``: libjpeg-turbo SIMD for JPEGs), run by the same workers,
    processes or threads; the pixels are dropped instead of resampled, so the
    row measures decoding, not the collation of full-size images.
    """

    def __init__(self, max_pixels: int) -> None:
        super().__init__(make_plan(DECODE_ONLY_SPEC), max_pixels)
        self.decoded_shapes: list[tuple[int, ...]] = []  # the last batch's, for tests
        self._scratch = decode.Scratch()  # reused memory, as the fused OpenCV path decodes into

    def clone(self) -> "DecodeOnlyTransform":
        twin = super().clone()
        twin._scratch, twin.decoded_shapes = decode.Scratch(), []
        return twin

    def decode(self, path: str, data: bytes, rng: np.random.Generator) -> np.ndarray:
        return decode.load_cv2(path, self.max_pixels, data=data, scratch=self._scratch)

    def augment(self, decoded: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return decoded

    def write(self, image: np.ndarray, out: np.ndarray) -> None:
        if len(self.decoded_shapes) > 1024:
            self.decoded_shapes.clear()
        self.decoded_shapes.append(image.shape)

    @property
    def releases_gil(self) -> bool:
        return True


DECODE_ONLY_SPEC = AugSpec((Resize((1, 1)),))  # a 1x1 slot per image: nothing is collated


def decode_only_feeder(samples, batch: int, workers: int, executor: str) -> Feeder:
    """The decode-only row's feeder: ``workers`` processes or threads (``executor``), ``batch`` images a batch."""
    # The OpenCV pipeline's feeder (the same read and decoder as DecodeOnlyTransform), its transform replaced.
    config = FeedConfig(pipeline="albumentations", batch_size=batch, workers=workers, executor=executor,
                        spec=DECODE_ONLY_SPEC)
    return HostFeeder(samples, config, DecodeOnlyTransform(config.max_pixels))


def plain_loader(dataset: Dataset, batch: int, workers: int) -> DataLoader:
    """The DataLoader a typical user writes: default collate, shuffled, full batches.

    Its workers are kept across epochs, which a typical user's loader does not
    do: the timed windows span epochs, and the embedded sample's epochs are 6
    batches long, so restarting workers would cost it a share of its time that
    a real data set's epochs (hundreds of batches) never pay. The ratios stay
    those of the steady state.
    """
    shuffle = not isinstance(dataset, IterableDataset)  # an IterableDataset cannot be shuffled
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)
