"""feeding.decode: odd-but-valid images come out as correct RGB from both loaders; bad files are refused."""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image, ImageFile

from feeding import decode, exif
from feeding.decode import load_cv2, load_pil, pil_build, pil_build_line, probe
from feeding.errors import BadImageError
from tests.imaging import psnr
from tests.odd_images import (
    ORIENTED_SIZE,
    delivered_quadrant_image,
    gradient,
    png_header_only,
    save_oriented,
    write_bad_files,
    write_odd_images,
)

MAX_PIXELS = 64_000_000
SPECIAL_SIZES = {
    "one_pixel_png": (1, 1), "one_pixel_jpeg": (1, 1), "wide_png": (1, 2000), "tall_jpeg": (2000, 1),
}  # fmt: skip


def _names(writer) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        return sorted(writer(Path(folder)))


ODD_NAMES = _names(write_odd_images)
BAD_NAMES = _names(write_bad_files)


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict[str, Path]:
    return write_odd_images(tmp_path_factory.mktemp("odd"))


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    return write_bad_files(tmp_path_factory.mktemp("bad"))


def as_array(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def rgb_from(load, path: Path) -> np.ndarray:
    """The HxWx3 array that ``load`` (load_pil or load_cv2) delivers."""
    delivered = load(str(path), MAX_PIXELS)
    return as_array(delivered) if isinstance(delivered, Image.Image) else delivered


def expected_size(name: str) -> tuple[int, int]:
    return SPECIAL_SIZES.get(name, ORIENTED_SIZE)


def stored(path: Path) -> tuple[str, str, tuple[int, int], np.ndarray]:
    """What PIL reads from the file without our rules: format, mode, stored (height, width), raw pixels."""
    with Image.open(path) as image:
        return image.format, image.mode, (image.height, image.width), np.asarray(image)


# ---------------------------------------------------------------- the odd images themselves


def test_odd_images_are_small_and_cover_the_cases(odd):
    assert all(path.stat().st_size <= 64 * 1024 for path in odd.values())
    modes = {stored(path)[1] for path in odd.values()}
    assert {"L", "LA", "RGBA", "P", "CMYK", "I;16", "1", "RGB"} <= modes
    assert stored(odd["png_named_jpg"])[0] == "PNG" and odd["png_named_jpg"].suffix == ".jpg"
    assert not odd["non_ascii_name"].name.isascii()


# ---------------------------------------------------------------- both loaders agree, and are right


@pytest.mark.parametrize("name", ODD_NAMES)
def test_load_pil_delivers_rgb_of_the_probed_size(odd, name):
    path = str(odd[name])
    image = load_pil(path, MAX_PIXELS)
    assert image.mode == "RGB"
    assert (image.height, image.width) == probe(path, MAX_PIXELS) == expected_size(name)


@pytest.mark.parametrize("name", ODD_NAMES)
def test_load_cv2_matches_load_pil(odd, name):
    path = str(odd[name])
    from_cv2 = load_cv2(path, MAX_PIXELS)
    from_pil = as_array(load_pil(path, MAX_PIXELS))
    assert from_cv2.dtype == np.uint8 and from_cv2.ndim == 3 and from_cv2.shape[2] == 3
    assert from_cv2.flags.c_contiguous and from_cv2.flags.writeable
    assert from_cv2.shape == from_pil.shape
    assert np.abs(from_cv2.astype(int) - from_pil).max() <= 2


def _palette_colours(path: Path) -> np.ndarray:
    """What a palette image shows, looked up by hand: no PIL conversion involved."""
    with Image.open(path) as image:
        palette = np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
        return palette[np.asarray(image)]


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


RGB = gradient(48, 64)
GRAY = RGB.mean(axis=-1).round().astype(np.uint8)
RAMP16 = np.linspace(0, 65535, 64 * 48).reshape(48, 64).round().astype(np.uint16)


@pytest.mark.parametrize("load", [load_pil, load_cv2], ids=["pil", "cv2"])
@pytest.mark.parametrize(
    "name, expected",
    [
        ("gray_png", lambda p: _gray3(GRAY)),
        ("la_png", lambda p: _gray3(GRAY)),  # alpha dropped
        ("rgba_png", lambda p: RGB),  # alpha dropped, not composited
        ("rgb16_png", lambda p: RGB),  # 16-bit samples keep their high byte
        ("gray16_png", lambda p: _gray3((RAMP16 >> 8).astype(np.uint8))),  # scaled, not clipped at 255
        ("palette_png", _palette_colours),
        ("palette_index_transparency_png", _palette_colours),
        ("palette_alpha_bytes_png", _palette_colours),
        ("bmp", lambda p: RGB),
        ("tiff", lambda p: RGB),
        ("png_named_jpg", lambda p: RGB),
    ],
)
def test_lossless_images_decode_exactly(odd, load, name, expected):
    got = rgb_from(load, odd[name])
    np.testing.assert_array_equal(got, expected(odd[name]))


@pytest.mark.parametrize("load", [load_pil, load_cv2], ids=["pil", "cv2"])
@pytest.mark.parametrize("name", ["rgb_jpeg", "progressive_jpeg", "cmyk_jpeg", "non_ascii_name"])
def test_jpeg_colours_are_close_to_the_source(odd, load, name):
    got = rgb_from(load, odd[name])
    assert psnr(got, RGB) >= 30  # an inverted CMYK or swapped BGR would score far below 20


@pytest.mark.parametrize("load", [load_pil, load_cv2], ids=["pil", "cv2"])
def test_gray16_uses_the_whole_8_bit_range(odd, load):
    got = rgb_from(load, odd["gray16_png"])
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) == 256


