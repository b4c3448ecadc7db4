"""Which eval images to show: the most confident mistakes and the least confident correct answers.

Both return rows of predictions.npz (positions, not dataset indices) with what the grid captions
need, so the grid drawing never decides what counts as a mistake.
"""

from __future__ import annotations

from typing import Any

import numpy as np

GRID_IMAGES = 24  # 6 rows of 4: enough to see a pattern, small enough to read on a phone


def _rows(probs, labels, mask, order_key, k: int) -> list[dict[str, Any]]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    candidates = np.flatnonzero(mask(pred, labels))
    # stable sort on the key, so ties keep the eval order and the result is reproducible
    order = candidates[np.argsort(order_key(conf[candidates]), kind="stable")][:k]
    return [{"row": int(i), "true": int(labels[i]), "pred": int(pred[i]),
             "confidence": float(conf[i]), "true_prob": float(probs[i, labels[i]])}
            for i in order]


def most_confident_mistakes(probs, labels, k: int = GRID_IMAGES) -> list[dict[str, Any]]:
    """Misclassified rows, highest confidence in the wrong class first."""
    return _rows(probs, labels, lambda p, y: p != y, lambda c: -c, k)


def least_confident_correct(probs, labels, k: int = GRID_IMAGES) -> list[dict[str, Any]]:
    """Correctly classified rows, lowest confidence first: the ones that nearly went wrong."""
    return _rows(probs, labels, lambda p, y: p == y, lambda c: c, k)
