"""Killed and interrupted runs resume to the very same weights.

Issue "Reliability and security": case 3 (kill -9 in the middle of a CLI run, then --resume: the
final weights equal an uninterrupted run bit for bit), case 5 (SIGTERM / SIGINT: finish the step,
checkpoint, exit 143 / 130 with one line; resuming equals the uninterrupted run) and case 11
(gradient accumulation: checkpoints only at optimizer-step boundaries; a mid-epoch checkpoint with
accum_steps=2 resumes to the same result).

Every run here is the same tiny deterministic CPU run: 20 training images, batch 4, 3 epochs
(15 optimizer steps), a checkpoint after every step. The kill -9 run is a real CLI subprocess
(driven from a thread while the baseline trains); the signal tests run the CLI in-process and send
real signals to this process (main's return value is the process's exit code).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from reliability_helpers import (
    assert_one_line_stop,
    assert_same_tensors,
    model_state,
    run_main,
    start_cli,
    tiny_config,
    tiny_dataset,
    train_argv,
    wait_for,
    write_folder,
)
from resnet_cifar import checkpoint as ckpt
from resnet_cifar import engine
from resnet_cifar.errors import Interrupted
from resnet_cifar.models.resnet import CifarResNet

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

N_PER_CLASS, EPOCHS, STEPS = 12, 3, 15
REAL_FORWARD = CifarResNet.forward


def _argv(data: Path, out: Path) -> list[str]:
    return train_argv(data, out, epochs=EPOCHS, checkpoint_every=1)


class _Driven:
    """A CLI training subprocess, and a thread that signals it right after it has seen the
    `nth` version of checkpoints/last.pt (each save renames a new file onto it: a new inode)."""

    def __init__(self, root: Path, name: str, sig: int, nth: int):
        self.data = write_folder(root / f"data-{name}", n_per_class=N_PER_CLASS)
        self.out = root / name
        self.sig, self.nth, self.sent, self.seen = sig, nth, False, 0
        self.proc = start_cli(_argv(self.data, self.out), root)
        self.thread = threading.Thread(target=self._drive, daemon=True)
        self.thread.start()

    def _drive(self):
        last = self.out / "checkpoints" / "last.pt"
        if not wait_for(last, self.proc):
            return
        inode = None
        while self.proc.poll() is None:
            try:
                now = last.stat().st_ino
            except FileNotFoundError:
                now = inode
            if now != inode:
                inode, self.seen = now, self.seen + 1
                if self.seen >= self.nth:
                    self.proc.send_signal(self.sig)
                    self.sent = True
                    return
            time.sleep(0.002)

    def finish(self):
        out, err = self.proc.communicate(timeout=300)
        self.thread.join()
        return self.proc.returncode, out, err


@pytest.fixture(scope="module")
def driven(tmp_path_factory):
    """Start the kill -9 subprocess run now; it trains while the baseline does."""
    root = tmp_path_factory.mktemp("driven")
    nth = random.Random().randint(1, 8)  # a random kill point each time (reported on failure)
    runs = {"kill9": _Driven(root, "kill9", signal.SIGKILL, nth), "root": root}
    yield runs
    for r in runs.values():
        if isinstance(r, _Driven) and r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, driven):
    """The uninterrupted run, in-process through the same CLI."""
    root = tmp_path_factory.mktemp("baseline")
    data = write_folder(root / "data", n_per_class=N_PER_CLASS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        from resnet_cifar.cli import main

        torch.set_num_threads(1)  # as the subprocess (OMP_NUM_THREADS=1): same kernels, same bits
        assert main(_argv(data, root / "run")) == 0
    run = root / "run"
    return {"data": data, "last": model_state(run / "checkpoints" / "last.pt"),
            "best": model_state(run / "checkpoints" / "best.pt"),
            "results": json.loads((run / "results.json").read_text())}


def _count_training_forwards(monkeypatch, hook=None):
    calls = {"n": 0}

    def forward(self, x):
        if self.training:
            calls["n"] += 1
            if hook is not None:
                hook(calls["n"])
        return REAL_FORWARD(self, x)

    monkeypatch.setattr(CifarResNet, "forward", forward)
    return calls


def _resume_and_compare(run: Path, baseline, monkeypatch, capsys):
    """Resume in-process; it must take exactly the remaining steps and end bit-identical."""
    before = ckpt.load(run / "checkpoints" / "last.pt")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    calls = _count_training_forwards(monkeypatch)
    code, _, err = run_main(["train", "--resume", str(run), "--device", "cpu"], capsys)
    assert code == 0, err
    assert f"resuming {run} at epoch {before['epoch'] + 1}, batch {before['batch'] + 1} " in err
    assert calls["n"] == STEPS - before["step"]  # continued from the checkpoint, did not restart
    assert_same_tensors(model_state(run / "checkpoints" / "last.pt"), baseline["last"])
    assert_same_tensors(model_state(run / "checkpoints" / "best.pt"), baseline["best"])
    results = json.loads((run / "results.json").read_text())
    for key in ("best_val_acc", "best_epoch", "eval_acc", "eval_loss", "steps", "epochs"):
        assert results[key] == baseline["results"][key], key
    return before


# --------------------------------------------------------------------------- case 3: kill -9
def test_kill_9_mid_training_then_resume_equals_an_uninterrupted_run(driven, baseline, monkeypatch, capsys):
    run = driven["kill9"]
    code, _, err = run.finish()
    if not run.sent:  # a fast machine finished before the poller saw the nth checkpoint: once more, at the first
        run = _Driven(driven["root"], "kill9-again", signal.SIGKILL, 1)
        code, _, err = run.finish()
    assert run.sent, f"the run ended (exit {code}) before it could be killed\n{err}"
    assert code == -signal.SIGKILL, err
    assert not (run.out / "results.json").exists()  # it really died mid-run
    before = _resume_and_compare(run.out, baseline, monkeypatch, capsys)
    assert 1 <= before["step"] <= STEPS, f"killed after checkpoint version {run.seen}"


# --------------------------------------------------------------------------- case 5: SIGTERM/SIGINT
@pytest.mark.parametrize("sig, at_forward, code", [(signal.SIGINT, 7, 130), (signal.SIGTERM, 5, 143),
                                                   (signal.SIGHUP, 7, 129)])
def test_signal_in_process_finishes_the_step_then_resume_is_bitwise(tmp_path, baseline, monkeypatch, capsys,
                                                                    sig, at_forward, code):
    """The signal arrives during forward number k: step k still completes (its checkpoint says
    step k); 7 is mid-epoch 2, 5 is the last step of epoch 1 (validation and the epoch's
    checkpoint still happen)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _count_training_forwards(m, lambda n: os.kill(os.getpid(), sig) if n == at_forward else None)
        got, _, err = run_main(_argv(baseline["data"], run), capsys)
    assert got == code
    where = "after epoch 1" if at_forward == 5 else "at epoch 2 batch 2"
    assert_one_line_stop(err, sig.name, f"signal {int(sig)}", where, "resume with `resnet-cifar train --resume")
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["step"] == at_forward
    assert (state["epoch"], state["batch"]) == ((1, 0) if at_forward == 5 else (1, 2))
    assert not (run / "results.json").exists()
    _resume_and_compare(run, baseline, monkeypatch, capsys)


