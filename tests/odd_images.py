"""A factory of odd images, valid and invalid, shared by the decode, scan and backend tests.

Every valid image is small (a few KB) and has non-flat content (gradients), so a
wrong colour conversion or orientation shows up as a pixel difference. Images
that carry an EXIF orientation are built from one "delivered" picture whose
top-left quadrant is pure red (see ``delivered_quadrant_image``): after the
orientation is applied, the red quadrant must be top-left again.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image

# Delivered (height, width) of the orientation images: not square, so a missed
# 90-degree rotation changes the shape.
ORIENTED_SIZE = (48, 64)

# EXIF orientation -> the transpose that undoes it (stored -> delivered), and its inverse.
_TO_DELIVERED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_TO_STORED = {**_TO_DELIVERED, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}

BOMB_SIDE = 30_000  # the bomb's header claims 30000 x 30000 = 900 megapixels


def gradient(height: int, width: int, seed: int = 0) -> np.ndarray:
    """HxWx3 uint8: three differently oriented ramps, plus mild noise so JPEG has texture."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    ramps = np.stack(
        [x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(height + width - 2, 1)], axis=-1
    )
    noise = np.random.default_rng(seed).normal(0.0, 0.02, size=ramps.shape)
    return (np.clip(ramps * 0.8 + 0.1 + noise, 0, 1) * 255).round().astype(np.uint8)


def delivered_quadrant_image() -> np.ndarray:
    """The picture every orientation image must turn into: red top-left quadrant over a gradient."""
    height, width = ORIENTED_SIZE
    picture = gradient(height, width)
    picture[: height // 2, : width // 2] = (255, 0, 0)
    return picture


def save_oriented(path: Path, orientation: int, picture: np.ndarray, fmt: str = "JPEG") -> Path:
    """Store ``picture`` so that applying EXIF ``orientation`` gives it back."""
    delivered = Image.fromarray(picture)
    stored = delivered.transpose(_TO_STORED[orientation]) if orientation in _TO_STORED else delivered
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    extra = {"quality": 95} if fmt == "JPEG" else {}
    stored.save(path, format=fmt, exif=exif.tobytes(), **extra)
    return path


def _save(path: Path, image: Image.Image, **params) -> Path:
    image.save(path, **params)
    return path


def palette_image(height: int, width: int) -> Image.Image:
    """A 'P' image with 64 colours, from the gradient."""
    return Image.fromarray(gradient(height, width)).quantize(colors=64, method=Image.Quantize.MEDIANCUT)


def _alpha_ramp(height: int, width: int) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))


def write_odd_images(folder: Path) -> dict[str, Path]:
    """Write the odd-but-valid images into ``folder``; name -> path. All must be delivered."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = gradient(48, 64)
    gray = rgb.mean(axis=-1).round().astype(np.uint8)
    alpha = _alpha_ramp(48, 64)
    out: dict[str, Path] = {}

    out["rgb_jpeg"] = _save(folder / "rgb.jpg", Image.fromarray(rgb), quality=90)
    out["progressive_jpeg"] = _save(
        folder / "progressive.jpg", Image.fromarray(rgb), quality=90, progressive=True
    )
    out["gray_jpeg"] = _save(folder / "gray.jpg", Image.fromarray(gray), quality=90)
    out["cmyk_jpeg"] = _save(folder / "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    out["gray_png"] = _save(folder / "gray.png", Image.fromarray(gray))
    out["bilevel_png"] = _save(folder / "bilevel.png", Image.fromarray(gray).convert("1"))
    out["la_png"] = _save(folder / "la.png", Image.fromarray(np.stack([gray, alpha], -1), "LA"))
    out["rgba_png"] = _save(folder / "rgba.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    out["palette_png"] = _save(folder / "palette.png", palette_image(48, 64))

    one_clear = palette_image(48, 64)
    out["palette_index_transparency_png"] = _save(folder / "palette_trns1.png", one_clear, transparency=3)
    # Per-entry alpha in tRNS: the case where PIL warns "Palette images with Transparency
    # expressed in bytes should be converted to RGBA images".
    per_entry = bytes(range(0, 256, 4))
    out["palette_alpha_bytes_png"] = _save(
        folder / "palette_trns_bytes.png", palette_image(48, 64), transparency=per_entry
    )

    ramp16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).round().astype(np.uint16)
    out["gray16_png"] = _save(folder / "gray16.png", Image.fromarray(ramp16))
    rgb16 = (rgb.astype(np.uint16) * 257)[..., ::-1]  # cv2 writes BGR
    (folder / "rgb16.png").write_bytes(cv2.imencode(".png", np.ascontiguousarray(rgb16))[1].tobytes())
    out["rgb16_png"] = folder / "rgb16.png"

    quadrant = delivered_quadrant_image()
    for orientation in range(1, 9):
        path = folder / f"exif{orientation}.jpg"
        out[f"exif{orientation}_jpeg"] = save_oriented(path, orientation, quadrant)
    out["exif6_png"] = save_oriented(folder / "exif6.png", 6, quadrant, fmt="PNG")

    out["one_pixel_png"] = _save(folder / "one.png", Image.fromarray(rgb[:1, :1]))
    out["one_pixel_jpeg"] = _save(folder / "one.jpg", Image.fromarray(rgb[:1, :1]), quality=95)
    out["wide_png"] = _save(folder / "wide.png", Image.fromarray(gradient(1, 2000)))
    out["tall_jpeg"] = _save(folder / "tall.jpg", Image.fromarray(gradient(2000, 1)), quality=95)
    out["png_named_jpg"] = _save(folder / "really_png.jpg", Image.fromarray(rgb), format="PNG")
    out["non_ascii_name"] = _save(folder / "마스크_ü.jpg", Image.fromarray(rgb), quality=90)
    out["bmp"] = _save(folder / "rgb.bmp", Image.fromarray(rgb))
    out["tiff"] = _save(folder / "rgb.tiff", Image.fromarray(rgb))
    return out


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (1-bit grayscale) with almost no pixel data.

    Costs nothing to build; any decoder that trusts the header before allocating
    would ask for width*height bytes.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def write_bad_files(folder: Path) -> dict[str, Path]:
    """Write files with image names that must be refused; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    full = folder / "whole.jpg.tmp"
    Image.fromarray(gradient(96, 128, seed=1)).save(full, format="JPEG", quality=90)
    data = full.read_bytes()
    full.unlink()
    files = {
        "truncated_jpeg": (folder / "truncated.jpg", data[: len(data) // 2]),
        "empty_jpeg": (folder / "empty.jpg", b""),
        "random_jpeg": (folder / "random.jpg", np.random.default_rng(7).bytes(4096)),
        "text_png": (folder / "text.png", b"this is a text file, not a picture\n"),
        "bomb_png": (folder / "bomb.png", png_header_only(BOMB_SIDE, BOMB_SIDE)),
    }
    for path, content in files.values():
        path.write_bytes(content)
    return {name: path for name, (path, _) in files.items()}
