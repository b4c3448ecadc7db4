"""A checkpoint written by the engine before it became the `engine/` package still evaluates and
resumes, and the resumed run ends where an uninterrupted run of the current code ends.

The fixture's first epoch ran on another CPU, whose float kernels round differently in the last bits
(an Intel Xeon ends epoch 2 within 1e-6 of an AMD EPYC; measured in session 11), so the comparison allows
that rounding: `assert_same_tensors(..., atol=1e-5)` allows 1e-5 on each float (no relative part), 100x below the least that epoch 2
moves any tensor (1.1e-3); integer tensors and the metrics (to 1e-5 relative) are compared as well. A
resume that lost the optimizer's momentum (zeroed in the fixture, a check made once) leaves most tensors
outside it. Bitwise resume on one machine: tests/test_engine.py, test_resume_is_bitwise_equal_to_an_uninterrupted_run.

tests/fixtures/old_last.pt (see tests/fixtures/README.md): ResNet-20 x0.125, 3 classes, EMA 0.9,
stopped after epoch 1 of 2. Its config names `data_dir: data`, rebuilt here in a temp directory.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import write_png_folder
from reliability_helpers import assert_same_tensors
from resnet_cifar import checkpoint as ckpt
from resnet_cifar.cli import main
from resnet_cifar.config import from_dict
from resnet_cifar.data import load_dataset
from resnet_cifar.engine import fit

OLD = Path(__file__).parent / "fixtures" / "old_last.pt"


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    # The fixture was trained on one thread; CPU convolutions round differently on two, so the
    # comparison below pins one thread (OMP_NUM_THREADS keeps `configure_threads` off it).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    yield from _old_run(tmp_path)
    torch.set_num_threads(threads)


def _old_run(tmp_path):
    write_png_folder(tmp_path / "data", n_per_class=8, num_classes=3, test_per_class=2)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(OLD, tmp_path / "run" / "checkpoints" / "last.pt")
    # best.pt of that run held epoch 1's raw weights (its `best`: epoch 1, raw), which are last.pt's:
    # only last.pt is kept in the repository.
    assert ckpt.load(OLD)["best"] == {"val_acc": pytest.approx(2 / 3), "epoch": 1, "source": "raw"}
    shutil.copy(OLD, tmp_path / "run" / "checkpoints" / "best.pt")
    yield tmp_path / "run"


def test_the_old_checkpoint_evaluates_to_the_accuracy_it_recorded(old_run, capsys):
    state = ckpt.load(old_run / "checkpoints" / "last.pt")
    recorded = state["history"][-1]["val_acc"]    # epoch 1's raw weights, those in last.pt
    assert main(["evaluate", str(old_run / "checkpoints" / "last.pt"), "--split", "val", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["acc"] == pytest.approx(recorded) and ev["n"] == 6


def test_the_old_checkpoint_resumes_to_the_same_weights_as_an_uninterrupted_run(old_run, capsys):
    assert main(["train", "--resume", str(old_run)]) == 0
    rows = list(csv.DictReader(open(old_run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    results = json.loads((old_run / "results.json").read_text())
    assert results["epochs"] == 2 and results["test_acc"] is not None
    # the same config, trained from scratch by the current code
    cfg = from_dict(ckpt.load(OLD)["config"])
    fresh = old_run.parent / "fresh"
    fit(cfg, load_dataset("folder", "data"), fresh)
    a = torch.load(old_run / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(fresh / "checkpoints" / "last.pt", weights_only=True)
    assert_same_tensors(a["model"], b["model"], atol=1e-5)
    assert_same_tensors(a["ema"], b["ema"], atol=1e-5)
    first = list(csv.DictReader(open(fresh / "metrics.csv")))
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc")
    assert [[float(r[k]) for k in keys] for r in rows] == [pytest.approx([float(r[k]) for k in keys], rel=1e-5)
                                                           for r in first]
