"""Synthetic run directories for the report's tests (no training, no dataset on disk)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import yaml

from helpers import make_images

HEADER = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "swa_val_acc",
          "ema_val_acc", "epoch_seconds", "images_per_s", "elapsed_seconds"]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "<b>truck</b>"]


def make_rows(epochs, **columns):
    """Rows of metrics.csv: each column a function epoch -> value (None = empty cell)."""
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "epoch_seconds": 10.0, "images_per_s": 4500.0, "elapsed_seconds": 10.0 * e}
        for name in HEADER[1:8]:
            f = columns.get(name)
            row[name] = f(e) if f else None
        rows.append(row)
    return rows


def healthy_rows(epochs=40):
    """The tutorial's shape: lr 0.1, cut to 0.01 at 20 and 0.001 at 32 once validation plateaued;
    each cut brings a jump, the train/val gap stays small."""
    def lr(e):
        return 0.1 if e < 20 else 0.01 if e < 32 else 0.001

    def val_acc(e):
        return 0.5 + 0.35 * (1 - math.exp(-e / 3)) if e < 21 else 0.92 + 0.012 * (e >= 33) + 0.0002 * e

    def train_loss(e):
        return 2.0 * math.exp(-e / 5) + 0.6 if e < 21 else 0.5 - 0.004 * (e - 20)

    return make_rows(
        epochs, lr=lr, train_loss=train_loss, val_loss=lambda e: train_loss(e) + 0.05,
        train_acc=lambda e: val_acc(e) - 0.01 if e < 21 else 0.95 + 0.02 * (e >= 33),
        val_acc=val_acc, ema_val_acc=lambda e: None if e < 3 else val_acc(e) + 0.002)


def write_metrics_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEADER)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in HEADER})


def predictions(n_per_class=20, num_classes=10, correct=0.9, seed=0):
    """probs/labels with a known share of correct answers, confident when right, unsure when wrong."""
    _, labels = make_images(n_per_class, num_classes, seed=seed)
    rng = np.random.default_rng(seed)
    n = len(labels)
    probs = rng.dirichlet(np.full(num_classes, 0.5), size=n).astype(np.float32)
    right = rng.permutation(n) < round(correct * n)
    for i in range(n):
        if right[i]:
            probs[i] = 0.05 / (num_classes - 1)
            probs[i, labels[i]] = 0.95
        elif probs[i].argmax() == labels[i]:
            probs[i] = np.roll(probs[i], 1)  # make it a mistake
    return probs, labels


def make_run_dir(path, *, rows=None, with_predictions=True, results=None, config=None,
                 classes=CLASSES, correct=0.9):
    """A run directory as the trainer writes it. Returns (path, images aligned with predictions)."""
    path.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(path / "metrics.csv", healthy_rows() if rows is None else rows)
    images = None
    acc = None
    if with_predictions:
        probs, labels = predictions(num_classes=len(classes), correct=correct)
        images, _ = make_images(20, len(classes))
        np.savez(path / "predictions.npz", probs=probs, labels=labels,
                 indices=np.arange(len(labels), dtype=np.int64), split=np.array("test"))
        acc = float((probs.argmax(1) == labels).mean())
    acc = acc if acc is not None else 0.931
    res = {"test_acc": acc, "test_loss": 0.31, "test_acc_tta": None,
           "eval_split": "test", "best_val_acc": acc + 0.004, "best_epoch": 38, "selected": "ema",
           "candidates": {"raw": acc, "swa": None, "ema": acc + 0.004}, "epochs": 40,
           "train_seconds": 400.0, "model": "resnet18", "params": 11173962, "device": "cuda",
           "torch_version": "2.14.1", "seed": 0, "dataset": "cifar10", "classes": classes,
           "time_to_acc": {"0.90": 210.0, "0.93": 390.0, "0.94": None, "0.95": None},
           "env": {"python": "3.11", "gpu": "<script>alert(1)</script>"}}
    res.update(results or {})
    (path / "results.json").write_text(json.dumps(res))
    cfg = {"dataset": "cifar10", "data_dir": str(path / "no-data-here"), "model": "resnet18",
           "epochs": 40, "batch_size": 128, "lr": 0.1, "optimizer": "sgd", "scheduler": "plateau",
           "plateau_patience": 10, "val_size": 5000, "seed": 0, "swa": False, "ema": 0.999,
           "amp": "auto", "label_smoothing": 0.1, "tta": False, "crop_padding": 4, "flip": True,
           "out": "<i>runs/x</i>"}
    cfg.update(config or {})
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "checkpoints").mkdir(exist_ok=True)
    (path / "checkpoints" / "best.pt").write_bytes(b"not a real checkpoint")
    return path, images
