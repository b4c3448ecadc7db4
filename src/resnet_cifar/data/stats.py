"""Dataset statistics: counts per class and per-channel mean/std of the training split.

Mean/std are over all pixels of all training images scaled to [0, 1] (the convention in
constants.py). They are computed from per-channel histograms of the uint8 values, so the sums are
exact integers and memory stays bounded (chunks of images), whatever the dataset size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import constants
from . import Dataset

_CHUNK = 4096   # images per chunk: 4096 * 1024 values per channel, ~32 MB of int64 at most


def channel_mean_std(x: torch.Tensor) -> tuple[tuple[float, float, float],
                                                tuple[float, float, float]]:
    """Per-channel mean and (population) std of uint8 images (N, 3, H, W), pixels / 255."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {tuple(x.shape)} {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError("cannot compute mean/std of zero images")
    # numpy's bincount is ~3x faster than torch's reductions on one CPU thread here.
    xn = x.numpy() if x.device.type == "cpu" else x.cpu().numpy()
    counts = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, xn.shape[0], _CHUNK):
        chunk = xn[start:start + _CHUNK]
        for c in range(3):
            counts[c] += np.bincount(chunk[:, c].reshape(-1), minlength=256)
    values = np.arange(256, dtype=np.int64)
    n = int(counts[0].sum())
    means, stds = [], []
    for c in range(3):
        s1 = int((counts[c] * values).sum())           # exact: at most 255 * n
        s2 = int((counts[c] * values * values).sum())  # exact: at most 65025 * n
        mean = s1 / n
        var = max(s2 / n - mean * mean, 0.0)
        means.append(mean / 255.0)
        stds.append(math.sqrt(var) / 255.0)
    return tuple(means), tuple(stds)


def _per_class(y: torch.Tensor | None, classes: list[str]) -> dict[str, int] | None:
    if y is None:
        return None
    counts = torch.bincount(y, minlength=len(classes)).tolist()
    return {name: int(counts[i]) for i, name in enumerate(classes)}


def dataset_stats(ds: Dataset) -> dict:
    """Plain (JSON-serialisable) summary of a Dataset: counts, computed mean/std, constants in use."""
    mean, std = channel_mean_std(ds.train_x)
    return {
        "dataset": ds.name,
        "num_classes": ds.num_classes,
        "classes": list(ds.classes),
        "image_size": constants.IMAGE_SIZE,
        "train_images": int(ds.train_x.shape[0]),
        "test_images": None if ds.test_x is None else int(ds.test_x.shape[0]),
        "train_per_class": _per_class(ds.train_y, ds.classes),
        "test_per_class": _per_class(ds.test_y, ds.classes),
        "train_mean": [round(v, 6) for v in mean],      # computed now from the train split
        "train_std": [round(v, 6) for v in std],
        "mean_in_use": [float(v) for v in ds.mean],     # what normalisation will use
        "std_in_use": [float(v) for v in ds.std],
    }
