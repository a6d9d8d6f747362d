"""Where generated data and scan results live: a cache directory, never the repo."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$FEEDBENCH_CACHE, else $XDG_CACHE_HOME/feedbench, else ~/.cache/feedbench."""
    explicit = os.environ.get("FEEDBENCH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "feedbench"


def cache_dir(*parts: str) -> Path:
    """A sub-directory of the cache root, created on demand."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