def test_bilevel_is_black_and_white(odd):
    assert set(np.unique(as_array(load_pil(str(odd["bilevel_png"]), MAX_PIXELS)))) == {0, 255}


# ---------------------------------------------------------------- EXIF orientation


def _quadrant_means(rgb: np.ndarray) -> list[np.ndarray]:
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    return [part.mean((0, 1)) for part in (rgb[:h, :w], rgb[:h, w:], rgb[h:, :w], rgb[h:, w:])]


def _is_red(mean: np.ndarray) -> bool:
    return mean[0] > 200 and mean[1] < 50 and mean[2] < 50


@pytest.mark.parametrize("load", [load_pil, load_cv2], ids=["pil", "cv2"])
@pytest.mark.parametrize("name", [f"exif{o}_jpeg" for o in range(1, 9)] + ["exif6_png"])
def test_exif_orientation_puts_red_quadrant_top_left(odd, load, name):
    got = rgb_from(load, odd[name])
    assert got.shape[:2] == ORIENTED_SIZE == probe(str(odd[name]), MAX_PIXELS)
    means = _quadrant_means(got)
    assert _is_red(means[0]) and not any(_is_red(m) for m in means[1:])
    assert psnr(got, delivered_quadrant_image()) >= 28


def test_oriented_images_are_stored_rotated(odd):
    """Guards the fixture: the orientation tests mean something only if storage differs from delivery."""
    assert all(stored(odd[f"exif{o}_jpeg"])[2] == ORIENTED_SIZE[::-1] for o in (5, 6, 7, 8))
    # Orientation 5 (transpose) keeps the top-left corner: the shape check above covers it.
    assert all(not _is_red(_quadrant_means(stored(odd[f"exif{o}_jpeg"])[3])[0]) for o in (2, 3, 4, 6, 7, 8))


# ---------------------------------------------------------------- decode-time reduction


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.fromarray(gradient(384, 512)).save(path, quality=90)
    return path


