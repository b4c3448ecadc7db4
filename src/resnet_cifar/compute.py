"""Compute counting: FLOPs of training and evaluation from a model's forward MACs.

Convention (the CIFAR speedruns' and the issue's): a training image costs forward MACs x 2 FLOPs
per MAC x 3 (forward, backward to the inputs, backward to the weights); an evaluation view costs
forward MACs x 2. MACs are those of the Conv2d and Linear layers, counted by `summary` (one
counter for the project). A frozen layer (the whitening conv) is counted like any other layer:
the convention does not look inside the backward pass. Evaluation passes are counted separately
and never enter the training figure.
"""

from __future__ import annotations

import torch.nn as nn

FLOPS_PER_MAC = 2
TRAIN_PASSES = 3     # forward + two backward matmuls of the same size


def forward_macs(model: nn.Module) -> int:
    """Conv2d + Linear multiply-accumulates of one 32x32 image (summary's counter)."""
    from .summary import summarize_model

    return int(summarize_model(model)["macs_per_image"])


def train_flops(macs_per_image: int, images_seen: int) -> int:
    """Training FLOPs: forward MACs x 2 x 3 x training images seen."""
    return FLOPS_PER_MAC * TRAIN_PASSES * int(macs_per_image) * int(images_seen)


def eval_flops(macs_per_image: int, images: int, views: int = 1) -> int:
    """Evaluation FLOPs: forward MACs x 2 x images x views per image (TTA views)."""
    return FLOPS_PER_MAC * int(macs_per_image) * int(images) * int(views)


def images_seen(num_train: int, epochs: float) -> int:
    """Training images seen in `epochs` passes over `num_train` images (the loader keeps the last batch)."""
    return int(round(num_train * epochs))


def images_per_epoch(num_train: int, batch_size: int, drop_last: bool) -> int:
    """Images one epoch trains on: all of them, or under --drop-last only the full batches'."""
    return num_train // batch_size * batch_size if drop_last else num_train


def estimate_seconds(flops: float, flops_per_second: float) -> float:
    if not flops_per_second > 0:
        raise ValueError(f"flops_per_second must be > 0, got {flops_per_second}")
    return flops / flops_per_second


def pflop(flops: float) -> float:
    return flops / 1e15
