"""SIGINT/SIGTERM. During training: set a flag; the loop finishes the step, checkpoints, then stops
(`StopFlag`). After the last checkpoint: stop at once with one line (`signals_interrupt`)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

from ..errors import Interrupted


class StopFlag:
    """A context manager that catches SIGINT/SIGTERM into `signum` (main thread only).

    A second Ctrl-C means "now" (KeyboardInterrupt). Outside `with` it is a plain flag, which is
    how tests and DDP workers drive it.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


@contextlib.contextmanager
def signals_interrupt(message: Callable[[int], str]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted(signum, message(signum)) at once.

    For work after the last checkpoint (the final test, the report): there is no state left to save,
    and what remains is redone from the checkpoints (`--resume`, `resnet-cifar report`). Every file
    written so far is whole, because each is written atomically. Main thread only (elsewhere Python
    cannot install handlers; the block then runs as is); the previous handlers come back after it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise Interrupted(signum, message(signum))

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
