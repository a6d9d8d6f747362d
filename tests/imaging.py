"""Helpers for tests that compare pictures, and the fine-detail test pictures of ``feeding.detail``."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from feeding.detail import (  # noqa: F401  (re-exported for tests)
    DEFAULT_SHAPE,
    KINDS,
    detail_photo,
    detail_set,
    fine_stripes,
    high_frequency_rms,
    high_frequency_share,
    noise_texture,
    text_strokes,
    write_detail_jpegs,
)

SHRINK = 512 / 224  # the competition's photo height to the benchmark's size


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (inf when they are identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def shrink_psnr(image: np.ndarray, factor: float = SHRINK) -> tuple[float, float]:
    """PSNR (dB) of a nearest and of a bilinear ``factor``-times shrink, neither prefiltered (cv2), against PIL's
    antialiased bilinear ``Image.resize``: how far a warp that samples without a prefilter strays."""
    height, width = image.shape[:2]
    size = (round(width / factor), round(height / factor))
    reference = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    nearest = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
    bilinear = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return psnr(nearest, reference), psnr(bilinear, reference)
