"""What a run writes besides checkpoints: metrics.csv, TensorBoard scalars, results.json and
predictions.npz (the test split, evaluated once on the chosen weights). Every file is written
atomically (fsutil); a full disk is one WorkError line and leaves the previous file intact."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import fsutil
from ..compute import eval_flops, train_flops
from ..tta import TTA_VIEWS

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "swa_val_acc",
                 "ema_val_acc", "epoch_seconds", "images_per_s", "elapsed_seconds", "train_flops"]


def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})
    fsutil.write_text(path, buf.getvalue(), what="metrics.csv")


def write_json(path: Path, data: dict) -> None:
    fsutil.write_text(path, json.dumps(data, indent=2), what=path.name)


class Scalars:
    """TensorBoard events in RUN_DIR/tensorboard when tensorboard is installed (an optional extra)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def add(self, row: dict) -> None:
        if self.writer is None:
            return
        for k in METRIC_FIELDS[1:]:
            if row.get(k) is not None:
                self.writer.add_scalar(k, row[k], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def final_evaluation(model: torch.nn.Module, evaluator, splits, *, tta: bool, classes,
                     tta_mode: str = "flip") -> dict[str, Any]:
    """The test split evaluated once (the validation split when there is no test split), + flip TTA."""
    eval_split, x, y = "test", splits.test_x, splits.test_y
    if x is None:
        eval_split, x, y = "val", splits.val_x, splits.val_y
    test = evaluator(model, x, y, return_probs=True) if x is not None else None
    tta_r = evaluator(model, x, y, tta=True, tta_mode=tta_mode) if (x is not None and tta) else None
    is_test = eval_split == "test" and test is not None
    out = {
        "test_acc": test["acc"] if is_test else None,
        "test_loss": test["loss"] if is_test else None,
        "test_top5": test["top5"] if is_test else None,
        "test_acc_tta": tta_r["acc"] if (is_test and tta_r) else None,
        "eval_split": eval_split if test is not None else None,
        "eval_acc": test["acc"] if test else None, "eval_loss": test["loss"] if test else None,
        "eval_acc_tta": tta_r["acc"] if tta_r else None,
        "per_class_acc": dict(zip(classes, test["per_class_acc"], strict=True)) if test else None,
    }
    predictions = None
    if test is not None:
        idx = torch.arange(len(y)) if eval_split == "test" else splits.val_idx
        predictions = dict(probs=test["probs"], labels=y.cpu().numpy(), indices=idx.cpu().numpy().astype(np.int64),
                           split=np.array(eval_split))
    return {"results": out, "predictions": predictions}


def eval_images(cfg, splits, epochs: int) -> int:
    """Images through an evaluation forward pass in a run of `epochs`: each epoch's validation of the
    raw (and EMA) weights; SWA's BN pass over the training images and its validation; the test split
    once, plus each TTA view (tta.TTA_VIEWS)."""
    n_val = 0 if splits.val_y is None else len(splits.val_y)
    final = splits.test_y if splits.test_y is not None else splits.val_y
    views = 1 + (TTA_VIEWS[cfg.tta_mode] if cfg.tta else 0)
    swa = len(splits.train_y) + n_val if cfg.swa else 0
    return n_val * epochs * (2 if cfg.ema > 0 else 1) + swa + (0 if final is None else len(final) * views)


def compute_facts(macs: int, cfg, splits, state, images_per_epoch: int) -> dict[str, Any]:
    """results.json's compute: training FLOPs (MACs x 2 x 3 x images seen: `images_per_epoch`, less than
    the training split under --drop-last), the training FLOPs at which each accuracy was first reached,
    and the evaluation FLOPs apart."""
    return {"train_flops": train_flops(macs, images_per_epoch * state.epoch),
            "flops_to_acc": dict(state.flops_to_acc),
            "eval_flops": eval_flops(macs, eval_images(cfg, splits, state.epoch)), "macs_per_image": macs}


def empty_evaluation() -> dict[str, Any]:
    """What a rank other than 0 reports (only rank 0 evaluates and writes)."""
    keys = ("test_acc", "test_loss", "test_top5", "test_acc_tta", "eval_split", "eval_acc", "eval_loss",
            "eval_acc_tta", "per_class_acc")
    return {"results": dict.fromkeys(keys), "predictions": None}


def write_predictions(path: Path, predictions: dict | None) -> None:
    if predictions is not None:
        fsutil.write_npz(path, what="predictions.npz", **predictions)
