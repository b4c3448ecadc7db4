"""How a run shows itself while it trains: a tqdm bar on a terminal, plain lines in a log.

Where each line goes: the run's record (one summary per epoch; the CLI adds the result) on stdout,
so `resnet-cifar train > train.log` keeps the whole history; the header, the live bar, estimates,
notes and warnings on stderr. The engine calls these hooks and never prints. Live numbers come from device
tensors; they are read at most every `refresh` seconds because each read is a CPU-GPU sync point.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def plural(n: int, word: str) -> str:
    """`1 epoch`, `2 epochs`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class Silent:
    """No output (library use, tests)."""

    def log(self, message: str) -> None:
        pass

    def record(self, message: str) -> None:
        pass

    def epoch_start(self, epoch: int, epochs: int, steps: int, start: int = 0) -> None:
        pass

    def step(self, images: int, sums) -> None:
        pass

    def estimate(self, seconds_total: float, epochs: int) -> None:
        pass

    def epoch_end(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Console(Silent):
    """A tqdm bar per epoch when stderr is a terminal; otherwise a line per epoch, and within an epoch
    a progress line every `line_every` seconds (a log shows that a long CPU epoch is moving).

    `stream` takes the bar and `log` lines (default stderr), `out` the `record` lines and epoch
    summaries (default stdout; the given `stream` when only that is passed: one stream for all).
    """

    def __init__(self, stream=None, bar: bool | None = None, refresh: float = 1.0, line_every: float = 60.0,
                 clock=time.perf_counter, out=None):
        self.out = out or stream or sys.stdout
        self.stream = stream or sys.stderr
        if bar is None:
            bar = self.stream.isatty() and not os.environ.get("RESNET_CIFAR_NO_PROGRESS")
        self.use_bar = bar
        self.refresh = refresh
        self.bar = None
        self.eta_note = ""
        self._last = 0.0
        self._t0 = 0.0
        self._images = 0
        self.line_every, self.clock = line_every, clock
        self._where = (0, 0, 0, 0)      # epoch, epochs, steps, step
        self._last_line = 0.0
        self.gone = False           # the terminal went away (see _terminal)

    @contextlib.contextmanager
    def _terminal(self):
        """Writes that may fail: after SIGHUP the terminal is gone (EIO), yet the run must reach its
        checkpoint; from then on this console is silent."""
        try:
            yield
        except OSError:
            self.gone, self.bar, self.use_bar = True, None, False

    def log(self, message: str) -> None:
        if self.gone:
            return
        with self._terminal():
            if self.bar is not None:
                self.bar.write(message, file=self.stream)
            else:
                print(message, file=self.stream, flush=True)

    def record(self, message: str) -> None:
        """A line of the run's record (stdout): below the bar, which is redrawn after it."""
        if self.gone:
            return
        with self._terminal():
            if self.bar is not None:
                self.bar.clear()
            print(message, file=self.out, flush=True)
            if self.bar is not None:
                self.bar.refresh()

    def epoch_start(self, epoch, epochs, steps, start=0):
        self._t0, self._images, self._last = time.perf_counter(), 0, 0.0
        self._where, self._last_line = (epoch, epochs, steps, start), self.clock()
        if self.use_bar:
            from tqdm import tqdm

            with self._terminal():
                self.bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch}/{epochs}", file=self.stream,
                                leave=False, dynamic_ncols=True, unit="step")

    def step(self, images, sums):
        self._images += images
        epoch, epochs, steps, i = self._where
        self._where = (epoch, epochs, steps, i + 1)
        if self.bar is None:
            now = self.clock()
            if now - self._last_line >= self.line_every:
                self._last_line = now
                loss_sum, correct, count = (float(v) for v in sums)  # sync point, once a minute
                rate = self._images / max(time.perf_counter() - self._t0, 1e-9)
                self.log(f"epoch {epoch}/{epochs} step {i + 1}/{steps}: loss {loss_sum / max(count, 1):.4f} "
                         f"acc {correct / max(count, 1):.4f} | {rate:.0f} img/s{self.eta_note}")
            return
        with self._terminal():
            self.bar.update(1)
            now = time.perf_counter()
            if now - self._last >= self.refresh:
                self._last = now
                loss_sum, correct, count = (float(v) for v in sums)  # sync point, rate-limited
                rate = self._images / max(now - self._t0, 1e-9)
                self.bar.set_postfix_str(f"loss {loss_sum / max(count, 1):.3f} acc {correct / max(count, 1):.3f} "
                                         f"{rate:.0f} img/s{self.eta_note}", refresh=False)

    def estimate(self, seconds_total, epochs):
        self.eta_note = f" | est. total {_fmt_time(seconds_total)}"
        self.log(f"estimated total time for {plural(epochs, 'epoch')}: {_fmt_time(seconds_total)} "
                 "(from the first steps; stop with Ctrl-C, a checkpoint is written and --resume continues)")

    def epoch_end(self, row):
        self.close()
        self.eta_note = ""
        val = (f" val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}" if row.get("val_acc") is not None else "")
        ema = f" ema {row['ema_val_acc']:.4f}" if row.get("ema_val_acc") is not None else ""
        self.record(f"epoch {row['epoch']}: lr {row['lr']:.4g} train loss {row['train_loss']:.4f} "
                    f"acc {row['train_acc']:.4f}{val}{ema} | {row['epoch_seconds']:.1f}s "
                    f"{row['images_per_s']:.0f} img/s")

    def close(self):
        """Clear the bar (leave=False): what is printed next starts on a clean line."""
        if self.bar is not None:
            bar, self.bar = self.bar, None
            with self._terminal():
                bar.close()
