"""Which files DALI's decoder delivers as ``feeding.decode`` does, and lossless copies of the others.

DALI cannot leave a file out of a batch, and it decodes some valid files
differently from the host backends (or refuses them). The feeder hands it each
file that it reads as PIL does, and for every other file a lossless 8-bit RGB PNG
of the file as ``feeding.decode`` reads it, made once and kept in the cache.
Nothing here imports DALI.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from feeding import decode
from feeding.cache import cache_dir
from feeding.io import write_atomic

TRANSCODE_VERSION = 1  # bump when the transcoding rule changes: it is part of every cache key

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
    edited file is transcoded again. Written atomically (``feeding.io.write_atomic``).
    """
    key = _transcode_key(path)
    folder = root / "dali-transcoded" / key[:2] if root is not None else cache_dir("dali-transcoded", key[:2])
    target = folder / f"{key}.png"
    if target.is_file():
        return str(target)
    encoded = io.BytesIO()
    decode.load_pil(path, max_pixels).save(encoded, format="PNG", compress_level=1)
    write_atomic(target, encoded.getvalue())
    return str(target)


def dali_paths(paths: np.ndarray, max_pixels: int, root: Path | None = None) -> list[str]:
    """The paths DALI should read: each file itself, or its transcoded copy when DALI would misread it."""
    return [p if dali_reads_as_pil(p) else transcode_for_dali(p, max_pixels, root) for p in paths.tolist()]
