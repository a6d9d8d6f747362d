"""Run one measurement in a fresh interpreter, so one run's state cannot leak into the next.

A measurement leaves things behind in its process: allocator caches, warm
page and CPU caches, thread-pool settings, imported libraries, DALI's memory
pools. ``in_fresh_process`` runs a function in a newly spawned Python (not a
fork of this one) and returns its result or re-raises its error.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, TypeVar

from feeding.errors import FeedError

T = TypeVar("T")


def in_fresh_process(func: Callable[..., T], *args, timeout_s: float | None = None) -> T:
    """``func(*args)`` in a spawned interpreter; ``func`` must be importable (module level)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(func, *args)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
            raise FeedError(f"the isolated measurement did not finish within {timeout_s:.0f} s") from None
