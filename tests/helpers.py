"""Helpers the tests share: synthetic images with a learnable signal, on-disk image folders, a tiny
in-memory dataset and the flags of a tiny CPU run. Imported as `from helpers import ...`; the
fixtures built on them are in conftest.py."""

from __future__ import annotations

import numpy as np
import torch

from resnet_cifar.progress import Silent


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


def write_png_folder(root, n_per_class: int = 8, num_classes: int = 3, test_per_class: int = 0, seed: int = 0):
    """An image-folder dataset on disk: root/train/<class>/*.png (+ root/test/...)."""
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    names = [f"class{c}" for c in range(num_classes)]
    for split, n, s in (("train", n_per_class, seed), ("test", test_per_class, seed + 1)):
        if n == 0:
            continue
        x, y = make_images(n, num_classes, seed=s)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            d = root / split / names[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i:04d}.png")
    return root


def tiny_dataset(n_per_class: int = 40, num_classes: int = 4, test_per_class: int = 10):
    from resnet_cifar.data import Dataset

    x, y = make_images(n_per_class, num_classes)
    xt, yt = make_images(test_per_class, num_classes, seed=1) if test_per_class else (None, None)
    t = lambda a: None if a is None else torch.from_numpy(a)
    return Dataset("folder", t(x), t(y), t(xt), t(yt), [f"c{i}" for i in range(num_classes)],
                   (0.45, 0.45, 0.45), (0.25, 0.25, 0.25))


TINY = dict(model="resnet20", width=0.25, dataset="folder", device="cpu", epochs=2, batch_size=32,
            val_size=32, lr=0.05, scheduler="cosine", swa=False, ema=0.0, report=False, compile="off")


class CrashAfter(Silent):
    """A progress sink that raises after `steps` training steps: a crash mid-run, for resume tests."""

    def __init__(self, steps):
        self.steps, self.seen = steps, 0

    def step(self, images, sums):
        self.seen += 1
        if self.seen == self.steps:
            raise RuntimeError("crash")
