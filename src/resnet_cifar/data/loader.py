"""Device-resident batches: the whole uint8 dataset lives on the training device.

Like the CIFAR speedruns (airbench), there are no worker processes and no PIL in the loop: every
step takes a slice of a seeded permutation, crops/flips it with batched tensor ops, converts and
normalises on the device. The same code runs on CPU and CUDA.

Every random choice of an epoch (order, crop offsets, flips, cutout centres) is drawn at the start
of the epoch on the CPU from a generator seeded with (seed, epoch); the policy and random erasing
(data/augment.py) likewise, from their own generator; mixup/cutmix per batch from (seed, epoch,
batch index) (mixing.py). So a position in training is just (epoch, batch index): resuming
mid-epoch needs no loader state, the batches are identical on CPU and GPU (the policy's
float ops up to rounding), and the global order does not depend on how many processes share it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from ..compute import images_per_epoch
from ..mixing import Mixing, draw, mix
from .augment import StrongAugment, after_normalize, before_normalize, plan_strong


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 4
    pad_mode: str = "reflect"   # "reflect" or "zeros"
    flip: bool = True
    cutout: int = 0             # side of the zeroed square (after normalisation: zero = the mean)
    alt_flip: bool = False      # with flip: alternating flips (data/altflip.py) instead of independent ones


NO_AUGMENT = Augment(crop_padding=0, flip=False, cutout=0)


@dataclass
class EpochPlan:
    order: torch.Tensor     # (N,) permutation
    dx: torch.Tensor        # (N,) crop offsets in [0, 2*pad]
    dy: torch.Tensor
    flip: torch.Tensor      # (N,) bool
    cy: torch.Tensor        # (N,) cutout centres in [0, 32)
    cx: torch.Tensor


def epoch_seed(seed: int, epoch: int) -> int:
    # Distinct, reproducible stream per (seed, epoch); fits a 63-bit generator seed.
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1)


def plan_epoch(n: int, seed: int, epoch: int, aug: Augment, shuffle: bool = True) -> EpochPlan:
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    span = 2 * aug.crop_padding + 1
    plan = EpochPlan(
        order=order,
        dx=torch.randint(0, span, (n,), generator=g),
        dy=torch.randint(0, span, (n,), generator=g),
        flip=torch.rand(n, generator=g) < 0.5 if aug.flip else torch.zeros(n, dtype=torch.bool),
        cy=torch.randint(0, 32, (n,), generator=g),
        cx=torch.randint(0, 32, (n,), generator=g),
    )
    if aug.flip and aug.alt_flip:  # the same draws (crops, cutout unchanged), the flips alternated per image
        from .altflip import alternating_flips

        plan.flip = alternating_flips(order, seed, epoch)
    return plan


def random_crop(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, padding: int, pad_mode: str) -> torch.Tensor:
    """Per-sample crop of the padded images at offsets (dy, dx), as two batched gathers."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    if pad_mode == "reflect":
        # reflect padding is not implemented for uint8: pad in a wide-enough type, cast back (exact).
        padded = F.pad(x.to(torch.int16 if x.device.type == "cpu" else torch.float16),
                       (padding,) * 4, mode="reflect").to(x.dtype)
    else:
        padded = F.pad(x, (padding,) * 4)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return out.gather(3, cols)


def random_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a size x size square centred at (cy, cx) in each image (clipped at the border)."""
    if size == 0:
        return x
    h, w = x.shape[-2:]
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    lo = size // 2
    inside = ((ys >= cy.view(-1, 1, 1) - lo) & (ys < cy.view(-1, 1, 1) - lo + size)
              & (xs >= cx.view(-1, 1, 1) - lo) & (xs < cx.view(-1, 1, 1) - lo + size))
    # clone + in-place fill keeps the memory format (out-of-place masked_fill returns NCHW-contiguous,
    # which silently dropped channels_last for every batch when cutout was on).
    return x.clone().masked_fill_(inside.unsqueeze(1), 0)


@functools.lru_cache(maxsize=32)
def _affine(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """mean * 255 and 1 / (std * 255) on `device`, made once: a tensor built from host values for
    every batch is a copy that waits for the device (two host-device syncs a step on CUDA)."""
    mean_t = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    inv_std = 1.0 / (torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1) * 255)
    return mean_t, inv_std


def normalize(x: torch.Tensor, mean, std, channels_last: bool = True) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float32, (x/255 - mean) / std, done as one multiply-add."""
    mean_t, inv_std = _affine(tuple(float(m) for m in mean), tuple(float(s) for s in std), x.device)
    out = (x.float() - mean_t) * inv_std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of `normalize`, back to uint8 (rounded): what the network saw, as pixels."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return ((x.float() * std_t + mean_t) * 255).round().clamp(0, 255).to(torch.uint8)


