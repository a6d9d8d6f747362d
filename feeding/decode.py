"""Safe image loading shared by the CPU backends: one rule for size, orientation and colour.

The rules, identical for ``load_pil`` and ``load_cv2`` (and what ``probe`` reports):

- The size is checked from the header before any pixel is allocated: more than
  ``max_pixels`` pixels is a decompression bomb and is refused.
- The EXIF orientation (or XMP ``tiff:Orientation``) is read from the header and
  applied; ``probe`` reports the size after it.
- The result is always 8-bit RGB. Alpha is dropped, not composited, as
  torchvision's loader, OpenCV's ``IMREAD_COLOR`` and DALI do; 16-bit samples keep
  their high byte (what libpng and OpenCV deliver), where PIL's ``convert`` would
  clip them at 255.
- Any failure to decode (truncated, corrupt, unknown) raises ``BadImageError``
  naming the file. Truncated files are never padded (PIL's
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False).
"""
from __future__ import annotations

import functools
import io
import importlib.metadata
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np
import PIL
from PIL import ExifTags, Image, features
# Image.open(formats=...) fails with KeyError on a format whose plugin is not
# imported yet (only BMP, GIF, JPEG, PNG and PPM are, at first use): register ours.
from PIL import (  # noqa: F401
    BmpImagePlugin,
    GifImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from feeding.errors import BadImageError

# The formats PIL may try. Naming them keeps PIL from running the parsers of
# exotic formats (EPS would even start Ghostscript) on files with image names.
IMAGE_OPEN_FORMATS = ("JPEG", "PNG", "BMP", "PPM", "TIFF", "WEBP", "GIF")
# The JPEG opener returns "MPO" for phone JPEGs with extra frames; the first frame is the picture.
JPEG_FORMATS = ("JPEG", "MPO")
# Formats whose every mode OpenCV decodes as PIL + our rules do (checked in tests/test_decode.py).
CV2_FORMATS = ("JPEG", "MPO", "PNG", "BMP")
REDUCTIONS = (1, 2, 4, 8)
# IMREAD_REDUCED_COLOR_n includes the BGR bit, which OpenCV 5 refuses together with
# IMREAD_COLOR_RGB; the GRAYSCALE variant carries only the scale bits.
_CV2_SCALE_BITS = {
    1: 0,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
# Orientation is applied by us from the header, the same way for both loaders.
_CV2_BASE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION

# EXIF orientation -> the transpose from stored to delivered (as PIL.ImageOps.exif_transpose).
_PIL_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_CV2_TRANSPOSE: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose,
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}
_SWAPS_AXES = (5, 6, 7, 8)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": how older PIL opened 16-bit PNG
_MAX_REASON_CHARS = 200


class _Header(NamedTuple):
    format: str
    size: tuple[int, int]  # (height, width) as delivered, after orientation
    orientation: int  # 1..8


@contextmanager
def _quiet() -> Iterator[None]:
    # PIL warns of DecompressionBombWarning (we apply our own limit), palette
    # transparency and odd EXIF; all are handled here, none is for the user.
    # (catch_warnings is process-global: fine in worker processes, racy across threads.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _reason(error: BaseException, path: str) -> str:
    """A short, path-free account of why a decoder failed."""
    text = str(error).replace(f"'{path}'", "").replace(path, "").strip(" :")
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text[:_MAX_REASON_CHARS]


def _open_failure(path: str, error: BaseException) -> BadImageError:
    if isinstance(error, Image.DecompressionBombError):
        return BadImageError(path, f"decompression bomb refused by PIL: {error}")
    if isinstance(error, OSError) and not isinstance(error, Image.UnidentifiedImageError):
        return BadImageError(path, f"cannot read file: {error.strerror or error}")
    try:
        empty = Path(path).stat().st_size == 0
    except OSError:
        empty = False
    if empty:
        return BadImageError(path, "empty file (0 bytes)")
    return BadImageError(path, "not an image PIL can read (unknown format or broken header)")


def _size_problem(width: int, height: int, max_pixels: int) -> str | None:
    if width * height == 0:
        return f"header says {width}x{height} pixels (an empty image)"
    if width * height > max_pixels:
        pixels = width * height
        return f"{width}x{height} = {pixels} pixels is over max_pixels={max_pixels} (decompression bomb?)"
    return None


def _open(path: str, max_pixels: int, data: bytes | None = None) -> Image.Image:
    """Open lazily (header only) and refuse bombs and empty sizes before any pixel is read.

    ``data``: the file's bytes, already read (``path`` then only names it in messages).
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    try:
        with _quiet():
            image = Image.open(path if data is None else io.BytesIO(data), formats=IMAGE_OPEN_FORMATS)
    except Exception as error:  # noqa: BLE001 - parsers of untrusted headers raise many types
        raise _open_failure(path, error) from None
    problem = _size_problem(image.width, image.height, max_pixels)
    if problem:
        image.close()
        raise BadImageError(path, problem)
    return image


def _orientation(image: Image.Image) -> int:
    """The EXIF/XMP orientation in the header, 1 when absent, invalid or unreadable."""
    try:
        with _quiet():
            # The base-class method reads only what the header gave: PNG's own
            # getexif() decodes every pixel to look for an eXIf chunk after them.
            value = Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1)
        return value if value in _PIL_TRANSPOSE else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block does not spoil the pixels; viewers ignore it too
        return 1


def _header(image: Image.Image) -> _Header:
    orientation = _orientation(image)
    width, height = image.size
    size = (width, height) if orientation in _SWAPS_AXES else (height, width)
    return _Header(image.format or "", size, orientation)


def probe(path: str, max_pixels: int, data: bytes | None = None) -> tuple[int, int]:
    """(height, width) in pixels as delivered (after EXIF orientation), from the header only.

    Raises BadImageError if the header is unreadable or not an image, if
    width*height > max_pixels (checked before any pixel is allocated), or if a
    side is 0. PIL itself refuses headers over 2 * PIL.Image.MAX_IMAGE_PIXELS
    (179 megapixels by default), whatever ``max_pixels`` says.
    """
    with _open(path, max_pixels, data) as image:
        return _header(image).size


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image from a loaded one (never ``image`` itself, so it can be closed)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        high_byte = (np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(high_byte).convert("RGB")
    if image.mode == "F":
        raise ValueError("32-bit float pixels have no agreed 8-bit scale")
    return image.convert("RGB")  # palette alpha (tRNS) is dropped like any alpha


def _stored_wh(draft_to: tuple[int, int], orientation: int) -> tuple[int, int]:
    """PIL's (width, height) for ``Image.draft``, which works on the stored orientation."""
    height, width = draft_to
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


def load_pil(
    path: str, max_pixels: int, draft_to: tuple[int, int] | None = None, data: bytes | None = None
) -> Image.Image:
    """Decode to an RGB PIL image, EXIF orientation applied.

    ``draft_to=(height, width)``, in the delivered orientation: for a JPEG, let
    libjpeg decode at the largest 1/2, 1/4 or 1/8 scale that keeps the image at
    least that size on both axes (other formats decode at full size).
    Any failure raises BadImageError naming the file.
    """
    if draft_to is not None and min(draft_to) < 1:
        raise ValueError(f"draft_to must be a positive (height, width), got {draft_to}")
    image = _open(path, max_pixels, data)
    try:
        orientation = _orientation(image)
        if draft_to is not None and image.format in JPEG_FORMATS:
            image.draft(image.mode, _stored_wh(draft_to, orientation))
        with _quiet():
            image.load()
            rgb = _to_rgb(image)
    except Exception as error:  # noqa: BLE001 - decoders of untrusted data raise many types
        raise BadImageError(path, _reason(error, path)) from None
    finally:
        image.close()
    return rgb.transpose(_PIL_TRANSPOSE[orientation]) if orientation in _PIL_TRANSPOSE else rgb


def _pil_array(path: str, max_pixels: int, reduction: int, data: bytes | None) -> np.ndarray:
    image = load_pil(path, max_pixels, data=data)
    if reduction > 1:
        image = image.reduce(reduction)  # box filter; sides ceil(n / reduction), as libjpeg's
    return np.array(image)  # a writable copy: np.asarray of a PIL image is read-only


def load_cv2(path: str, max_pixels: int, reduction: int = 1, data: bytes | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB, C-contiguous, EXIF orientation applied, decoded by OpenCV.

    ``reduction`` in (1, 2, 4, 8): a JPEG is decoded at that scale by libjpeg
    (sides ceil(n / reduction)); other formats are decoded in full and then
    box-reduced by PIL (OpenCV's own reduction floors the sides and fails on a
    1-pixel side). Formats outside CV2_FORMATS go through ``load_pil``, and so
    does any file OpenCV refuses: PIL then either names the problem or decodes
    it, so the verdict is the one the validation scan gave.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction}")
    with _open(path, max_pixels, data) as image:
        header = _header(image)
    if header.format not in CV2_FORMATS or (reduction > 1 and header.format not in JPEG_FORMATS):
        return _pil_array(path, max_pixels, reduction, data)
    try:
        # From bytes, not cv2.imread: this also handles non-ASCII paths.
        encoded = np.fromfile(path, dtype=np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)
        rgb = cv2.imdecode(encoded, _CV2_BASE_FLAGS | _CV2_SCALE_BITS[reduction])
    except (OSError, cv2.error):
        rgb = None
    if rgb is None:
        return _pil_array(path, max_pixels, reduction, data)
    transpose = _CV2_TRANSPOSE.get(header.orientation)
    return transpose(rgb) if transpose else rgb


# ---------------------------------------------------------------- which PIL is this


@functools.cache  # scanning every installed distribution takes ~0.4 s; the answer cannot change
def _loaded_distribution() -> str:
    """The distribution that installed the ``PIL`` package in use (Pillow and pillow-simd both ship it)."""
    names = importlib.metadata.packages_distributions().get("PIL", [])
    matching = [n for n in names if importlib.metadata.version(n) == PIL.__version__]
    return (matching or names or ["unknown"])[0]


def _cpu_has_avx2() -> bool:
    """False also where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return any(line.startswith("flags") and " avx2" in line for line in fh)
    except OSError:
        return False


def pil_build() -> dict:
    """Which PIL is loaded: distribution, version, SIMD build, JPEG library, CPU AVX2 support."""
    distribution = _loaded_distribution()
    turbo = bool(features.check_feature("libjpeg_turbo"))
    return {
        "distribution": distribution,
        "version": PIL.__version__,
        "simd": "simd" in distribution.lower(),
        "libjpeg_turbo": turbo,
        "jpeg_version": features.version("libjpeg_turbo") if turbo else features.version("jpg"),
        "cpu_avx2": _cpu_has_avx2(),
    }


def pil_build_line(build: dict | None = None) -> str:
    """One line for reports, e.g. 'pillow-simd 12.1.1.post0 (libjpeg-turbo 2.1.5, AVX2 CPU)'."""
    build = build or pil_build()
    jpeg = f"{'libjpeg-turbo' if build['libjpeg_turbo'] else 'libjpeg'} {build['jpeg_version']}"
    cpu = "AVX2 CPU" if build["cpu_avx2"] else "no AVX2 on this CPU"
    return f"{build['distribution']} {build['version']} ({jpeg}, {cpu})"


def read_bytes(path: str) -> bytes:
    """The whole file, or BadImageError naming it (missing, unreadable)."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as error:
        raise BadImageError(path, f"cannot read file: {error.strerror or error}") from None
