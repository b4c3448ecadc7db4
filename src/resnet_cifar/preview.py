"""A labelled grid of training images, exactly as the network sees them.

The images are the start of the first batch that `resnet-cifar train --seed SEED` trains on:
the validation images held out as the trainer does (stratified, seeded), then the training
loader's (`data.loader.DeviceLoader`) seeded shuffle for epoch 1, then, with `augment`, the
training augmentations (random crop from the image padded by 4 pixels with reflection, random
horizontal flip; `Augment()`'s defaults), then normalisation with the dataset's mean/std. Those float tensors are turned back into pixels with `denormalize`, the exact
inverse of `normalize` (the classic tutorial's `img / 2 + 0.5` only inverts Normalize(0.5, 0.5), not
the mean/std it actually trains with, so its previews have the wrong colours).

`render_grid` returns the layout (one cell per image: where its pixels and its label are) as data,
so tests can check the PNG cell by cell.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import Config
from .data.augment import StrongAugment
from .data.loader import NO_AUGMENT, Augment, DeviceLoader, denormalize, plan_epoch
from .errors import UsageError
from .mixing import Mixing, hard_labels

Log = Callable[[str], None] | None

BACKGROUND = (255, 255, 255)
DEFAULT_VAL_SIZE = Config.val_size   # train's default --val-size
TEXT = (20, 20, 20)


def preview_batch(train_x: torch.Tensor, train_y: torch.Tensor, mean, std, *, n: int = 64,
                  augment: bool | Augment = False, seed: int = 0, val_size: int = DEFAULT_VAL_SIZE,
                  epoch: int = 1, strong: StrongAugment | None = None,
                  mixing: Mixing | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first `n` images of epoch `epoch` of a training run with this seed and val_size.

    Returns (normalised float images (n,3,32,32), labels, indices into `train_x`). Like the
    trainer, the validation images are held out first (stratified, seeded; skipped when
    val_size >= the number of images), and the loader's seeded shuffle and augmentation plan for
    (seed, epoch) pick and transform the rest. Epochs count from 1, as in `train`. `augment` is
    True for the default training augmentations, False for none, or an explicit `Augment`;
    with it, `strong` (policy, random erasing) and `mixing` (mixup/cutmix) as train applies them.
    Labels are the dominant label of a mixed image. Mixing pairs each image with its neighbour in
    the batch: image 0 is paired as in training only when n is train's --batch-size.
    """
    from .data.split import train_val_split

    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    if val_size < 0:
        raise UsageError(f"--val-size must be 0 or more, got {val_size}")
    keep = torch.arange(len(train_x))
    if 0 < val_size < len(train_x):
        keep, _ = train_val_split(train_y, val_size, seed)
    x_all, y_all = train_x[keep], train_y[keep]
    n = min(n, len(x_all))
    aug = augment if isinstance(augment, Augment) else (Augment() if augment else NO_AUGMENT)
    # The whole epoch's plan is drawn up front, so the first n positions are the same for any
    # batch size: one batch of n is the start of the training run's first batch.
    on = aug is not NO_AUGMENT
    loader = DeviceLoader(x_all, y_all, batch_size=n, mean=mean, std=std, seed=seed,
                          augment=aug, shuffle=True, channels_last=False, device="cpu",
                          strong=strong if on else None, mixing=mixing if on else None)
    order = plan_epoch(len(x_all), seed, epoch, aug, shuffle=True).order[:n]
    _, x, y = next(iter(loader.batches(epoch)))
    return x, hard_labels(y), keep[order]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: bitmap font
        return ImageFont.load_default()


def _fit_text(draw, text: str, font, max_width: int) -> str:
    if draw.textlength(text, font=font) <= max_width:
        return text
    while len(text) > 1 and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return text + "…"


