"""Resume says where it continues and keeps the time exact; a stop reads as a stop, on its own line."""

from __future__ import annotations

import csv
import io
import os
import signal
import sys

import pytest

from reliability_helpers import tiny_config, tiny_dataset
from resnet_cifar import checkpoint as ckpt
from resnet_cifar import engine
from resnet_cifar import run as runs
from resnet_cifar.cli import _say_stopped
from resnet_cifar.errors import Interrupted
from resnet_cifar.models.resnet import CifarResNet
from resnet_cifar.progress import Console

REAL_FORWARD = CifarResNet.forward
pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def _signal_at_forward(monkeypatch, n_stop: int, sig=signal.SIGTERM):
    calls = {"n": 0}

    def forward(self, x):
        if self.training:
            calls["n"] += 1
            if calls["n"] == n_stop:
                os.kill(os.getpid(), sig)
        return REAL_FORWARD(self, x)

    monkeypatch.setattr(CifarResNet, "forward", forward)


def test_the_seconds_before_a_mid_epoch_checkpoint_count_in_elapsed_and_train_seconds(tmp_path, monkeypatch):
    data = tiny_dataset(n_per_class=6)          # 8 training images, batch 4: 2 steps per epoch
    run = tmp_path / "run"
    cfg = tiny_config(out=str(run))
    with monkeypatch.context() as m:
        _signal_at_forward(m, 1)
        with pytest.raises(Interrupted):
            engine.fit(cfg, data, run)
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch"], state["elapsed"]) == (0, 1, 0.0)
    state["partial"]["seconds"] = 100.0         # as if the first batch had taken 100 s before the stop
    results = engine.fit(cfg, data, run, resume_state=state)
    with open(run / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]
    assert rows[0]["epoch_seconds"] >= 100
    assert rows[0]["elapsed_seconds"] >= rows[0]["epoch_seconds"]          # was 0.x: the 100 s were lost
    assert rows[1]["elapsed_seconds"] - rows[0]["elapsed_seconds"] >= rows[1]["epoch_seconds"]
    assert results["train_seconds"] == rows[-1]["elapsed_seconds"] >= 100  # what `done:` prints


def test_a_stop_mid_epoch_clears_the_bar_so_the_message_starts_its_own_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs.data_mod, "load_dataset", lambda *a, **k: tiny_dataset(n_per_class=6))
    err = FakeTTY()
    console = Console(err, bar=True, out=io.StringIO())
    with monkeypatch.context() as m:
        _signal_at_forward(m, 1, signal.SIGINT)
        with pytest.raises(Interrupted) as e:
            runs.train(tiny_config(out=str(tmp_path / "run"), dataset="folder"), progress=console)
    assert console.bar is None                         # closed: tqdm (leave=False) cleared its line
    assert str(e.value).startswith("stopped by SIGINT (signal 2) at epoch 1 batch 1: checkpoint written to ")
    monkeypatch.setattr(sys, "stderr", err)
    _say_stopped(str(e.value))
    assert err.getvalue().endswith(f"\r\x1b[Kresnet-cifar: {e.value}\n")   # the ^C echo is wiped first
    assert "error" not in str(e.value)


def test_resume_after_the_last_epoch_says_it_only_finishes(tmp_path, monkeypatch, capsys):
    """As after a stop during the final test: all epochs trained, no results.json yet."""
    monkeypatch.setattr(runs.data_mod, "load_dataset", lambda *a, **k: tiny_dataset(n_per_class=6))
    run = tmp_path / "run"
    runs.train(tiny_config(out=str(run), epochs=1, dataset="folder"), progress=Console(io.StringIO(), bar=False))
    (run / "results.json").unlink()
    err = io.StringIO()
    runs.train(resume=run, progress=Console(err, bar=False, out=io.StringIO()))
    assert f"resuming {run}: all 1 epoch are trained; finishing the run" in err.getvalue()
    assert (run / "results.json").is_file()


@pytest.mark.slow
def test_closing_the_terminal_stops_with_a_checkpoint_and_exit_129(tmp_path):
    """A real terminal hang-up: the CLI runs on a pseudo-terminal (bar and all), which is then closed.
    SIGHUP arrives and every later write fails (EIO); the run still checkpoints and exits 129."""
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios
    import time

    from reliability_helpers import PY, subprocess_env, write_folder

    data = write_folder(tmp_path / "data", n_per_class=20)
    run = tmp_path / "run"
    argv = [PY, "-m", "resnet_cifar", "train", "--dataset", "folder", "--data-dir", str(data), "--out", str(run),
            "--model", "resnet20", "--width", "0.25", "--epochs", "50", "--batch-size", "4", "--val-size", "4",
            "--device", "cpu", "--compile", "off", "--no-report", "--checkpoint-every", "1"]
    env = {**subprocess_env(), "RESNET_CIFAR_NO_PROGRESS": ""}   # a live bar on the terminal
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, with the pseudo-terminal as its controlling terminal
        os.execve(PY, argv, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    seen, t0 = b"", time.monotonic()
    while not (run / "checkpoints" / "last.pt").exists() and time.monotonic() - t0 < 60:
        try:
            seen += os.read(fd, 4096)
        except OSError:
            break
    os.close(fd)                                    # the terminal goes away
    t0 = time.monotonic()
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the run did not stop within 60 s of the hang-up")
    status = done[1]
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGHUP, seen[-2000:]
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["step"] >= 1 and not (run / "results.json").exists()
