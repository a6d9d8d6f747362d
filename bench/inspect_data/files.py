"""What the files say, from their headers and bytes only: sizes (height x width, pixels), modes,
formats, byte sizes, outliers, exact duplicates, and which files the thumbnail sheet shows."""
from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from bench.inspect_data.labels import group_name
from feeding.decode import IMAGE_OPEN_FORMATS, probe
from feeding.errors import BadImageError
from feeding.sources import Samples

# The formats a file name promises; PIL and OpenCV read by content, so a mismatch is a note, not an error.
EXTENSION_FORMATS = {
    ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".png": ("PNG",), ".bmp": ("BMP",),
    ".ppm": ("PPM",), ".pgm": ("PPM",), ".tif": ("TIFF",), ".tiff": ("TIFF",), ".webp": ("WEBP",),
}  # fmt: skip
BYTE_BINS = 20  # bins of the byte-size histogram
TOP_SIZES = 10  # the most common heights x widths: rows in the Markdown, labels on the sizes plot
# An outlier (pixel count or bytes): beyond Q1 - 3 IQR or Q3 + 3 IQR, and at least 2x off the median
# (where most images share one size the IQR is 0, and a few pixels of difference are no outlier).
OUTLIER_IQR = 3.0
OUTLIER_FACTOR = 2.0
LOG_SCALE_RATIO = 20.0  # a plot axis goes logarithmic when max / median exceeds this
THUMBNAILS_PER_CLASS = 8  # images a class shows on the thumbnail sheet
THUMBNAIL_CLASSES = 40  # rows on the thumbnail sheet; more would not be readable
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing


class Header(NamedTuple):
    """What one file's header says; None where the file or its header cannot be read."""

    bytes: int | None
    size: tuple[int, int] | None  # (height, width) in pixels as delivered, after EXIF orientation
    mode: str | None  # PIL mode: RGB, L, CMYK, P, RGBA, ...
    format: str | None  # JPEG, PNG, ...


def read_header(path: str, max_pixels: int) -> Header:
    """Byte size, delivered size (height, width), PIL mode and format, without decoding any pixel."""
    try:
        n_bytes = os.stat(path).st_size
    except OSError:
        return Header(None, None, None, None)
    try:
        height, width = probe(path, max_pixels)
    except BadImageError:
        return Header(n_bytes, None, None, None)  # the validation scan gives the reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's notes on odd headers; probe has already accepted this one
        with Image.open(path, formats=IMAGE_OPEN_FORMATS) as image:
            return Header(n_bytes, (height, width), image.mode, image.format)


def is_squashed(values) -> bool:
    """True where one large value would squash a linear axis: max / median above LOG_SCALE_RATIO."""
    values = np.asarray(values, dtype=np.float64)
    values = values[values > 0]
    return bool(values.size) and float(values.max()) > LOG_SCALE_RATIO * float(np.median(values))


