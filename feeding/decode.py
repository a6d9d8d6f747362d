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
import math
import threading
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

from feeding import affine, exif
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


# catch_warnings saves and restores the process-global filter list: two threads
# interleaving it can leave "ignore" installed for good. Thread workers take turns.
_WARNINGS_LOCK = threading.RLock()


@contextmanager
def _quiet() -> Iterator[None]:
    # PIL warns of DecompressionBombWarning (we apply our own limit), palette
    # transparency and odd EXIF; all are handled here, none is for the user.
    with _WARNINGS_LOCK, warnings.catch_warnings():
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


def header(path: str, max_pixels: int, data: bytes | None = None) -> _Header:
    """Format, delivered (height, width) and EXIF orientation, from the header only.

    Raises BadImageError if the header is unreadable or not an image, if
    width*height > max_pixels (checked before any pixel is allocated), or if a
    side is 0. PIL itself refuses headers over 2 * PIL.Image.MAX_IMAGE_PIXELS
    (179 megapixels by default), whatever ``max_pixels`` says.
    """
    fast = _plain_jpeg_header(path, max_pixels, data) if data is not None else None
    if fast is not None:
        return fast
    with _open(path, max_pixels, data) as image:
        return _header(image)


def _plain_jpeg_header(path: str, max_pixels: int, data: bytes) -> _Header | None:
    """The header of a JPEG read by libjpeg-turbo, its orientation from its EXIF block; None: ask PIL.

    PIL parses every marker segment in Python (~0.1 ms, holding the GIL, which
    worker threads then wait for, and a process-wide lock around its warnings);
    libjpeg-turbo reads the frame header in C and ``_exif_orientation`` finds the
    one tag. A file whose orientation PIL might read otherwise (XMP, odd EXIF), or
    that libjpeg-turbo cannot read, goes to PIL, so the answer and the errors are
    PIL's wherever they could differ.
    """
    simplejpeg = _simplejpeg()
    if simplejpeg is None or not data.startswith(b"\xff\xd8\xff"):
        return None
    segments = exif.app1_segments(data)
    orientation = None if segments is None else exif.exif_orientation(segments) if segments else 1
    if orientation is None:
        return None
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError, OSError):
        return None
    problem = _size_problem(width, height, max_pixels)
    if problem:
        raise BadImageError(path, problem)
    size = (width, height) if orientation in _SWAPS_AXES else (height, width)
    return _Header("JPEG", size, orientation)


def probe(path: str, max_pixels: int, data: bytes | None = None) -> tuple[int, int]:
    """(height, width) in pixels as delivered (after EXIF orientation); see ``header``."""
    return header(path, max_pixels, data).size


def sampled_sizes(paths, max_pixels: int, limit: int = 256) -> list[tuple[int, int]]:
    """(height, width) in pixels of up to ``limit`` files spread evenly over ``paths``, from their
    headers; files listed twice are read once, files that do not open are left out."""
    paths = np.asarray(paths)
    picks = np.unique(np.linspace(0, len(paths) - 1, num=min(len(paths), limit)).round().astype(np.int64))
    sizes = []
    for path in dict.fromkeys(paths[picks].tolist()):
        try:
            sizes.append(probe(path, max_pixels))
        except BadImageError:
            continue
    return sizes


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


# Where scratch memory starts, relative to a 32-byte boundary. libjpeg-turbo's AVX2 colour
# conversion writes a row with non-temporal stores (vmovntdq, past the caches) when the row
# starts 32-byte aligned, and with ordinary stores otherwise. The warp that reads the pixels
# next then finds them in main memory, not in L2: 600 us instead of 240 us for 384x512 RGBX
# -> 224x224 here, while the decode itself is no faster (pytest --benchmark-only, group
# "decode + warp of 24 files: where the decode memory starts").
# malloc's 16-byte alignment made it a coin toss per process.
SCRATCH_OFFSET, _AVX2_ALIGN = 16, 32


class Scratch:
    """Memory that a thread decodes into again and again, starting just off a 32-byte boundary.

    A fresh 384x512 RGBX array costs ~0.2 ms of page faults on first touch here
    (glibc maps allocations this size anew), a sixth of the decode itself. An
    array decoded into scratch is valid only until the next decode into it.
    Rows stay off the boundary too where the row length is a multiple of 32 bytes
    (any RGBX width divisible by 8).
    """

    def __init__(self, offset: int = SCRATCH_OFFSET) -> None:
        self._memory = np.empty(0, dtype=np.uint8)
        self.offset = offset  # past a 32-byte boundary; 0 only to measure what the boundary costs

    def take(self, nbytes: int) -> np.ndarray:
        if self._memory.size < nbytes + _AVX2_ALIGN:
            self._memory = np.empty(nbytes + _AVX2_ALIGN, dtype=np.uint8)
        return _off_boundary(self._memory, nbytes, self.offset)


def _off_boundary(memory: np.ndarray, nbytes: int, offset: int = SCRATCH_OFFSET) -> np.ndarray:
    """``nbytes`` of ``memory`` (which has ``_AVX2_ALIGN`` to spare) starting ``offset`` past a boundary."""
    start = (offset - memory.ctypes.data) % _AVX2_ALIGN
    return memory[start:start + nbytes]


def decode_target(nbytes: int) -> np.ndarray:
    """New memory for one decode, placed as Scratch places it (see SCRATCH_OFFSET)."""
    return _off_boundary(np.empty(nbytes + _AVX2_ALIGN, dtype=np.uint8), nbytes)


