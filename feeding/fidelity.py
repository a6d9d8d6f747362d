"""What a fast path's picture is worth: PSNR against the written order, step by step, antialiased.

The reference decodes the file at full size with PIL (no draft, no DCT scaling)
and runs the spec's host ops one by one in the written order, each as its PIL
form (``Op.pil``: an antialiased resize, a bilinear rotate at the full size),
drawing their randomness from the generator it is given. A host transform given
a generator seeded alike makes the same draws in the same order (``feeding.ops``),
so the two pictures differ only by how each path resamples: the PSNR measures
that, not a different augmentation.
"""
from __future__ import annotations

import math

import numpy as np

from feeding import decode
from feeding.spec import AugSpec


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images of one shape, in dB (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare a {a.shape} image with a {b.shape} one")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def reference(path: str, spec: AugSpec, rng: np.random.Generator, max_pixels: int = 2**27) -> np.ndarray:
    """``path`` through ``spec``'s host ops in the written order, one PIL step each: HxWx3 uint8."""
    image = decode.load_pil(path, max_pixels)
    for op in spec.host_ops:
        shape = (image.height, image.width)
        image = op.pil(image, shape, op.draw(shape, rng))
    return np.asarray(image)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` in a fidelity run: the reference and the path under test each get one."""
    return np.random.default_rng([seed, index])


def summary(values: list[float]) -> dict:
    """Median and worst PSNR of a list of per-image values (inf counts as identical)."""
    ordered = sorted(values)
    return {"images": len(values), "median_db": float(np.median(ordered)), "worst_db": ordered[0]}


__all__ = ["image_rng", "psnr", "reference", "summary"]
