"""Where and when a result was measured: machine, software builds, commit."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

from feeding.io import display_path
from feeding.machine import machine_info


def commit_info(repo: Path | None = None) -> dict:
    """The commit and whether the code had uncommitted changes, results/ aside (None outside git)."""
    cwd = repo or Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    # The code's state, not the results': a run that rewrites results/ must not call its own commit dirty.
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"id": commit, "dirty": bool(status) if status is not None else None}


PATH_FLAGS = ("--data", "--out", "--json", "--recommendation", "--spec")


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
