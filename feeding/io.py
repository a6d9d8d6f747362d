"""Atomic writes (a result or checkpoint is either wholly there or not at all), and how paths are shown
in what is written."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def write_record_and_table(stem: Path, record: dict, markdown: str) -> list[Path]:
    """``stem``.json and ``stem``.md, each atomically, the JSON first: a table that exists has its record."""
    return [write_json(stem.with_suffix(".json"), record), write_atomic(stem.with_suffix(".md"), markdown.encode())]


def _shown_roots() -> tuple[tuple[str, str], ...]:
    """The directories results show by name: the cache root as ``<cache>``, the home directory as ``~``."""
    from feeding.cache import cache_root

    return (str(cache_root().resolve()), "<cache>"), (str(Path.home().resolve()), "~")


def display_text(text: str) -> str:
    """``text`` with every path under the cache root or the home directory written as ``display_path``
    writes it (``<cache>/...``, ``~/...``), wherever in the text it stands: a sentence of advice names
    files too."""
    for prefix, shown in _shown_roots():
        text = text.replace(prefix + os.sep, shown + os.sep)
    return text


def display_path(path: str | os.PathLike) -> str:
    """A path for results: the cache root as ``<cache>``, the home directory as ``~``.

    Results are committed; they should not carry one machine's directories.
    """
    text = str(Path(path).resolve()) if str(path) else str(path)
    for prefix, shown in _shown_roots():
        if text == prefix or text.startswith(prefix + os.sep):
            return shown + text[len(prefix):]
    return text