class DeviceLoader:
    """Batches of (normalised float images, int64 labels) from uint8 tensors on one device.

    batch_size is the *global* batch; with world_size > 1 each rank gets its contiguous share of
    every global batch (same global order and augmentation for any world size).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, mean, std,
                 seed: int = 0, augment: Augment = NO_AUGMENT, shuffle: bool = True,
                 channels_last: bool = True, rank: int = 0, world_size: int = 1,
                 device: torch.device | str | None = None, strong: StrongAugment | None = None,
                 mixing: Mixing | None = None, drop_last: bool = False):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected uint8 images (N,3,H,W), got {x.dtype} {tuple(x.shape)}")
        device = torch.device(device) if device is not None else x.device
        self.x = x.to(device)
        self.y = y.to(device)
        self.batch_size = batch_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.augment = augment
        self.shuffle = shuffle
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.device = device
        # drop_last: the epoch's order is a fresh permutation, so the images left out differ every epoch
        if drop_last and len(self.x) < batch_size:
            raise ValueError(f"drop_last with {len(self.x)} images and batch {batch_size} leaves no batch")
        self.drop_last = drop_last
        # Policy / random erasing (data/augment.py) and mixup/cutmix (mixing.py): None when off,
        # so the default path does no extra work.
        self.strong = strong if strong is not None and strong.enabled else None
        self.mixing = mixing if mixing is not None and mixing.enabled else None

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.x) // self.batch_size
        return -(-len(self.x) // self.batch_size)  # ceil: the last, smaller batch is kept

    @property
    def num_images(self) -> int:
        return len(self.x)

    @property
    def images_per_epoch(self) -> int:
        """Images one epoch trains on (all ranks): num_images, less the dropped remainder under drop_last."""
        return images_per_epoch(len(self.x), self.batch_size, self.drop_last)

    def _positions(self, b: int, device) -> torch.Tensor:
        """Epoch positions of batch b (this rank's contiguous share of it)."""
        pos = torch.arange(b * self.batch_size, min((b + 1) * self.batch_size, len(self.x)), device=device)
        return pos.tensor_split(self.world_size)[self.rank] if self.world_size > 1 else pos

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (batch_index, images, labels) for `epoch`, starting at batch `start`.

        With mixup/cutmix on, labels are a `mixing.MixedTarget` (both labels and the weight)."""
        plan = plan_epoch(len(self.x), self.seed, epoch, self.augment, self.shuffle)
        a = self.augment
        to_dev = {k: getattr(plan, k).to(self.device, non_blocking=True) for k in ("order", "dx", "dy", "flip", "cy", "cx")}
        strong = (plan_strong(len(self.x), epoch_seed(self.seed, epoch), self.strong, self.device, *self.x.shape[-2:])
                  if self.strong is not None else None)
        for b in range(start, len(self)):
            pos = self._positions(b, self.device)
            idx = to_dev["order"][pos]
            x = self.x[idx]
            x = random_crop(x, to_dev["dx"][pos], to_dev["dy"][pos], a.crop_padding, a.pad_mode)
            x = random_flip(x, to_dev["flip"][pos]) if a.flip else x
            if strong is not None:
                x = before_normalize(x, strong, pos, self._positions(b, "cpu"))
            x = normalize(x, self.mean, self.std, self.channels_last)
            x = cutout(x, to_dev["cy"][pos], to_dev["cx"][pos], a.cutout)
            if strong is not None:
                x = after_normalize(x, strong, pos)
            y = self.y[idx]
            if self.mixing is not None:
                x, y = mix(x, y, draw(self.mixing, self.seed, epoch, b, *x.shape[-2:]))
            yield b, x, y

    def __iter__(self):
        for _, x, y in self.batches(0):
            yield x, y
