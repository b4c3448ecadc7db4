"""Calibration: does a 90%-confident prediction turn out right 90% of the time?

Expected calibration error, standard definition (Naeini et al. 2015; Guo et al. 2017, "On
Calibration of Modern Neural Networks"): confidence = the top softmax probability; split [0, 1]
into M equal-width bins (lo, hi]; ECE = sum over bins of (n_bin / N) * |accuracy_bin -
mean confidence_bin|. M = 15 as in Guo et al., which is what most CIFAR papers report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15


def reliability(probs, labels, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Per-bin counts, accuracy and mean confidence, plus ECE and MCE (largest bin gap).

    Empty bins have count 0 and None for accuracy/confidence; they add nothing to ECE.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    conf = probs.max(axis=1) if n else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels) if n else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" on the inner edges puts a confidence equal to an edge into the lower bin,
    # i.e. bins are (lo, hi]; confidence 0 (impossible for a softmax) lands in the first bin.
    which = np.searchsorted(edges[1:-1], conf, side="left")
    bins = []
    ece = 0.0
    mce = 0.0
    for b in range(n_bins):
        mask = which == b
        count = int(mask.sum())
        if count:
            acc = float(correct[mask].mean())
            mean_conf = float(conf[mask].mean())
            gap = abs(acc - mean_conf)
            ece += count / n * gap
            mce = max(mce, gap)
        else:
            acc = mean_conf = None
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                     "accuracy": acc, "confidence": mean_conf})
    return {
        "n_bins": n_bins,
        "bins": bins,
        "ece": float(ece) if n else None,
        "mce": float(mce) if n else None,
        "accuracy": float(correct.mean()) if n else None,
        "mean_confidence": float(conf.mean()) if n else None,
    }


def expected_calibration_error(probs, labels, n_bins: int = ECE_BINS) -> float | None:
    return reliability(probs, labels, n_bins)["ece"]
