"""Each pipeline's picture against the written order's antialiased reference (``feeding.fidelity``).

A row is one way of running a spec on one file: feedbench's pipelines (fused, step
by step, reordered), the naive torchvision loader, DALI. Rows that draw from the
image's own generator (``feeding.fidelity.image_rng``) make the reference's draws,
so any spec compares; rows with a random source of their own (torchvision's
torch RNG, DALI's, albumentations' in its step-by-step form) are measured only on
specs whose draws are fixed (``AugSpec.is_deterministic``), and are reported as
not comparable otherwise, never scored on a different augmentation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from feeding import fidelity
from feeding.errors import BadImageError, FeedError
from feeding.spec import AugSpec

MAX_PIXELS = 2**27
SEED = 0  # the reference and every row draw image i's parameters from image_rng(SEED, i)
Picture = Callable[[list[str]], list[np.ndarray]]  # the row's output for each file, in order


@dataclass(frozen=True)
class Row:
    """One way of running a spec: its name, what it does in words, and whether it makes the reference's draws."""

    name: str
    does: str
    shares_draws: bool
    pictures: Callable[[AugSpec], Picture]
    available: Callable[[], str | None] = lambda: None  # why it cannot run here, or None


def _host(transform_class, **plan_options) -> Callable[[AugSpec], Picture]:
    from feeding.plan import make_plan

    def build(spec: AugSpec) -> Picture:
        transform = transform_class(make_plan(spec, **plan_options), MAX_PIXELS)
        return lambda paths: [transform(path, fidelity.image_rng(SEED, i)) for i, path in enumerate(paths)]

    return build


def _unfiltered(spec: AugSpec) -> Picture:
    """The fused warp with no antialiasing canvas: what the OpenCV path did before it had one."""
    from feeding import affine
    from feeding.backends.albu import AlbumentationsTransform
    from feeding.plan import make_plan

    transform = AlbumentationsTransform(make_plan(spec), MAX_PIXELS)

    def pictures(paths):
        kept, affine.filter_canvas = affine.filter_canvas, lambda piece, out, *args: None
        try:
            return [transform(path, fidelity.image_rng(SEED, i)) for i, path in enumerate(paths)]
        finally:
            affine.filter_canvas = kept

    return pictures


def _torchvision(spec: AugSpec) -> Picture:
    """The naive row's transforms (bench.compare.reference), on PIL images, as uint8 pictures."""
    from torchvision import transforms

    from bench.compare.reference import torchvision_steps
    from feeding import decode

    steps, missing = torchvision_steps(spec)
    if missing:
        raise ValueError(f"torchvision has no counterpart here for {', '.join(missing)}")
    compose = transforms.Compose(steps[:-2])  # without ToTensor and Normalize
    return lambda paths: [np.asarray(compose(decode.load_pil(path, MAX_PIXELS))) for path in paths]


def _dali(spec: AugSpec) -> Picture:
    """DALI's CPU pipeline on the files, in order (each file's label is its index, to find it again)."""
    from feeding.factory import create_feeder
    from feeding.feeder import FeedConfig
    from feeding.sources import Samples

    def pictures(paths):
        n = len(paths)
        samples = Samples(np.array(paths), np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64),
                          tuple(str(i) for i in range(n)), root="", layout="imagefolder")
        config = FeedConfig(pipeline="dali", batch_size=min(16, n), workers=2, spec=spec, shuffle=False,
                            drop_last=False)
        out: list[np.ndarray | None] = [None] * n
        with create_feeder(samples, config) as feeder:
            for images, labels in feeder:
                for image, label in zip(images, labels.tolist()):
                    out[label] = image.permute(1, 2, 0).numpy()
        return out

    return pictures


def _dali_missing() -> str | None:
    from feeding.backends import capabilities

    return capabilities("dali").missing_dependency()


def rows() -> list[Row]:
    from feeding.backends.albu import AlbumentationsTransform
    from feeding.backends.pil import PilTransform

    return [
        Row("naive torchvision", "PIL decode, torchvision transforms in the written order (RandomRotation's "
            "default nearest-neighbour), antialiased Resize", False, _torchvision),
        Row("feedbench pil", "written order as one PIL warp (+ antialiased resize of its canvas)", True,
            _host(PilTransform)),
        Row("feedbench albumentations", "written order as one OpenCV warp into a canvas at the image's scale, "
            "PIL's antialiased resize, ColorJitter as lookup tables", True, _host(AlbumentationsTransform)),
        Row("feedbench pil, literal order", "--literal-order: each op its own PIL call, written order", True,
            _host(PilTransform, literal=True)),
        Row("feedbench albumentations, literal order", "--literal-order: albumentations step by step (its own "
            "draws; area resize)", False, _host(AlbumentationsTransform, literal=True)),
        Row("feedbench --reorder", "resize moved before the rotation (the old planner): the rotation shears "
            "the photo", True, _host(AlbumentationsTransform, reorder=True)),
        Row("fused warp, no antialiasing", "one OpenCV warp straight to the output (the fast path before this "
            "filter)", True, _unfiltered),
        Row("dali", "DALI CPU: decode, one fn.warp_affine in the written order (+ antialiased resize)", False,
            _dali, _dali_missing),
    ]


def _readable(paths: list[str], spec: AugSpec) -> tuple[list[str], list[np.ndarray]]:
    """The files the reference can read, and its pictures of them: an unreadable file is no one's picture."""
    kept, references = [], []
    for path in paths:
        try:  # drawn with the index the file has among the kept ones, as the rows number them
            references.append(fidelity.reference(path, spec, fidelity.image_rng(SEED, len(kept))))
        except BadImageError:
            continue
        kept.append(path)
    return kept, references


def pinned(spec: AugSpec) -> AugSpec:
    """``spec`` with every random op fixed at one draw (``Op.pinned``): what every row can run alike."""
    return AugSpec([op.pinned() for op in spec.ops])


def measure(paths: list[str], spec: AugSpec, names: tuple[str, ...] | None = None) -> list[dict]:
    """Per row (``names``: these rows only): median and worst PSNR against the reference, or why the row
    is not scored."""
    paths, references = _readable(paths, spec)
    results = []
    for row in rows():
        if names is not None and row.name not in names:
            continue
        entry = {"row": row.name, "does": row.does}
        missing = row.available()
        if missing:
            entry["skipped"] = missing
        elif not (row.shares_draws or spec.is_deterministic):
            entry["skipped"] = "draws its own random parameters, so not the same augmentation"
        else:
            try:
                pictures = row.pictures(spec)(paths)
            except (ValueError, FeedError) as error:  # an op it cannot express, a file it cannot read
                entry["skipped"] = str(error).splitlines()[0]
            else:
                entry.update(fidelity.summary([fidelity.psnr(ref, got) for ref, got in zip(references, pictures)]))
        results.append(entry)
    return results


def format_db(value: float) -> str:
    return "identical" if math.isinf(value) else f"{value:.1f}"


__all__ = ["Row", "format_db", "measure", "pinned", "rows"]