def outlier_mask(values: np.ndarray) -> np.ndarray:
    """Which values lie beyond Q1 - 3 IQR / Q3 + 3 IQR and at least 2x off the median."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 3:
        return np.zeros(values.shape, dtype=bool)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    spread = OUTLIER_IQR * (q3 - q1)
    beyond_fences = (values < q1 - spread) | (values > q3 + spread)
    far_from_median = (values > OUTLIER_FACTOR * median) | (values * OUTLIER_FACTOR < median)
    return beyond_fences & far_from_median


def outliers(paths: list[str], headers: list[Header]) -> list[dict]:
    """The files whose pixel count or byte size is far off the rest: path, height, width, bytes, by what."""
    sized = [i for i, h in enumerate(headers) if h.size is not None]
    weighed = [i for i, h in enumerate(headers) if h.bytes is not None]
    by_what = defaultdict(list)
    pixels = np.array([headers[i].size[0] * headers[i].size[1] for i in sized], dtype=np.float64)
    for i in np.asarray(sized)[outlier_mask(pixels)].tolist():
        by_what[i].append("pixels")
    n_bytes = np.array([headers[i].bytes for i in weighed], dtype=np.float64)
    for i in np.asarray(weighed)[outlier_mask(n_bytes)].tolist():
        by_what[i].append("bytes")
    records = []
    for i in sorted(by_what):
        height, width = headers[i].size or (None, None)
        records.append({"path": paths[i], "height": height, "width": width, "bytes": headers[i].bytes,
                        "by": by_what[i]})
    return records


def byte_stats(n_bytes: np.ndarray) -> dict | None:
    """Total, min, median, mean, max (bytes) and a histogram; log-spaced bins where one file squashes it."""
    if not n_bytes.size:
        return None
    log_scale = is_squashed(n_bytes) and n_bytes.min() > 0
    bins = np.geomspace(n_bytes.min(), n_bytes.max(), BYTE_BINS + 1) if log_scale else BYTE_BINS
    counts, edges = np.histogram(n_bytes, bins=bins)
    return {
        "total": int(n_bytes.sum()),
        "min": int(n_bytes.min()),
        "median": float(np.median(n_bytes)),
        "mean": round(float(n_bytes.mean()), 1),
        "max": int(n_bytes.max()),
        "log_scale": bool(log_scale),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def header_stats(paths: list[str], headers: list[Header]) -> dict:
    """Sizes (height x width, pixels), modes, formats, byte sizes and outliers over the files whose header reads."""
    readable = [h for h in headers if h.size is not None]
    sizes = Counter(h.size for h in readable)
    mismatched = [
        {"path": path, "format": h.format}
        for path, h in zip(paths, headers)
        if h.format and h.format not in EXTENSION_FORMATS.get(Path(path).suffix.lower(), (h.format,))
    ]
    return {
        "readable": len(readable),
        "unreadable": len(headers) - len(readable),
        "sizes": [
            {"height": h, "width": w, "images": n}
            for (h, w), n in sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
        ],
        "modes": dict(Counter(h.mode for h in readable).most_common()),
        "formats": dict(Counter(h.format for h in readable).most_common()),
        "extension_mismatch": mismatched,
        "bytes": byte_stats(np.array([h.bytes for h in headers if h.bytes is not None], dtype=np.int64)),
        "outliers": outliers(paths, headers),
    }


def file_digest(path: str) -> str | None:
    """BLAKE2b of the file's bytes (hex), or None where it cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def duplicates(samples: Samples, headers: list[Header], has_groups: bool) -> list[dict]:
    """Sets of files with the same bytes: paths, classes, and whether they disagree on the label or group.

    Only files that share a byte size with another can be equal, so only those are hashed.
    ``has_groups``: the samples carry person or group ids, so a copy in two groups leaks across a split.
    """
    by_size = defaultdict(list)
    for index, header in enumerate(headers):
        if header.bytes:
            by_size[header.bytes].append(index)
    same_size = sorted(index for indexes in by_size.values() if len(indexes) > 1 for index in indexes)
    by_digest = defaultdict(list)
    for index in same_size:
        digest = file_digest(samples.paths[index])
        if digest is not None:
            by_digest[digest].append(index)
    sets = []
    for indexes in by_digest.values():
        if len(indexes) < 2:
            continue
        classes = [samples.classes[samples.labels[i]] for i in indexes]
        record = {"paths": [str(samples.paths[i]) for i in indexes], "bytes": headers[indexes[0]].bytes,
                  "classes": classes, "label_conflict": len(set(classes)) > 1}
        if has_groups:
            record["groups"] = [group_name(samples, i) for i in indexes]
            record["group_leak"] = len(set(record["groups"])) > 1
        sets.append(record)
    return sorted(sets, key=lambda record: record["paths"][0])


def thumbnail_picks(samples: Samples, headers: list[Header], bad: set[str]) -> dict[str, list[str]]:
    """Up to THUMBNAILS_PER_CLASS readable files per class, spread over the class's file list."""
    picks = {}
    for label, name in enumerate(samples.classes[:THUMBNAIL_CLASSES]):
        usable = [i for i in np.flatnonzero(samples.labels == label).tolist()
                  if headers[i].size is not None and samples.paths[i] not in bad]
        if not usable:
            continue
        # Evenly spaced, not the first few: those are often one person's or one session's.
        spots = np.unique(np.linspace(0, len(usable) - 1, num=min(THUMBNAILS_PER_CLASS, len(usable))).round())
        picks[name] = [str(samples.paths[usable[int(spot)]]) for spot in spots]
    return picks
