"""feeding.scan: finds exactly the bad files, caches verdicts, re-checks what changed, survives hangs."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from feeding import scan as scan_module
from feeding.decode import probe
from feeding.errors import BadFile
from feeding.scan import ScanResult, cache_file, check_file, scan
from feeding.sources import Samples, read_image_folder
from tests.odd_images import write_bad_files, write_odd_images

MAX_PIXELS = 64_000_000


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[dict[str, Path], dict[str, Path]]:
    folder = tmp_path_factory.mktemp("images")
    return write_odd_images(folder / "odd"), write_bad_files(folder / "bad")


@pytest.fixture()
def data(tmp_path, images) -> tuple[Samples, dict[str, Path], dict[str, Path]]:
    """An ImageFolder root: 'good' holds every odd image, 'mixed' the bad files and one good one."""
    odd, bad = images
    root = tmp_path / "data"
    good_dir, mixed_dir = root / "good", root / "mixed"
    shutil.copytree(next(iter(odd.values())).parent, good_dir)
    shutil.copytree(next(iter(bad.values())).parent, mixed_dir)
    shutil.copy(odd["rgb_jpeg"], mixed_dir / "fine.jpg")
    good = {name: good_dir / path.name for name, path in odd.items()}
    good["fine"] = mixed_dir / "fine.jpg"
    return read_image_folder(root), good, {name: mixed_dir / path.name for name, path in bad.items()}


@pytest.fixture()
def decode_counter(monkeypatch) -> list[str]:
    """Records every file the scan decodes (in-process scans only: workers=0)."""
    decoded: list[str] = []
    real = scan_module.check_file

    def counting(path: str, max_pixels: int):
        decoded.append(path)
        return real(path, max_pixels)

    monkeypatch.setattr(scan_module, "check_file", counting)
    return decoded


def bad_paths(result: ScanResult) -> set[str]:
    return {record.path for record in result.bad}


def test_scan_finds_exactly_the_bad_files_with_reasons(data, tmp_path):
    samples, good, bad = data
    result = scan(samples, MAX_PIXELS, cache_dir=tmp_path / "cache", workers=2)
    assert bad_paths(result) == {str(path) for path in bad.values()}
    reasons = {Path(record.path).name: record.reason for record in result.bad}
    assert "truncated" in reasons["truncated.jpg"]
    assert "empty" in reasons["empty.jpg"]
    assert "bomb" in reasons["bomb.png"]
    assert "not an image" in reasons["random.jpg"] and "not an image" in reasons["text.png"]
    assert sorted(result.good.paths.tolist()) == sorted(str(path) for path in good.values())
    assert len(result.good) + len(result.bad) == len(samples)
    assert result.cached is False


def test_in_process_scan_gives_the_same_verdicts(data, tmp_path):
    samples, _, _ = data
    pooled = scan(samples, MAX_PIXELS, cache_dir=tmp_path / "pool", workers=3)
    local = scan(samples, MAX_PIXELS, cache_dir=tmp_path / "local", workers=0)
    assert pooled.bad == local.bad
    np.testing.assert_array_equal(pooled.good.paths, local.good.paths)
    np.testing.assert_array_equal(pooled.good.labels, local.good.labels)


def test_truncated_jpeg_is_caught_at_scan_draft_size(data):
    _, _, bad = data
    path = str(bad["truncated_jpeg"])
    assert probe(path, MAX_PIXELS) == (96, 128)  # the header is intact: only decoding can tell
    assert "truncated" in check_file(path, MAX_PIXELS)



def test_second_scan_decodes_nothing(data, tmp_path, decode_counter):
    samples, _, _ = data
    first = scan(samples, MAX_PIXELS, cache_dir=tmp_path / "cache", workers=0)
    assert len(decode_counter) == len(samples)
    second = scan(samples, MAX_PIXELS, cache_dir=tmp_path / "cache", workers=0)
    assert len(decode_counter) == len(samples)  # nothing more
    assert second.cached is True and first.cached is False
    assert second.bad == first.bad
    np.testing.assert_array_equal(second.good.paths, first.good.paths)


def test_second_scan_with_workers_starts_no_decode(data, tmp_path, monkeypatch):
    samples, _, _ = data
    scan(samples, MAX_PIXELS, cache_dir=tmp_path / "cache", workers=2)

    def refuse(*args):
        raise AssertionError("a decode pool started although every verdict is cached")

    monkeypatch.setattr(scan_module, "_scan_round", refuse)  # where the pool would start
    assert scan(samples, MAX_PIXELS, cache_dir=tmp_path / "cache", workers=2).cached is True


def test_changed_files_are_checked_again(data, tmp_path, decode_counter, images):
    samples, good, bad = data
    cache = tmp_path / "cache"
    scan(samples, MAX_PIXELS, cache_dir=cache, workers=0)
    decode_counter.clear()

    # Content (and size) changes: a good file becomes truncated.
    victim = good["gray_png"]
    victim.write_bytes(bad["truncated_jpeg"].read_bytes())
    result = scan(samples, MAX_PIXELS, cache_dir=cache, workers=0)
    assert decode_counter == [str(victim)]
    assert str(victim) in bad_paths(result) and result.cached is False

    # Only the modification time changes: checked again, still good.
    decode_counter.clear()
    toucher = good["rgb_jpeg"]
    stat = toucher.stat()
    os.utime(toucher, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    result = scan(samples, MAX_PIXELS, cache_dir=cache, workers=0)
    assert decode_counter == [str(toucher)]
    assert str(toucher) not in bad_paths(result)

    # A bad file repaired: delivered again.
    decode_counter.clear()
    shutil.copy(images[0]["rgb_jpeg"], bad["truncated_jpeg"])
    result = scan(samples, MAX_PIXELS, cache_dir=cache, workers=0)
    assert decode_counter == [str(bad["truncated_jpeg"])]
    assert str(bad["truncated_jpeg"]) in result.good.paths.tolist()


def test_listing_problems_and_missing_files_are_reported(data, tmp_path):
    samples, good, _ = data
    problem = BadFile(str(tmp_path / "images" / "p1" / "selfie.jpg"), "file name 'selfie' is not a mask stem")
    gone = str(tmp_path / "gone.jpg")
    listed = Samples(
        paths=np.array([str(good["rgb_jpeg"]), gone]),
        labels=np.array([0, 1], dtype=np.int64),
        groups=np.array([0, 1], dtype=np.int64),
        classes=("a", "b"),
        root=samples.root,
        layout="imagefolder",
        problems=(problem,),
    )
    result = scan(listed, MAX_PIXELS, cache_dir=tmp_path / "cache", workers=0)
    assert result.bad == (problem, BadFile(gone, scan_module.MISSING_REASON))
    assert result.good.paths.tolist() == [str(good["rgb_jpeg"])]


def test_cache_is_one_file_per_root_written_atomically(data, tmp_path):
    samples, _, _ = data
    cache = tmp_path / "cache"
    scan(samples, MAX_PIXELS, cache_dir=cache, workers=0)
    assert [p.name for p in cache.iterdir()] == [cache_file(samples.root, cache).name]
    other_root = cache_file(str(tmp_path / "elsewhere"), cache)
    assert other_root != cache_file(samples.root, cache) and other_root.parent == cache


def test_unwritable_cache_warns_and_still_scans(data, tmp_path, monkeypatch):
    samples, _, bad = data

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scan_module.os, "replace", disk_full)
    with pytest.warns(RuntimeWarning, match="not cached"):
        result = scan(samples, MAX_PIXELS, cache_dir=tmp_path / "cache", workers=0)
    assert bad_paths(result) == {str(path) for path in bad.values()}
    assert list((tmp_path / "cache").iterdir()) == []  # no temp file left behind


def test_damaged_cache_means_a_rescan_not_a_crash(data, tmp_path, decode_counter):
    samples, _, _ = data
    cache = tmp_path / "cache"
    scan(samples, MAX_PIXELS, cache_dir=cache, workers=0)
    cache_file(samples.root, cache).write_text('{"header": {"version": 1}, "verd')
    decode_counter.clear()
    result = scan(samples, MAX_PIXELS, cache_dir=cache, workers=0)
    assert result.cached is False and len(decode_counter) == len(samples)
    assert scan(samples, MAX_PIXELS, cache_dir=cache, workers=0).cached is True


def test_other_max_pixels_invalidates_the_cache(data, tmp_path):
    samples, good, _ = data
    cache = tmp_path / "cache"
    scan(samples, MAX_PIXELS, cache_dir=cache, workers=0)
    strict = scan(samples, 1_000, cache_dir=cache, workers=0)
    assert strict.cached is False
    reasons = {record.path: record.reason for record in strict.bad}
    assert "max_pixels=1000" in reasons[str(good["rgb_jpeg"])]
    assert str(good["one_pixel_png"]) not in reasons


def test_default_cache_dir_follows_feedbench_cache(data, tmp_path, monkeypatch):
    samples, _, _ = data
    monkeypatch.setenv("FEEDBENCH_CACHE", str(tmp_path / "fb"))
    scan(samples, MAX_PIXELS, workers=0)
    assert cache_file(samples.root, tmp_path / "fb" / "scan").is_file()


def test_bad_arguments(data, tmp_path):
    samples, _, _ = data
    with pytest.raises(ValueError, match="workers"):
        scan(samples, MAX_PIXELS, cache_dir=tmp_path, workers=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        scan(samples, MAX_PIXELS, cache_dir=tmp_path, timeout_s=0)


@pytest.mark.skipif(
    multiprocessing.get_start_method() != "fork",
    reason="the fault is injected by a patch that only forked workers inherit",
)
@pytest.mark.parametrize("fault", ["hang", "crash"])
def test_hung_or_crashed_decode_is_reported_and_does_not_stop_the_scan(data, tmp_path, monkeypatch, fault):
    samples, good, bad = data
    real = scan_module.check_file
    victim = str(good["rgb_jpeg"])

    def faulty(path: str, max_pixels: int):
        if path == victim and fault == "hang":
            time.sleep(60)  # a decoder stuck in C
        if path == victim and fault == "crash":
            os._exit(1)  # a decoder that segfaults
        return real(path, max_pixels)

    monkeypatch.setattr(scan_module, "check_file", faulty)
    start = time.perf_counter()
    result = scan(samples, MAX_PIXELS, cache_dir=tmp_path / "cache", workers=2, timeout_s=1.0)
    assert time.perf_counter() - start < 15
    reasons = {record.path: record.reason for record in result.bad}
    assert "did not finish within 1 s" in reasons.pop(victim)
    assert set(reasons) == {str(path) for path in bad.values()}  # every other verdict still right
    assert len(result.good) == len(samples) - len(bad) - 1

    # A timeout is not a verdict to keep: the next scan decodes that file again.
    monkeypatch.setattr(scan_module, "check_file", real)
    again = scan(samples, MAX_PIXELS, cache_dir=tmp_path / "cache", workers=2)
    assert again.cached is False and victim in again.good.paths.tolist()
