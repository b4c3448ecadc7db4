"""Sharpness-Aware Minimisation (Foret et al., ICLR 2021) over a base optimizer, and its BN helper.

One SAM update takes two forward/backward passes over the same batch:

    loss(w).backward()          # pass 1: g = grad at w (accumulated over micro-batches, all-reduced)
    sam.first_step()            # w <- w + rho * g / ||g||   (the ascent step; remembered per param)
    sam.zero_grad()
    with frozen_bn_stats(model):
        loss(w + e).backward()  # pass 2: the gradient at the perturbed weights
    sam.second_step()           # w <- w - e, then the base optimizer's step with that gradient

`adaptive` is off (the original SAM; ||g|| is the global L2 norm over all parameters), as in
davda54/sam with its defaults. BatchNorm running statistics are those of the first pass only: the
second pass sees perturbed weights, so `frozen_bn_stats` puts the buffers back as they were.

The learning rate and other hyperparameters live in the shared param_groups (a scheduler or the
engine sets them on the SAM object as on any optimizer); the state that matters for resume (the
base optimizer's momentum buffers) is what state_dict saves.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn as nn

from .errors import UsageError


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base: type[torch.optim.Optimizer] = torch.optim.SGD, rho: float = 0.05,
                 **base_kwargs):
        if not (math.isfinite(rho) and rho > 0):
            raise UsageError(f"--sam-rho must be a finite number > 0, got {rho}")
        super().__init__(params, {"rho": rho})
        self.base_optimizer = base(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one set of groups: lr changes reach both
        self.defaults.update(self.base_optimizer.defaults)
        for group in self.param_groups:
            group.setdefault("rho", rho)
        self._e: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def first_step(self) -> torch.Tensor:
        """Move to the worst-case point within rho of the current weights; returns ||g|| (on the device)."""
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return torch.zeros(())
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self._e.clear()
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = p.grad * scale.to(p.grad.dtype)
                p.add_(e)
                self._e[p] = e
        return norm

    @torch.no_grad()
    def second_step(self) -> None:
        """Return to the original weights and take the base optimizer's step with the current gradient."""
        for p, e in self._e.items():
            p.sub_(e)
        self._e.clear()
        self.base_optimizer.step()

    def step(self, closure=None):
        """The whole update with a closure that does pass 2's forward/backward (torch's closure API)."""
        if closure is None:
            raise RuntimeError("SAM.step needs a closure (or call first_step / second_step)")
        self.first_step()
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


_BN = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Run the block in train mode (batch statistics) but leave BN running stats as they were:
    running mean/var and num_batches_tracked are copied before and written back after."""
    saved = [(b, b.clone()) for m in model.modules() if isinstance(m, _BN)
             for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in saved:
                b.copy_(s)
