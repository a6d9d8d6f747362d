"""Where and when a result was measured: machine, software builds, commit."""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def _dali_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return None


def machine_info() -> dict:
    import torch

    from feeding.decode import pil_build

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dali": _dali_version(),
        "pil": pil_build(),
    }


def commit_info(repo: Path | None = None) -> dict:
    """The commit and whether the tree had uncommitted changes (None outside git)."""
    cwd = repo or Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"id": commit, "dirty": bool(status) if status is not None else None}


def display_path(path: str | os.PathLike) -> str:
    """A path for results: the cache root as ``<cache>``, the home directory as ``~``.

    Results are committed; they should not carry one machine's directories.
    """
    from feeding.cache import cache_root

    text = str(Path(path).resolve()) if str(path) else str(path)
    for prefix, shown in ((str(cache_root().resolve()), "<cache>"), (str(Path.home().resolve()), "~")):
        if text == prefix or text.startswith(prefix + os.sep):
            return shown + text[len(prefix):]
    return text


PATH_FLAGS = ("--data", "--out", "--json", "--recommendation")


def display_command(prog: str, argv: list[str]) -> str:
    """The command line for a report, with the paths it names shown as ``display_path`` shows them."""
    import shlex

    def show(path: str) -> str:  # a relative path stays as typed: it names no machine's directories
        return display_path(path) if os.path.isabs(os.path.expanduser(path)) else path

    shown, after_flag = [], False
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if after_flag:
            arg = show(arg)
        elif eq and flag in PATH_FLAGS:
            arg = f"{flag}={show(value)}"
        shown.append(arg)
        after_flag = arg in PATH_FLAGS
    return shlex.join([*prog.split(), *shown])


def provenance() -> dict:
    return {
        "machine": machine_info(),
        "commit": commit_info(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