@pytest.mark.parametrize(
    "draft_to, factor",
    [((100, 100), 2), ((90, 120), 4), ((48, 64), 8), ((1, 1), 8),
     ((193, 100), 1), ((384, 512), 1), ((999, 999), 1)],
)  # fmt: skip
def test_draft_decodes_at_the_largest_reduction_that_keeps_the_target(photo, draft_to, factor):
    image = load_pil(str(photo), MAX_PIXELS, draft_to=draft_to)
    assert (image.height, image.width) == (384 // factor, 512 // factor)
    if draft_to[0] <= 384 and draft_to[1] <= 512:
        assert image.height >= draft_to[0] and image.width >= draft_to[1]


@pytest.mark.parametrize("draft_to, delivered", [((200, 100), (384, 512)), ((100, 200), (192, 256))])
def test_draft_swaps_axes_for_rotated_jpegs(tmp_path, draft_to, delivered):
    path = save_oriented(tmp_path / "rotated.jpg", 6, gradient(384, 512))
    image = load_pil(str(path), MAX_PIXELS, draft_to=draft_to)
    assert (image.height, image.width) == delivered
    assert image.height >= draft_to[0] and image.width >= draft_to[1]


def test_draft_leaves_other_formats_at_full_size(odd):
    image = load_pil(str(odd["rgba_png"]), MAX_PIXELS, draft_to=(6, 8))
    assert (image.height, image.width) == ORIENTED_SIZE


@pytest.mark.parametrize("reduction", [2, 4, 8])
def test_cv2_reduction_matches_pil_draft(photo, reduction):
    from_cv2 = load_cv2(str(photo), MAX_PIXELS, reduction=reduction)
    target = (384 // reduction, 512 // reduction)
    from_pil = as_array(load_pil(str(photo), MAX_PIXELS, draft_to=target))
    assert from_cv2.shape == (*target, 3) == from_pil.shape
    assert psnr(from_cv2, from_pil) >= 35


@pytest.mark.parametrize(
    "name, reduction, size",
    [("wide_png", 8, (1, 250)), ("tall_jpeg", 8, (250, 1)), ("one_pixel_jpeg", 4, (1, 1)),
     ("gray16_png", 2, (24, 32)), ("exif6_jpeg", 2, (24, 32)), ("tiff", 4, (12, 16))],
)  # fmt: skip
def test_cv2_reduction_of_odd_images(odd, name, reduction, size):
    rgb = load_cv2(str(odd[name]), MAX_PIXELS, reduction=reduction)
    assert rgb.shape == (*size, 3) and rgb.flags.c_contiguous
    if name == "exif6_jpeg":
        assert _is_red(_quadrant_means(rgb)[0])


@pytest.mark.parametrize("reduction", [1, 2, 4, 8])
def test_libjpeg_turbo_decodes_exactly_what_opencv_decodes(photo, reduction):
    """The fast JPEG path changes the speed, not the pixels: same IDCT, same upsampling."""
    pytest.importorskip("simplejpeg")
    data = photo.read_bytes()
    fast, reference = decode._turbo_jpeg(data, reduction), decode._cv2_decode(data, reduction)
    assert fast is not None and fast.shape == reference.shape
    assert np.array_equal(fast, reference)


def test_decode_memory_starts_off_the_32_byte_boundary_where_libjpeg_turbo_bypasses_the_caches(photo):
    """Scratch and fresh decodes start SCRATCH_OFFSET past a 32-byte boundary (see decode.py);
    the pixels are those of a decode into memory placed anywhere else."""
    pytest.importorskip("simplejpeg")
    data = photo.read_bytes()
    scratch = decode.Scratch()
    for nbytes in (1, 31, 4096, 512 * 384 * 4):
        assert scratch.take(nbytes).ctypes.data % 32 == decode.SCRATCH_OFFSET
        assert scratch.take(nbytes).size == nbytes
    into_scratch = decode._turbo_jpeg(data, 1, "RGBX", scratch)
    fresh = decode._turbo_jpeg(data, 1, "RGBX")
    assert fresh.ctypes.data % 32 == decode.SCRATCH_OFFSET and fresh.flags.c_contiguous and fresh.flags.writeable
    reference = decode._turbo_jpeg(data, 1, "RGBX", decode.Scratch(offset=0))
    assert reference.ctypes.data % 32 == 0
    assert np.array_equal(into_scratch, reference) and np.array_equal(fresh, reference)


@pytest.mark.parametrize(
    "name", ["cmyk_jpeg", "exif6_jpeg", "gray_jpeg", "one_pixel_jpeg", "progressive_jpeg", "tall_jpeg"])
def test_load_cv2_is_the_same_with_or_without_simplejpeg(odd, name, monkeypatch):
    with_turbo = load_cv2(str(odd[name]), MAX_PIXELS)
    monkeypatch.setattr(decode, "_simplejpeg", lambda: None)
    assert "OpenCV" in decode.jpeg_decoder()
    assert np.array_equal(load_cv2(str(odd[name]), MAX_PIXELS), with_turbo)


def test_damaged_jpegs_leave_the_fast_path(bad):
    """strict libjpeg-turbo refuses what it would pad, so OpenCV/PIL give the usual verdict."""
    pytest.importorskip("simplejpeg")
    for name in ("truncated_jpeg", "random_jpeg"):
        assert decode._turbo_jpeg(bad[name].read_bytes(), 1) is None


@pytest.mark.parametrize("name", [n for n in ODD_NAMES if n.endswith("_jpeg")])
def test_jpeg_header_from_bytes_agrees_with_pil(odd, name):
    """A JPEG without APP1 is read by libjpeg-turbo; one with EXIF/XMP goes to PIL: same answer."""
    data = odd[name].read_bytes()
    fast = decode.header(str(odd[name]), MAX_PIXELS, data)
    with decode._open(str(odd[name]), MAX_PIXELS, data) as image:
        reference = decode._header(image)
    assert (fast.size, fast.orientation) == (reference.size, reference.orientation)
    assert fast.format in decode.JPEG_FORMATS
    if name.startswith("exif"):
        assert exif.has_app1(data) is True


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_jpegs_take_the_lock_free_header_with_pils_orientation(odd, orientation):
    """A JPEG with EXIF needs neither PIL nor its warnings lock: thread workers do not take turns on it."""
    pytest.importorskip("simplejpeg")
    path = odd[f"exif{orientation}_jpeg"]
    data = path.read_bytes()
    fast = decode._plain_jpeg_header(str(path), MAX_PIXELS, data)
    with decode._open(str(path), MAX_PIXELS, data) as image:
        reference = decode._header(image)
    assert fast is not None and (fast.size, fast.orientation) == (reference.size, reference.orientation)


def test_xmp_and_broken_exif_still_go_to_pil():
    assert exif.exif_orientation([b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>"]) is None
    assert exif.exif_orientation([b"Exif\0\0XX\0*"]) is None  # no byte order
    assert exif.exif_orientation([b"Exif\0\0II*\0\x08\0\0\0\x00\x00"]) == 1  # an empty IFD: no turn


def test_jpeg_header_from_bytes_refuses_bombs(photo):
    pytest.importorskip("simplejpeg")
    data = photo.read_bytes()
    assert exif.has_app1(data) is False  # so the fast path is the one refusing
    with pytest.raises(BadImageError, match="max_pixels"):
        decode.header(str(photo), 1000, data)


def test_bad_arguments_are_refused(photo):
    with pytest.raises(ValueError, match="reduction"):
        load_cv2(str(photo), MAX_PIXELS, reduction=3)
    with pytest.raises(ValueError, match="draft_to"):
        load_pil(str(photo), MAX_PIXELS, draft_to=(0, 10))
    with pytest.raises(ValueError, match="max_pixels"):
        probe(str(photo), 0)


# ---------------------------------------------------------------- bad files


# probe reads the header only, and the truncated file's header is intact.
@pytest.mark.parametrize(
    "loader, name",
    [(loader, name) for loader in (probe, load_pil, load_cv2) for name in BAD_NAMES
     if not (loader is probe and name == "truncated_jpeg")],
    ids=lambda v: getattr(v, "__name__", v),
)  # fmt: skip
def test_bad_files_raise_bad_image_error_naming_the_file(bad, loader, name):
    with pytest.raises(BadImageError) as caught:
        loader(str(bad[name]), MAX_PIXELS)
    assert str(bad[name]) in str(caught.value) and caught.value.path == str(bad[name])
    assert caught.value.reason


def test_reasons_say_what_is_wrong(bad):
    def reason(name: str) -> str:
        with pytest.raises(BadImageError) as caught:
            load_pil(str(bad[name]), MAX_PIXELS)
        return caught.value.reason

    assert "truncated" in reason("truncated_jpeg")
    assert "empty" in reason("empty_jpeg")
    assert "bomb" in reason("bomb_png")
    assert "not an image" in reason("random_jpeg") and "not an image" in reason("text_png")


def test_probe_reads_only_the_header_of_a_truncated_file(bad):
    assert probe(str(bad["truncated_jpeg"]), MAX_PIXELS) == (96, 128)


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="cannot read file"):
        load_cv2(str(tmp_path / "gone.jpg"), MAX_PIXELS)


def test_bomb_is_refused_fast_by_probe(bad):
    start = time.perf_counter()
    with pytest.raises(BadImageError):
        probe(str(bad["bomb_png"]), MAX_PIXELS)
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("loader", [probe, load_pil, load_cv2], ids=["probe", "pil", "cv2"])
def test_max_pixels_is_ours_to_set(tmp_path, loader):
    """Under PIL's own limit, our max_pixels decides; at the limit the image passes."""
    path = tmp_path / "small.png"
    Image.fromarray(gradient(48, 64)).save(path)
    with pytest.raises(BadImageError, match="max_pixels=3071"):
        loader(str(path), 48 * 64 - 1)
    loader(str(path), 48 * 64)


def test_header_in_pils_warning_band_gives_no_warning(tmp_path):
    """100 megapixels: PIL warns (DecompressionBombWarning); our functions must not let it out."""
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(10_000, 10_000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert probe(str(path), 200_000_000) == (10_000, 10_000)
        start = time.perf_counter()
        with pytest.raises(BadImageError, match="max_pixels"):
            load_pil(str(path), MAX_PIXELS)
        assert time.perf_counter() - start < 0.1
    assert caught == []


@pytest.mark.parametrize("name", ["gray_png", "exif6_png", "exif6_jpeg", "gray16_png", "tiff"])
def test_probe_never_decodes_pixels(odd, name, monkeypatch):
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self))
    assert probe(str(odd[name]), MAX_PIXELS) == ORIENTED_SIZE
    assert loads == []


def test_zero_sized_header_is_refused(tmp_path):
    path = tmp_path / "zero.png"
    path.write_bytes(png_header_only(0, 10))
    with pytest.raises(BadImageError):
        probe(str(path), MAX_PIXELS)


def test_no_warnings_leak_and_truncated_images_stay_refused(odd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in odd.values():
            load_pil(str(path), MAX_PIXELS)
            load_cv2(str(path), MAX_PIXELS)
    assert caught == []
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("load", [load_pil, load_cv2], ids=["pil", "cv2"])
def test_float_pixels_are_refused_not_clipped(tmp_path, load):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(path)
    with pytest.raises(BadImageError, match="float"):
        load(str(path), MAX_PIXELS)


def test_only_known_formats_are_opened(tmp_path):
    """Formats outside IMAGE_OPEN_FORMATS (here ICO; EPS would start Ghostscript) are not even parsed."""
    path = tmp_path / "picture.jpg"
    Image.fromarray(gradient(8, 8)).save(path, format="ICO")
    with pytest.raises(BadImageError, match="not an image"):
        probe(str(path), MAX_PIXELS)
    assert "ICO" not in decode.IMAGE_OPEN_FORMATS


# ---------------------------------------------------------------- which PIL


def test_pil_build_reports_pillow_simd():
    build = pil_build()
    assert build["distribution"] == "pillow-simd" and build["simd"] is True
    assert build["version"] == PIL.__version__
    assert build["libjpeg_turbo"] is True and build["jpeg_version"]
    assert isinstance(build["cpu_avx2"], bool)
    assert pil_build_line().startswith(f"pillow-simd {PIL.__version__} (libjpeg-turbo ")


def test_pil_build_line_formats_any_build():
    line = pil_build_line(
        {"distribution": "Pillow", "version": "10.0.0", "simd": False, "libjpeg_turbo": False,
         "jpeg_version": "9", "cpu_avx2": False}
    )  # fmt: skip
    assert line == "Pillow 10.0.0 (libjpeg 9, no AVX2 on this CPU)"
