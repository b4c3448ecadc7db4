"""Random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020), per image, planned.

torchvision.transforms.v2.RandomErasing's parameters (scale (0.02, 0.33) of the area, aspect ratio
log-uniform in (0.3, 3.3), up to 10 tries for a rectangle that fits, value 0 on the normalised
image, i.e. the mean), drawn for all images of an epoch at once from a generator: erased with
probability p, the first of its 10 tries that fits, else not erased (as torchvision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCALE = (0.02, 0.33)
RATIO = (0.3, 3.3)
TRIES = 10


@dataclass
class ErasePlan:
    top: torch.Tensor     # (N,) int64
    left: torch.Tensor
    height: torch.Tensor  # 0: this image is not erased
    width: torch.Tensor

    def to(self, device) -> "ErasePlan":
        return ErasePlan(*(t.to(device, non_blocking=True) for t in (self.top, self.left, self.height, self.width)))


def plan_erasing(n: int, p: float, g: torch.Generator, h: int = 32, w: int = 32) -> ErasePlan:
    apply = torch.rand(n, generator=g) < p
    area = h * w * (SCALE[0] + (SCALE[1] - SCALE[0]) * torch.rand(n, TRIES, generator=g, dtype=torch.float64))
    lo, hi = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, TRIES, generator=g, dtype=torch.float64))
    eh = torch.sqrt(area * aspect).round().long()  # int(round(...)): half to even, as torch.round
    ew = torch.sqrt(area / aspect).round().long()
    fits = (eh < h) & (ew < w)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits
    ok = apply & fits.any(1)
    eh = torch.where(ok, eh.gather(1, first).squeeze(1), 0)
    ew = torch.where(ok, ew.gather(1, first).squeeze(1), 0)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    top = (u[:, 0] * (h - eh + 1)).floor().long()
    left = (u[:, 1] * (w - ew + 1)).floor().long()
    return ErasePlan(top, left, eh, ew)


def erase(x: torch.Tensor, plan: ErasePlan) -> torch.Tensor:
    """Set each image's planned rectangle to 0 (the mean, on normalised images)."""
    h, w = x.shape[-2:]
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = plan.top.view(-1, 1, 1), plan.left.view(-1, 1, 1)
    inside = ((ys >= top) & (ys < top + plan.height.view(-1, 1, 1))
              & (xs >= left) & (xs < left + plan.width.view(-1, 1, 1)))
    return x.clone().masked_fill_(inside.unsqueeze(1), 0)  # clone + in place keeps channels_last