def render_grid(pixels: torch.Tensor, labels, classes: list[str], out: str | Path | None = None, *,
                scale: int = 4, cols: int | None = None, title: str | None = None,
                gap: int = 4, label_height: int = 16) -> dict[str, Any]:
    """Draw uint8 images (n,3,H,W) in a grid, each with its class name underneath.

    Returns the layout: image size, and for each cell its grid position, label, class name, the box
    of its (nearest-neighbour upscaled) pixels and the box of its caption. Writes a PNG to `out`
    (atomically) when given; the PIL image is returned under "image".
    """
    from PIL import Image, ImageDraw

    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected uint8 images (n,3,H,W), got {pixels.dtype} {tuple(pixels.shape)}")
    if scale < 1:
        raise UsageError(f"scale must be >= 1, got {scale}")
    n, _, h, w = pixels.shape
    labels = [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    cw, ch = w * scale, h * scale
    cell_w, cell_h = cw + gap, ch + label_height + gap
    title_h = label_height + gap if title else 0
    width = gap + cols * cell_w
    height = gap + title_h + rows * cell_h

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(8, label_height - 4))
    if title:
        draw.text((gap, gap), _fit_text(draw, title, font, width - 2 * gap), fill=TEXT, font=font)
    arr = pixels.permute(0, 2, 3, 1).contiguous().numpy()
    cells = []
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = gap + c * cell_w, gap + title_h + r * cell_h
        tile = np.repeat(np.repeat(arr[i], scale, axis=0), scale, axis=1)
        canvas.paste(Image.fromarray(tile, "RGB"), (x0, y0))
        name = classes[labels[i]] if 0 <= labels[i] < len(classes) else str(labels[i])
        caption = _fit_text(draw, name, font, cw)
        tx = x0 + (cw - draw.textlength(caption, font=font)) / 2
        draw.text((tx, y0 + ch + 1), caption, fill=TEXT, font=font)
        cells.append({"position": i, "row": r, "col": c, "label": labels[i], "class": name,
                      "caption": caption, "box": [x0, y0, x0 + cw, y0 + ch],
                      "text_box": [x0, y0 + ch, x0 + cw, y0 + ch + label_height]})
    layout = {"width": width, "height": height, "rows": rows, "cols": cols, "scale": scale,
              "cells": cells, "image": canvas, "out": None}
    if out is not None:
        from .fsutil import atomic_write, write_error

        out = Path(out)
        try:
            atomic_write(out, lambda f: canvas.save(f, format="PNG"))
        except OSError as e:
            raise write_error(out, e, "file") from None
        layout["out"] = str(out)
    return layout


def describe_augment(aug: Augment | None, strong: StrongAugment | None = None, mixing: Mixing | None = None) -> str:
    """One line: what the training augmentations of a preview are."""
    if aug is None:
        return "not augmented"
    parts = [f"crop {aug.crop_padding}px {aug.pad_mode} + {'flip' if aug.flip else 'no flip'}"]
    parts += strong.describe() if strong is not None else []
    if mixing is not None and mixing.enabled:
        parts += [f"{k} alpha {a:g}" for k, a in (("mixup", mixing.mixup_alpha), ("cutmix", mixing.cutmix_alpha)) if a]
    return "augmented: " + "; ".join(parts)


def preview_dataset(ds, *, n: int = 64, augment: bool | Augment = False, out: str | Path | None = "preview.png",
                    seed: int = 0, scale: int = 4, source: str | None = None,
                    val_size: int = DEFAULT_VAL_SIZE, strong: StrongAugment | None = None,
                    mixing: Mixing | None = None) -> dict[str, Any]:
    """Preview a loaded `data.Dataset` (`source`, e.g. its folder, goes into the title): see `make_preview`."""
    x, y, indices = preview_batch(ds.train_x, ds.train_y, ds.mean, ds.std, n=n, augment=augment,
                                  seed=seed, val_size=val_size, strong=strong, mixing=mixing)
    pixels = denormalize(x, ds.mean, ds.std)
    aug = augment if isinstance(augment, Augment) else (Augment() if augment else None)
    what = describe_augment(aug, strong, mixing)
    title = f"{ds.name}{f' ({source})' if source else ''}: {len(x)} training images as the network sees them ({what}), seed {seed}"
    layout = render_grid(pixels, y, ds.classes, out, scale=scale, title=title)
    for cell, idx in zip(layout["cells"], indices.tolist(), strict=True):
        cell["dataset_index"] = int(idx)
    layout.update(dataset=ds.name, n=len(x), augment=aug is not None, seed=seed, title=title, augmentation=what,
                  mean=list(ds.mean), std=list(ds.std), pixels=pixels)
    return layout


def make_preview(dataset: str, data_dir: str | Path, *, n: int = 64, augment: bool = False,
                 out: str | Path = "preview.png", seed: int = 0, download: bool = False,
                 scale: int = 4, val_size: int = DEFAULT_VAL_SIZE, log: Log = None,
                 strong: StrongAugment | None = None, mixing: Mixing | None = None) -> dict[str, Any]:
    """Load `dataset` from `data_dir` and write a labelled PNG grid of `n` training images.

    The images are the first `n` of the first training batch of `resnet-cifar train --seed SEED
    --val-size VAL_SIZE` (see `preview_batch`), with `augment` after the training augmentations
    (Augment() defaults), de-normalised. Returns the layout of `render_grid` plus dataset, n,
    augment, seed, and `pixels` (the uint8 images drawn); each cell has its `dataset_index`.
    """
    from .data import load_dataset

    ds = load_dataset(dataset, data_dir, download=download, log=log)
    return preview_dataset(ds, n=n, augment=augment, out=out, seed=seed, scale=scale,
                           source=str(data_dir), val_size=val_size, strong=strong, mixing=mixing)
