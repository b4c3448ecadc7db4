"""Confusion matrix and what follows from it: per-class precision/recall/F1, the most confused
pairs, and the CSV form. Rows are true classes, columns predicted classes.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WorkError


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: cm[t, p] = images of true class t predicted as p."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def per_class_metrics(cm: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """One dict per class: support, precision, recall, F1, accuracy (one-vs-rest).

    Recall is the class's share of its own images classified correctly (what people usually mean
    by "per-class accuracy" on CIFAR); `accuracy` is the one-vs-rest binary accuracy, reported too
    because the brief asks for both. A class with no images or no predictions gets None, not 0,
    so an empty class does not look like a failed one.
    """
    cm = np.asarray(cm, dtype=np.int64)
    total = int(cm.sum())
    out = []
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        precision = _ratio(tp, predicted)
        recall = _ratio(tp, support)
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0
              else (0.0 if precision == 0 or recall == 0 else None))
        tn = total - support - predicted + tp
        out.append({"class": name, "index": i, "support": support, "predicted": predicted,
                    "precision": precision, "recall": recall, "f1": f1,
                    "accuracy": _ratio(tp + tn, total)})
    return out


def top_confused_pairs(cm: np.ndarray, classes: list[str], k: int = 10) -> list[dict[str, Any]]:
    """The k largest off-diagonal cells, largest first: true class, predicted class, count and the
    share of the true class's images that went there."""
    cm = np.asarray(cm, dtype=np.int64)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")
    out = []
    for flat in order[:k]:
        t, p = divmod(int(flat), cm.shape[1])
        count = int(off[t, p])
        if count == 0:
            break
        out.append({"true": classes[t], "pred": classes[p], "true_index": t, "pred_index": p,
                    "count": count, "share_of_true": _ratio(count, int(cm[t].sum()))})
    return out


def write_confusion_csv(cm: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """CxC counts with a header row (",class0,class1,...") and class names in the first column."""
    p = Path(path)
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, np.asarray(cm), strict=True):
            w.writerow([name, *(int(v) for v in row)])
    return p


def read_confusion_csv(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Inverse of write_confusion_csv: (counts, class names)."""
    p = Path(path)
    with p.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise WorkError(f"{p} is empty; rebuild the report")
    classes = rows[0][1:]
    try:
        cm = np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)
    except ValueError:
        raise WorkError(f"{p} holds a non-integer count; rebuild the report") from None
    if cm.shape != (len(classes), len(classes)):
        raise WorkError(f"{p} is not square ({cm.shape}); rebuild the report")
    return cm, classes
