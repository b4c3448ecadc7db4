"""SIGINT/SIGTERM during work that keeps no state worth a checkpoint (the final test, the report).

Training handles a signal by finishing its step and checkpointing (the engine's stop flag). After
the last checkpoint there is nothing to save: the rest (evaluating the test split, drawing the
report) is redone from the checkpoints by a `--resume` or `resnet-cifar report`. So there a signal
stops the work at once, as a one-line `Interrupted` error with exit 128 + signal, and every file
written so far is whole, because each is written atomically.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

from .errors import Interrupted


@contextlib.contextmanager
def signals_interrupt(message: Callable[[int], str]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted(signum, message(signum)).

    Only in the main thread (elsewhere Python cannot install handlers; the block then runs as is).
    The previous handlers come back when the block ends.
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