def test_second_ctrl_c_stops_now_with_130_and_an_intact_checkpoint(tmp_path, baseline, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    handler = signal.getsignal(signal.SIGINT)

    def twice(n):
        if n == 4:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    _count_training_forwards(monkeypatch, twice)
    code, _, err = run_main(_argv(baseline["data"], tmp_path / "run"), capsys)
    assert code == 130
    assert "Traceback" not in err and "interrupted" in err
    assert ckpt.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler  # the run's handlers are gone again


# --------------------------------------------------------------------------- case 11: accumulation
class _Crash(Exception):
    pass


def test_mid_epoch_checkpoint_with_accumulation_resumes_to_the_same_result(tmp_path, monkeypatch):
    data = tiny_dataset(n_per_class=10)  # 16 training images, batch 4: 4 steps per epoch, 2 micro-batches each
    cfg = tiny_config(accum_steps=2, checkpoint_every=3, out=str(tmp_path / "ref"))
    engine.fit(cfg, data, tmp_path / "ref")
    ref = model_state(tmp_path / "ref" / "checkpoints" / "last.pt")

    run = tmp_path / "run"
    cfg = tiny_config(accum_steps=2, checkpoint_every=3, out=str(run))

    def hook(n):
        if n == 2 * 3 + 1:  # the first micro-batch of step 4 (the last of epoch 1): the process "dies"
            raise _Crash()

    with monkeypatch.context() as m:
        _count_training_forwards(m, hook)
        with pytest.raises(_Crash):
            engine.fit(cfg, data, run)
    state = ckpt.load(run / "checkpoints" / "last.pt")
    # The checkpoint of step 3: mid-epoch 1, after a whole accumulation window (6 micro-batches).
    assert (state["step"], state["epoch"], state["batch"], state["accum_steps"]) == (3, 0, 3, 2)
    calls = _count_training_forwards(monkeypatch)
    engine.fit(cfg, data, run, resume_state=state)
    assert calls["n"] == 2 * (8 - 3)
    assert_same_tensors(model_state(run / "checkpoints" / "last.pt"), ref)


def test_a_signal_between_micro_batches_checkpoints_after_the_whole_window(tmp_path, monkeypatch):
    """SIGTERM during the first of two micro-batches: the step (window) is completed first, so the
    checkpoint never holds half-accumulated gradients."""
    data = tiny_dataset(n_per_class=10)
    cfg = tiny_config(accum_steps=2, out=str(tmp_path / "run"))
    with monkeypatch.context() as m:
        _count_training_forwards(m, lambda n: os.kill(os.getpid(), signal.SIGTERM) if n == 3 else None)
        with pytest.raises(Interrupted) as e:
            engine.fit(cfg, data, tmp_path / "run")
    assert e.value.exit_code == 143
    state = ckpt.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["step"], state["batch"]) == (2, 2)
    assert not any("grad" in k for k in state["model"])
