"""Batches made by a pool of threads instead of worker processes.

When a pipeline's hot path releases the GIL (libjpeg-turbo decode, OpenCV's
warp), threads do the work of processes without their costs: no pickling or
shared-memory copy of each batch, no fork, no second copy of the byte cache.
SPDL (Meta's "Scalable and Performant Data Loading") makes the same argument.

Each thread makes whole batches with its own clone of the transform (library
state such as albumentations' seeded generators is not shared), from the same
BatchKeys and per-batch seeded streams as the process workers: for a seed, the
two executors deliver the same pixels.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import queue
import threading
import weakref
from collections import deque
from typing import Callable, Iterable, Iterator

from feeding.errors import FeedError

MakeBatch = Callable[[object], object]  # BatchKey -> WorkerBatch
_STOP = None
# How long close() waits for a thread to finish the batch in hand. A thread still
# running native code when the interpreter exits can abort it ("terminate called
# without an active exception", from OpenCV's static destructors).
JOIN_TIMEOUT_S = 10.0
_LIVE: "weakref.WeakSet[ThreadBatches]" = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    for pool in list(_LIVE):
        pool.close()


class ThreadBatches:
    """In-order batches from ``workers`` threads, at most ``workers * prefetch`` in flight.

    The threads are daemons, not a ThreadPoolExecutor's: a worker stuck in a read
    (a hung network mount) must not keep the interpreter from exiting once
    ``worker_timeout_s`` has reported it.
    """

    def __init__(self, clone: Callable[[], MakeBatch], workers: int, prefetch: int, timeout_s: float) -> None:
        if workers < 1 or prefetch < 1:
            raise ValueError(f"need workers >= 1 and prefetch >= 1, got {workers}, {prefetch}")
        self.workers, self.prefetch, self.timeout_s = workers, prefetch, timeout_s
        self._stuck = False  # a thread missed worker_timeout_s: close() does not wait for it
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, args=(clone,), name=f"feedbench-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        _LIVE.add(self)

    def _work(self, clone: Callable[[], MakeBatch]) -> None:
        make = clone()  # this thread's own batch maker
        while (task := self._tasks.get()) is not _STOP:
            future, key = task
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                future.set_result(make(key))
            except BaseException as error:  # noqa: BLE001 - re-raised in the consumer by future.result()
                future.set_exception(error)

    def _submit(self, key) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._tasks.put((future, key))
        return future

    def iterate(self, keys: Iterable) -> Iterator[object]:
        """The batches for ``keys``, in order; abandoning the iterator cancels what is queued."""
        keys = iter(keys)
        pending: deque[concurrent.futures.Future] = deque()

        def submit_next() -> None:
            key = next(keys, None)
            if key is not None:
                pending.append(self._submit(key))

        for _ in range(self.workers * self.prefetch):
            submit_next()
        try:
            while pending:
                try:
                    batch = pending[0].result(timeout=self.timeout_s)
                except concurrent.futures.TimeoutError:
                    self._stuck = True
                    raise FeedError(
                        f"no batch from the worker threads within {self.timeout_s:.0f} s (worker_timeout_s); "
                        "a worker is stuck or the storage is too slow"
                    ) from None
                pending.popleft()
                submit_next()
                yield batch
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Drop the queued batches and wait for each thread to finish the one in hand.

        A thread stuck past JOIN_TIMEOUT_S (a hung read) is left behind: it is a
        daemon, so it cannot keep the interpreter alive.
        """
        _LIVE.discard(self)
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not _STOP:
                task[0].cancel()
        for _ in self._threads:
            self._tasks.put(_STOP)
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current and not self._stuck:
                thread.join(JOIN_TIMEOUT_S)
