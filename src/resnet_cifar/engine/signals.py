"""SIGINT/SIGTERM/SIGHUP. During training: set a flag; the loop finishes the step, checkpoints, then
stops (`StopFlag`). After the last checkpoint: stop at once with one line (`signals_interrupt`).

SIGHUP (the terminal was closed) is a stop like SIGTERM: a run started in a terminal that goes away
still leaves a checkpoint to --resume from (exit 129).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

from ..errors import Interrupted

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


@contextlib.contextmanager
def signals_interrupt(message: Callable[[int], str]) -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise Interrupted(signum, message(signum)) at once.

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

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
