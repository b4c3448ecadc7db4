"""torchrun end to end on the CPU: a 2-process run whose rank is killed, restarted by torchrun and
resumed, then checked against a single-process evaluation of its checkpoints.

Each test is bounded by a timeout and kills what it started.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import write_png_folder
from resnet_cifar import checkpoint as ckpt
from resnet_cifar import engine
from resnet_cifar.config import from_dict
from resnet_cifar.data import load_dataset

PY = Path(sys.executable)
TORCHRUN = PY.parent / "torchrun"


# --------------------------------------------------------------------------------- torchrun
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _worker_pid(agent_pid: int, local_rank: int) -> int | None:
    for pid in _descendants(agent_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in env and any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in env):
            return pid
    return None


def _stop_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    pids = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        pass
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.is_file() or not Path("/proc/self/environ").exists(),
                    reason="needs torchrun beside the interpreter and Linux /proc")
def test_torchrun_run_survives_a_killed_rank_and_matches_single_process_evaluation(tmp_path):
    """torchrun --standalone --nproc-per-node 2 --max-restarts 1: rank 1 is SIGKILLed after the first
    checkpoint; the job resumes from checkpoints/last.pt and finishes. Rank 0 alone wrote one run
    directory, and its validation numbers equal a one-process evaluation of the saved weights."""
    data_dir = write_png_folder(tmp_path / "data", n_per_class=16, num_classes=3, test_per_class=4)
    epochs = 12
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
           "-m", "resnet_cifar", "train", "--dataset", "folder", "--data-dir", str(data_dir),
           "--model", "resnet20", "--width", "0.25", "--epochs", str(epochs), "--batch-size", "16",
           "--val-size", "16", "--device", "cpu", "--scheduler", "cosine", "--no-report", "--out", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RESNET_CIFAR_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "torchrun.log", "w+")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    run = tmp_path / "run"
    killed_at = None
    try:
        deadline = time.monotonic() + 400
        while proc.poll() is None and time.monotonic() < deadline:
            if killed_at is None and (run / "checkpoints" / "last.pt").is_file():
                pid = _worker_pid(proc.pid, 1)
                if pid is not None and not (run / "results.json").exists():
                    killed_at = ckpt.load(run / "checkpoints" / "last.pt")["epoch"]
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        rc = proc.poll()
    finally:
        _stop_tree(proc)
    log.seek(0)
    out = log.read()
    assert rc == 0, out[-4000:]
    assert killed_at is not None and killed_at < epochs, out[-4000:]
    assert "torchrun restart 1: resuming" in out, out[-4000:]

    # rank 0 wrote one run directory; nothing else appeared (no second run dir, no stray runs/)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run", "torchrun.log"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))   # resumed, not restarted
    results = json.loads((run / "results.json").read_text())
    assert (results["world_size"], results["global_batch"], results["epochs"]) == (2, 16, epochs)

    # the validation numbers are those of the saved weights, evaluated by one process
    last = ckpt.load(run / "checkpoints" / "last.pt")
    assert not any(k.startswith("module.") for k in last["model"])
    cfg = from_dict(last["config"])
    data = load_dataset("folder", data_dir)
    splits = engine.make_splits(cfg, data, torch.device("cpu"))

    def val_of(state):
        model = ckpt.build_from_checkpoint(state, "cpu", channels_last=cfg.channels_last)
        return engine.evaluate(model, splits.val_x, splits.val_y, mean=data.mean, std=data.std,
                               batch_size=cfg.eval_batch_size, channels_last=cfg.channels_last,
                               num_classes=data.num_classes)

    val = val_of(last)
    assert val["acc"] == pytest.approx(float(rows[-1]["val_acc"]), abs=1e-9)
    assert val["loss"] == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-5)
    best = ckpt.load(run / "checkpoints" / "best.pt")
    assert val_of(best)["acc"] == pytest.approx(results["best_val_acc"], abs=1e-9)
