"""Checkpoints under stress: kill -9 during saves, failing saves (issue "Reliability and security",
cases 1: atomic durable saves, and 2: a failing save), at the library level and through the CLI.
Damaged files and corrupt resume state (cases 7 and 4): test_reliability_damaged.py.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from reliability_helpers import assert_one_line_error, run_main, tiny_config, tiny_dataset, train_argv, write_folder
from resnet_cifar import checkpoint as ckpt
from resnet_cifar import engine
from resnet_cifar.errors import CheckpointError


def _state(i: int, n: int = 400_000) -> dict:
    return {"model": {"w": torch.full((n,), float(i))}, "model_args": {"name": "resnet20", "num_classes": 2},
            "classes": ["a", "b"], "mean": [0.5] * 3, "std": [0.25] * 3, "i": i}


def _names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


# ------------------------------------------------------------------------- case 1: kill -9
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_9_at_random_points_of_repeated_saves_never_breaks_the_checkpoint(tmp_path):
    """A child saves last.pt over and over; it is SIGKILLed at random moments (20-60 trials). After each
    kill the final name holds a complete checkpoint, and the only other files are dot-prefixed
    .tmp files beside it."""
    path = tmp_path / "last.pt"
    ckpt.save(_state(0), path)
    rng = random.Random(20240601)
    leftovers_seen = 0
    last_i = 0
    # At least 20 trials; on a loaded machine a child may not get far within its slot, so up to 60
    # until a kill has landed inside a write and saves have progressed (bounded either way).
    for trial in range(60):
        if trial >= 20 and leftovers_seen >= 1 and last_i >= 1:
            break
        pid = os.fork()
        if pid == 0:  # the child: save, save, save, ... until killed
            try:
                i = last_i + 1
                while True:
                    ckpt.save(_state(i), path)
                    i += 1
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.06))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

        state = ckpt.load(path)  # always loads: the old or the new file, never a torn one
        i = state["i"]
        assert i >= last_i
        assert torch.equal(state["model"]["w"], torch.full((400_000,), float(i)))
        last_i = i
        for name in _names(tmp_path):
            assert name == "last.pt" or (name.startswith(".last.pt.") and name.endswith(".tmp")), name
        tmps = [n for n in _names(tmp_path) if n.endswith(".tmp")]
        leftovers_seen += bool(tmps)
        for n in tmps:  # a fresh start for the next trial (a user may delete them the same way)
            os.unlink(tmp_path / n)
    # The kills did land inside writes (otherwise this test would prove nothing) and saves did progress.
    assert leftovers_seen >= 1
    assert last_i >= 1


def test_save_is_durable_fsync_file_then_rename_then_fsync_dir(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", Path(a).name.startswith(".last.pt.") and Path(b).name == "last.pt"))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ckpt.save(_state(1, 10), tmp_path / "last.pt")
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[1][1] is True  # temp file beside the target, dot-prefixed, renamed onto it
    if events[0][1] is not None:
        assert events[0][1] is False and events[2][1] is True  # the file first, then its directory


# ------------------------------------------------------------------------- case 2: failing save
class _FullDisk:
    """The temp file of a save, on a disk with `room` bytes left: then writes fail with ENOSPC."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)

    def flush(self):
        return self.f.flush()

    def fileno(self):
        return self.f.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False


def _fill_disk_after(monkeypatch, room: int, on_call: int = 1):
    """The `on_call`-th file opened by atomic_write (os.fdopen) gets only `room` bytes."""
    real = os.fdopen
    calls = {"n": 0}

    def fdopen(fd, *a, **k):
        f = real(fd, *a, **k)
        calls["n"] += 1
        return _FullDisk(f, room) if calls["n"] == on_call else f

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("room", [0, 700, 50_000])
def test_disk_full_partway_keeps_the_previous_checkpoint(tmp_path, monkeypatch, room):
    path = tmp_path / "last.pt"
    ckpt.save(_state(1, 100_000), path)
    _fill_disk_after(monkeypatch, room)
    with pytest.raises(CheckpointError) as e:
        ckpt.save(_state(2, 100_000), path)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and "previous checkpoint is intact" in msg
    assert str(path) in msg
    assert ckpt.load(path)["i"] == 1
    assert _names(tmp_path) == ["last.pt"]  # the temp file is gone too


def test_failing_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save(_state(1, 10), path)

    def replace(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointError, match="cross-device"):
        ckpt.save(_state(2, 10), path)
    monkeypatch.undo()
    assert ckpt.load(path)["i"] == 1 and _names(tmp_path) == ["last.pt"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_checkpoint_dir(tmp_path):
    path = tmp_path / "ro" / "last.pt"
    ckpt.save(_state(1, 10), path)
    path.parent.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
            ckpt.save(_state(2, 10), path)
    finally:
        path.parent.chmod(0o755)
    assert ckpt.load(path)["i"] == 1


def test_train_whose_save_fails_exits_1_with_one_line_and_keeps_last_pt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_folder(tmp_path / "data", n_per_class=10)  # 16 train images: 4 steps
    out = tmp_path / "run"
    real_save = ckpt.save
    calls = {"n": 0}

    def third_save_hits_a_full_disk(state, path):
        calls["n"] += 1
        if calls["n"] == 3:
            with pytest.MonkeyPatch.context() as mp:
                _fill_disk_after(mp, 900)
                return real_save(state, path)
        return real_save(state, path)

    monkeypatch.setattr(ckpt, "save", third_save_hits_a_full_disk)
    code, _, err = run_main(train_argv(data, out, checkpoint_every=1, epochs=1), capsys)
    assert code == 1
    assert_one_line_error(err, "could not write checkpoint", "last.pt", "No space left on device")
    state = ckpt.load(out / "checkpoints" / "last.pt")
    assert state["step"] == 2  # the checkpoint of step 2, intact
    assert not [n for n in _names(out / "checkpoints") if n.endswith(".tmp")]


def test_resume_removes_the_temp_files_that_killed_saves_left(tmp_path):
    """After a kill -9 mid-save, `.last.pt.XXXX.tmp` stays beside last.pt (see case 1); the next
    start of that run deletes it and says so, and touches nothing else."""
    cfg = tiny_config(out=str(tmp_path))
    t = engine.Trainer(cfg, tiny_dataset(), tmp_path)
    t.ckpt_dir.mkdir(parents=True)
    t.save("last.pt")
    ck = t.ckpt_dir
    (ck / ".last.pt.k9x2ab.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    (ck / ".best.pt.zz01.tmp").write_bytes(b"")
    (ck / "notes.txt").write_text("mine")

    lines = []

    class Progress:
        def log(self, message):
            lines.append(message)

        def __getattr__(self, name):
            return lambda *a, **k: None

    engine.Trainer(cfg, tiny_dataset(), tmp_path, progress=Progress(), resume_state=ckpt.load(ck / "last.pt"))
    assert _names(ck) == ["last.pt", "notes.txt"]
    assert any("removed .last.pt.k9x2ab.tmp" in m for m in lines)
    assert any("removed .best.pt.zz01.tmp" in m for m in lines)
