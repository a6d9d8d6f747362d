"""A Ctrl-C that reaches a measurement of worker processes: raised at once, and never lost.

A terminal sends SIGINT to the whole process group, so the loader's workers get it too. Python swallows
the main process's KeyboardInterrupt where it lands in an at-fork hook or a ``__del__``, and a worker that
the Ctrl-C stopped fails the measurement in hand with "a data-loading worker died". ``CtrlC`` turns both
back into the interrupt the user asked for: the tuner (``bench.tune``) and ``feedbench compare`` both
stop there and write what they measured.
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Seconds before a swallowed Ctrl-C is sent again: long enough for the main thread to have left the
# hook that swallowed it (microseconds; another worker's fork, tens of ms, only swallows it again).
REDELIVER_S = 0.05


class CtrlC:
    """While ``installed``, a Ctrl-C raises KeyboardInterrupt at once, as Python's own handler does,
    and is remembered; one that Python swallows is sent again.

    Python swallows an exception raised inside an at-fork hook or a ``__del__`` ("Exception ignored
    in ..."), and a Ctrl-C that lands while a DataLoader forks its workers is raised there. The
    workers, which got the Ctrl-C too, have quit, counting on the main process to stop: without
    a second raise it would wait ``worker_timeout_s`` for their batches. So the swallowed
    KeyboardInterrupt, which reaches ``sys.unraisablehook``, is sent again to the main thread; and
    ``check`` raises it at the next measurement where other code caught it (``except BaseException``).
    """

    def __init__(self) -> None:
        self.pressed = False
        self._previous_hook = sys.unraisablehook
        self._handled = threading.Event()  # the run has taken the interrupt: a resend still pending is dropped

    def _on_sigint(self, signum, frame) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def _on_unraisable(self, unraisable) -> None:
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            self._previous_hook(unraisable)
            return
        # Not from here: the hook is still inside the code that swallows what it raises.
        again = threading.Timer(REDELIVER_S, self._send_again)
        again.daemon = True
        again.start()

    def _send_again(self) -> None:
        # Only while the watch is installed: once the run has left it (taking the interrupt another way, a
        # worker's error after the Ctrl-C, say), a resend would land in the writing of the partial record.
        if not self._handled.is_set():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def check(self) -> None:
        """KeyboardInterrupt where a Ctrl-C was pressed (called between measurements)."""
        if self.pressed:
            raise KeyboardInterrupt

    @contextmanager
    def errors_are_interrupts(self) -> Iterator[None]:
        """An error raised after a Ctrl-C (a worker it stopped: "a data-loading worker died") raised
        as the KeyboardInterrupt it follows; before one, errors propagate as they came."""
        try:
            yield
        except Exception as error:
            if self.pressed:
                raise KeyboardInterrupt from error
            raise

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The handler (and the hook) in place of Python's default ones; left out where another
        handler (or SIG_IGN: a job started in the background) is in place, or off the main thread."""
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield
            return
        self._previous_hook = sys.unraisablehook
        self._handled.clear()
        signal.signal(signal.SIGINT, self._on_sigint)
        sys.unraisablehook = self._on_unraisable
        try:
            yield
        finally:
            self._handled.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.unraisablehook = self._previous_hook
