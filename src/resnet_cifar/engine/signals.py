"""SIGINT/SIGTERM/SIGHUP during training: set a flag; the loop finishes the step, checkpoints, then stops.

SIGHUP (the terminal was closed) is a stop like SIGTERM: a run started in a terminal that goes away
still leaves a checkpoint to --resume from (exit 129).
"""

from __future__ import annotations

import signal
import threading

# The signals that stop a run with a checkpoint (SIGHUP where the platform has it).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def signal_name(signum: int) -> str:
    """`SIGINT (signal 2)`."""
    try:
        return f"{signal.Signals(signum).name} (signal {int(signum)})"
    except ValueError:
        return f"signal {int(signum)}"


class StopFlag:
    """A context manager that catches SIGINT/SIGTERM/SIGHUP into `signum` (main thread only).

    A second Ctrl-C means "now" (KeyboardInterrupt). Outside `with` it is a plain flag, which is
    how tests and DDP workers drive it.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
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
