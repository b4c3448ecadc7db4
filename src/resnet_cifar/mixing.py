"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch, and the loss on mixed labels.

As torchvision.transforms.v2.MixUp / CutMix: each image is mixed with its neighbour in the batch
(`batch.roll(1, 0)`), one lambda per batch drawn from Beta(alpha, alpha); CutMix pastes a box of
the neighbour and sets lambda to the share of the image that is kept. With both alphas set, each
batch gets one of the two with probability 1/2 (v2.RandomChoice). Under DDP each rank mixes its own
share of the global batch.

The draws of a batch come from its own generator named by (seed, epoch, batch index), so resume
is exact and CPU/GPU batches are identical. The labels are not turned into soft targets: the loss is
lam * loss(y) + (1 - lam) * loss(y_rolled), which equals the cross-entropy against the mixed
(and label-smoothed) soft targets. Train accuracy counts a prediction against the dominant label
(the one with weight >= 1/2).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from .errors import UsageError


@dataclass(frozen=True)
class Mixing:
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    def __post_init__(self):
        for name, a in (("--mixup-alpha", self.mixup_alpha), ("--cutmix-alpha", self.cutmix_alpha)):
            if not (math.isfinite(a) and a >= 0):
                raise UsageError(f"{name} must be a finite number >= 0 (0: off), got {a}")

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass(frozen=True)
class MixParams:
    kind: str                              # "mixup" or "cutmix"
    lam: float                             # weight of the batch's own labels
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # cutmix: x1, y1, x2, y2


@dataclass
class MixedTarget:
    """Labels of a mixed batch: image i is lam * y[i] + (1 - lam) * y_b[i]."""

    y: torch.Tensor
    y_b: torch.Tensor
    lam: float

    def dominant(self) -> torch.Tensor:
        return self.y if self.lam >= 0.5 else self.y_b

    def __len__(self) -> int:
        return len(self.y)

    def tensor_split(self, sections: int) -> list["MixedTarget"]:
        """Micro-batches of the labels (same lam), as Tensor.tensor_split splits the images."""
        return [MixedTarget(a, b, self.lam)
                for a, b in zip(self.y.tensor_split(sections), self.y_b.tensor_split(sections), strict=True)]


def draw(mixing: Mixing, seed: int, epoch: int, batch: int, h: int = 32, w: int = 32) -> MixParams:
    """The mixing of batch `batch` of `epoch`: a pure function of its arguments."""
    rng = random.Random(f"mix/{seed}/{epoch}/{batch}")  # str seeds hash with SHA-512: stable everywhere
    use_mixup = mixing.mixup_alpha > 0 and (mixing.cutmix_alpha == 0 or rng.random() < 0.5)
    if use_mixup:
        return MixParams("mixup", rng.betavariate(mixing.mixup_alpha, mixing.mixup_alpha))
    lam = rng.betavariate(mixing.cutmix_alpha, mixing.cutmix_alpha)
    r_x, r_y = rng.randrange(w), rng.randrange(h)
    r = 0.5 * math.sqrt(1.0 - lam)
    r_w, r_h = int(r * w), int(r * h)
    x1, y1, x2, y2 = max(r_x - r_w, 0), max(r_y - r_h, 0), min(r_x + r_w, w), min(r_y + r_h, h)
    return MixParams("cutmix", 1.0 - (x2 - x1) * (y2 - y1) / (w * h), (x1, y1, x2, y2))


def mix(x: torch.Tensor, y: torch.Tensor, p: MixParams) -> tuple[torch.Tensor, MixedTarget]:
    """Mix a batch of (normalised) images with their neighbours; the memory format is kept."""
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    rolled = x.roll(1, 0)
    if p.kind == "mixup":
        out = rolled.mul_(1.0 - p.lam).add_(x, alpha=p.lam)
    else:
        x1, y1, x2, y2 = p.box
        out = x.clone()
        out[..., y1:y2, x1:x2] = rolled[..., y1:y2, x1:x2]
    return out.contiguous(memory_format=fmt), MixedTarget(y, y.roll(1, 0), p.lam)


def mixed_loss(criterion, logits: torch.Tensor, target) -> torch.Tensor:
    """criterion(logits, labels) for plain labels; its lam-weighted sum for a MixedTarget."""
    if isinstance(target, MixedTarget):
        return target.lam * criterion(logits, target.y) + (1.0 - target.lam) * criterion(logits, target.y_b)
    return criterion(logits, target)


def hard_labels(target) -> torch.Tensor:
    """The labels train accuracy is counted against."""
    return target.dominant() if isinstance(target, MixedTarget) else target
