"""SIGINT/SIGTERM during training: set a flag; the loop finishes the step, checkpoints, then stops."""

from __future__ import annotations

import signal
import threading


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
