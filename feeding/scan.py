"""Validation scan: decode every file once, remember the verdicts, keep bad files out.

DALI cannot skip a file inside a batch, so its file list must hold only files
that decode; the CPU backends can skip at run time and use the scan optionally.

Verdicts are cached per (absolute path, size in bytes, mtime in ns), in one JSON
file per data root under ``cache_dir`` (default ``feeding.cache.cache_dir('scan')``):
a second scan of an unchanged set decodes nothing, and a file that changed is
decoded again. The cache is also dropped when ``max_pixels`` or the PIL version
changes, since either can change a verdict.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import PIL

from feeding.cache import cache_dir as default_cache_dir
from feeding.decode import load_pil
from feeding.errors import BadFile, BadImageError
from feeding.io import write_atomic
from feeding.sources import Samples

CACHE_VERSION = 1
# libjpeg at 1/8 scale still entropy-decodes every byte of the stream, so a
# truncated or broken JPEG fails as it would at full size, for a fraction of the IDCT work.
SCAN_DRAFT = (1, 1)
SCAN_TIMEOUT_S = 60.0  # a worker silent this long is stuck on a file (a hung decoder)
MISSING_REASON = "file not found"

Fingerprint = tuple[int, int]  # (size in bytes, mtime in ns)

_DECODING, _DECIDED = 1, 2  # a file's state byte; 0 (RawArray starts zeroed): still queued
_worker_states = None  # in each pool worker: one shared state byte per path (see _scan_round)


@dataclass(frozen=True)
class ScanResult:
    """What a validation scan found."""

    good: Samples  # the samples minus the bad files
    bad: tuple[BadFile, ...]  # listing problems first, then files that do not decode, in sample order
    cached: bool  # True when nothing had to be decoded: every verdict came from the cache


def check_file(path: str, max_pixels: int) -> str | None:
    """Why ``path`` cannot be delivered, or None when it decodes."""
    try:
        load_pil(path, max_pixels, draft_to=SCAN_DRAFT)
    except BadImageError as error:
        return error.reason
    return None


def _fingerprint(path: str) -> Fingerprint | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def cache_file(root: str, folder: Path) -> Path:
    """The verdict file of one data root: named by a hash of its absolute path."""
    digest = hashlib.sha256(os.path.abspath(root).encode("utf-8")).hexdigest()[:16]
    return folder / f"scan-{digest}.json"


def _cache_header(max_pixels: int) -> dict:
    return {"version": CACHE_VERSION, "max_pixels": max_pixels, "pil": PIL.__version__}


def _read_cache(path: Path, max_pixels: int) -> dict[str, list]:
    """path -> [size, mtime_ns, reason or None]; empty when absent, unreadable or made under other rules."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["header"] != _cache_header(max_pixels):
            return {}
        return dict(data["verdicts"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a damaged cache only costs a rescan


def _write_cache(path: Path, max_pixels: int, verdicts: dict[str, list]) -> None:
    """Write atomically (temp file + rename): a reader never sees half a file.

    A cache that cannot be written costs the next scan its speed, not this scan
    its result: warn and go on.
    """
    payload = json.dumps({"header": _cache_header(max_pixels), "verdicts": verdicts}, ensure_ascii=False)
    try:
        write_atomic(path, payload.encode("utf-8"))
    except OSError as error:
        warnings.warn(f"scan verdicts not cached in {path}: {error}", RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------- decoding in a pool


def _init_worker(states) -> None:
    global _worker_states
    _worker_states = states


def _check_chunk(task: tuple[list[tuple[int, str]], int]) -> list[tuple[int, str | None]]:
    chunk, max_pixels = task
    verdicts = []
    for index, path in chunk:
        _worker_states[index] = _DECODING
        verdicts.append((index, check_file(path, max_pixels)))
        _worker_states[index] = _DECIDED
    return verdicts


def _scan_round(
    paths: list[str], max_pixels: int, workers: int, timeout_s: float
) -> tuple[dict[int, str | None], list[int]]:
    """Verdicts by index, and the indexes still being decoded when no result came for ``timeout_s``.

    A shared state byte per file tells, at a timeout, which files are being
    decoded (stuck) and which were done or only waited in line (tried again
    next round); leaving the pool kills the stuck workers.
    """
    context = multiprocessing.get_context()
    states = context.RawArray("b", len(paths))
    # Chunks of our own, not imap's chunksize: only a one-item-per-result
    # iterator has next(timeout=...).
    size = max(1, min(16, len(paths) // (workers * 8)))
    indexed = list(enumerate(paths))
    tasks = [(indexed[start : start + size], max_pixels) for start in range(0, len(paths), size)]
    verdicts: dict[int, str | None] = {}
    with context.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(states,)) as pool:
        results = pool.imap_unordered(_check_chunk, tasks)
        try:
            for _ in tasks:
                verdicts.update(results.next(timeout=timeout_s))
        except multiprocessing.TimeoutError:
            return verdicts, [i for i in range(len(paths)) if states[i] == _DECODING]
    return verdicts, []


def _decode_all(
    paths: list[str], max_pixels: int, workers: int, timeout_s: float
) -> tuple[dict[str, str | None], set[str]]:
    """Verdicts for ``paths``, and the paths whose decode timed out (their verdict is not worth caching)."""
    if workers == 0:
        return {path: check_file(path, max_pixels) for path in paths}, set()
    verdicts: dict[str, str | None] = {}
    timed_out: set[str] = set()
    pending = list(paths)
    while pending:
        found, stuck = _scan_round(pending, max_pixels, workers, timeout_s)
        verdicts.update((pending[i], reason) for i, reason in found.items())
        if not stuck and len(found) < len(pending):  # no result and no decode running: give up on the rest
            stuck = [i for i in range(len(pending)) if i not in found]
        for i in stuck:
            verdicts[pending[i]] = f"decode did not finish within {timeout_s:g} s (decoder hung or crashed)"
            timed_out.add(pending[i])
        pending = [path for path in pending if path not in verdicts]
    return verdicts, timed_out


# ---------------------------------------------------------------- the scan


def _settled_without_decoding(
    prints: dict[str, Fingerprint | None], known: dict[str, list]
) -> tuple[dict[str, str | None], list[str]]:
    """Verdicts settled by a cache entry with the same fingerprint (or a missing file); the files left to decode."""
    reasons: dict[str, str | None] = {}
    to_decode: list[str] = []
    for key, fingerprint in prints.items():
        entry = known.get(key)
        if fingerprint is None:
            reasons[key] = MISSING_REASON
        elif entry is not None and tuple(entry[:2]) == fingerprint:
            reasons[key] = entry[2]
        else:
            to_decode.append(key)
    return reasons, sorted(to_decode)


def scan(
    samples: Samples,
    max_pixels: int,
    cache_dir: Path | None = None,
    workers: int = 2,
    timeout_s: float = SCAN_TIMEOUT_S,
) -> ScanResult:
    """Decode every sample once (reusing cached verdicts) and split the good from the bad.

    ``workers`` processes decode in parallel (0: in this process, with no
    timeout). A file whose decode gives no sign of life for ``timeout_s`` seconds
    is reported bad, its worker is killed, and the scan goes on.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir("scan")
    folder.mkdir(parents=True, exist_ok=True)
    store = cache_file(samples.root, folder)
    known = _read_cache(store, max_pixels)

    listed = samples.paths.tolist()
    absolute = {path: os.path.abspath(path) for path in listed}
    prints = {key: _fingerprint(key) for key in set(absolute.values())}
    reasons, to_decode = _settled_without_decoding(prints, known)
    fresh, timed_out = _decode_all(to_decode, max_pixels, workers, timeout_s)
    reasons.update(fresh)
    cacheable = {key: [*prints[key], reason] for key, reason in fresh.items() if key not in timed_out}
    if cacheable:
        _write_cache(store, max_pixels, {**known, **cacheable})

    bad_samples = [
        BadFile(path, reasons[absolute[path]]) for path in listed if reasons[absolute[path]] is not None
    ]
    return ScanResult(
        good=samples.without({record.path for record in bad_samples}),
        bad=tuple(samples.problems) + tuple(bad_samples),
        cached=not to_decode,
    )