def load_cv2(
    path: str, max_pixels: int, reduction: int = 1, data: bytes | None = None, known: _Header | None = None,
    rgbx: bool = False, scratch: Scratch | None = None, at_least: tuple[int, int] | None = None,
) -> np.ndarray:
    """HxWx3 uint8 RGB, C-contiguous, EXIF orientation applied, decoded by libjpeg-turbo or OpenCV.

    ``rgbx=True``: HxWx4, RGB plus a padding channel. OpenCV's warps run about
    twice as fast on 4-byte pixels (aligned SIMD loads), and libjpeg-turbo writes
    the padding for free; the caller drops it (cv2.cvtColor RGBA2RGB into its buffer).
    ``scratch``: decode a JPEG into this memory (see ``Scratch``) instead of a new array.

    ``reduction`` in (1, 2, 4, 8): a JPEG is decoded at that scale by libjpeg
    (sides ceil(n / reduction)); other formats are decoded in full and then
    box-reduced by PIL (OpenCV's own reduction floors the sides and fails on a
    1-pixel side). A JPEG goes to simplejpeg's libjpeg-turbo first (SIMD, about
    1.5x OpenCV's bundled decoder here; same IDCT and upsampling); formats outside
    CV2_FORMATS go through ``load_pil``, and so does any file both refuse: PIL then
    either names the problem or decodes it, so the verdict is the one the
    validation scan gave. ``known``: this file's ``header()``, if the caller has it.

    ``at_least=(height, width)`` (delivered orientation), instead of ``reduction``: a JPEG
    is decoded by libjpeg-turbo at the smallest DCT scale M/8 that keeps both sides at
    least that (``feeding.affine.jpeg_scale``: 5/8 for 512x384 -> 224x224, where 1/2
    would be too small); elsewhere at the largest of 1/2, 1/4, 1/8 that does.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction}")
    found = known or header(path, max_pixels, data)
    eighths = 8
    if at_least is not None:
        eighths, _ = affine.jpeg_scale(found.size, at_least)
        reduction = next((f for f in (8, 4, 2) if all(s / f >= t for s, t in zip(found.size, at_least))), 1)
    pixels = _load_oriented(path, max_pixels, reduction, data, found, rgbx, scratch, eighths)
    if rgbx and pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2RGBA)
    return pixels


def _load_oriented(path: str, max_pixels: int, reduction: int, data: bytes | None, found: _Header,
                   rgbx: bool, scratch: Scratch | None, eighths: int = 8) -> np.ndarray:
    if found.format not in CV2_FORMATS or (reduction > 1 and found.format not in JPEG_FORMATS):
        return _pil_array(path, max_pixels, reduction, data)
    if data is None:
        data = read_bytes(path)  # from bytes, not cv2.imread: this also handles non-ASCII paths
    colorspace = "RGBX" if rgbx else "RGB"
    pixels = None
    if found.format in JPEG_FORMATS:
        # Eighths are a DCT scale; the OpenCV and PIL fallbacks below only know 1/2, 1/4 and 1/8.
        pixels = _turbo_jpeg(data, reduction, colorspace, scratch, eighths=eighths if eighths < 8 else None)
    if pixels is None:
        pixels = _cv2_decode(data, reduction)
    if pixels is None:
        return _pil_array(path, max_pixels, reduction, data)
    transpose = _CV2_TRANSPOSE.get(found.orientation)
    return transpose(pixels) if transpose else pixels


def _cv2_decode(data: bytes, reduction: int) -> np.ndarray | None:
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _CV2_BASE_FLAGS | _CV2_SCALE_BITS[reduction])
    except cv2.error:
        return None


@functools.cache
def _simplejpeg():
    """The simplejpeg module, or None where it is not installed (OpenCV then decodes)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _turbo_jpeg(data: bytes, reduction: int, colorspace: str = "RGB", scratch: Scratch | None = None,
                eighths: int | None = None) -> np.ndarray | None:
    """Stored-orientation RGB from libjpeg-turbo, or None to let OpenCV try.

    strict=True turns libjpeg's warnings (truncated or corrupt data) into errors,
    so a damaged file takes the same OpenCV/PIL path, and verdict, as before.
    CMYK and other colour spaces libjpeg-turbo cannot convert to RGB also fall back.
    """
    simplejpeg = _simplejpeg()
    if simplejpeg is None:
        return None
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        if eighths is not None:  # simplejpeg picks the smallest scale with both sides >= the minimum
            want, reduction = (math.ceil(height * eighths / 8), math.ceil(width * eighths / 8)), 1
        else:
            want = (math.ceil(height / reduction), math.ceil(width / reduction))
        nbytes = want[0] * want[1] * len(colorspace)
        into = scratch.take(nbytes) if scratch is not None else decode_target(nbytes)
        rgb = simplejpeg.decode_jpeg(data, colorspace, min_height=want[0], min_width=want[1], min_factor=reduction,
                                     buffer=into)
    except (ValueError, RuntimeError, OSError):
        return None
    return rgb if rgb.shape[:2] == want else None  # a scale libjpeg did not give exactly: OpenCV does it


def jpeg_decoder() -> str:
    """Which library decodes JPEGs for the OpenCV pipeline, e.g. 'simplejpeg 1.9.0 (libjpeg-turbo)'."""
    if _simplejpeg() is not None:
        return f"simplejpeg {importlib.metadata.version('simplejpeg')} (libjpeg-turbo, SIMD)"
    return f"OpenCV {cv2.__version__} imdecode (pip install simplejpeg for a faster JPEG decode)"


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
