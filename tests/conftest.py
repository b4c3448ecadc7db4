"""Shared fixtures. Tests run on the CPU with one thread each, tiny models and a few dozen images."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("RESNET_CIFAR_NO_PROGRESS", "1")


def make_images(n_per_class: int, num_classes: int, seed: int = 0, signal: bool = True):
    """uint8 images (N,3,32,32) and labels with a learnable signal: each class has its own colour
    and a class-dependent bright patch, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    rng.shuffle(labels)
    x = rng.integers(0, 256, size=(len(labels), 3, 32, 32)).astype(np.float32) * 0.4
    if signal:
        for c in range(num_classes):
            idx = labels == c
            colour = np.array([(c * 70) % 256, (c * 130) % 256, (c * 200) % 256], np.float32)
            x[idx] += colour[None, :, None, None] * 0.6
            r, q = divmod(c, 4)
            x[idx, :, 4 + 6 * r:10 + 6 * r, 4 + 6 * q:10 + 6 * q] = 255
    return np.clip(x, 0, 255).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture
def synthetic_images():
    return make_images
