"""The strong augmentations of a run (policy, random erasing) as one epoch plan, for the loader.

Where they sit in a batch, as in torchvision's reference recipe (crop, flip, policy on uint8,
normalise, erase):

    crop/flip (loader) -> `before_normalize` (AutoAugment/RandAugment/TrivialAugment, uint8)
    -> normalise, cutout (loader) -> `after_normalize` (random erasing, value 0 = the mean)

The plan has its own generator, seeded from the loader's per-epoch seed and a fixed salt, so the
crop/flip/cutout draws of a run do not change when these are switched on, and a run without them
draws nothing and does no work here. Everything is indexed by image position in the epoch, like the
loader's plan: resume is exact and the batches are the same on CPU and GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UsageError
from .erasing import ErasePlan, erase, plan_erasing
from .policies import Policy, PolicyPlan, apply_policy, plan_policy

SALT = 0x5EED_A116  # separates this stream from the loader's (same per-epoch seed)


@dataclass(frozen=True)
class StrongAugment:
    policy: Policy | None = None
    random_erase: float = 0.0   # probability per image

    def __post_init__(self):
        p = self.random_erase
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise UsageError(f"--random-erase is a probability in [0, 1], got {p}")

    @property
    def enabled(self) -> bool:
        return self.policy is not None or self.random_erase > 0

    def describe(self) -> list[str]:
        out = [self.policy.describe()] if self.policy else []
        if self.random_erase > 0:
            out.append(f"random erasing with p={self.random_erase:g} (area 2-33%, aspect 0.3-3.3, value 0 = the mean)")
        return out


@dataclass
class StrongPlan:
    policy: PolicyPlan | None     # on the device
    policy_cpu: PolicyPlan | None  # the same ops on the CPU: which ops a batch uses, without a sync
    erase: ErasePlan | None


def plan_strong(n: int, epoch_seed: int, aug: StrongAugment, device, h: int = 32, w: int = 32) -> StrongPlan | None:
    """The epoch's draws for `n` images (None when nothing is on); epoch_seed: loader.epoch_seed(seed, epoch)."""
    if not aug.enabled:
        return None
    g = torch.Generator().manual_seed((epoch_seed ^ SALT) % (2**63 - 1))
    pol = plan_policy(n, aug.policy, g, h, w) if aug.policy else None
    er = plan_erasing(n, aug.random_erase, g, h, w) if aug.random_erase > 0 else None
    return StrongPlan(pol.to(device) if pol else None, pol, er.to(device) if er else None)


def before_normalize(x: torch.Tensor, plan: StrongPlan | None, pos: torch.Tensor,
                     pos_cpu: torch.Tensor) -> torch.Tensor:
    """The policy on the uint8 images at epoch positions pos (pos_cpu: the same, on the CPU)."""
    if plan is None or plan.policy is None:
        return x
    return apply_policy(x, plan.policy.op[pos], plan.policy.mag[pos], plan.policy_cpu.op[pos_cpu])


def after_normalize(x: torch.Tensor, plan: StrongPlan | None, pos: torch.Tensor) -> torch.Tensor:
    if plan is None or plan.erase is None:
        return x
    e = plan.erase
    return erase(x, ErasePlan(e.top[pos], e.left[pos], e.height[pos], e.width[pos]))
