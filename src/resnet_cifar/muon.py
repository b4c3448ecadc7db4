"""Muon for the conv filters, SGD for the rest: the optimizer of airbench94_muon.py, in one object.

airbench94_muon.py (Keller Jordan, github.com/KellerJordan/cifar10-airbench, March 2025) reaches
airbench94's 94.01% on CIFAR-10 in 0.29 PFLOP instead of 0.36 by training the same net's conv
filters with Muon (kellerjordan.github.io/posts/muon): the Nesterov momentum of each filter's
gradient, seen as a (c_out, c_in*k*k) matrix, is replaced by an approximately orthogonal matrix of
the same shape (a quintic Newton-Schulz iteration, 3 steps), and the filter is rescaled to norm
sqrt(c_out) before each step. Every other parameter (BN biases, the whitening bias, the linear head)
takes a plain Nesterov SGD step.

One optimizer holds both kinds, so checkpoints, exact resume, GradScaler and DDP see one object:
each param group says `muon: True` (filters) or not. A Muon group ignores weight decay (the weight
normalisation bounds its norm instead), as in the reference. The SGD groups follow
torch.optim.SGD's update exactly (weight decay added to the gradient, momentum buffer started at the
first gradient, Nesterov: d + momentum * buf).

The orthogonalisation runs in bfloat16 on CUDA, as the reference does, and in float32 elsewhere
(bf16 matmuls are slower than fp32 on the CPUs measured here; float32 is at least as accurate).
"""

from __future__ import annotations

import torch

from .constants import MUON_MOMENTUM

# airbench94_muon.py's quintic Newton-Schulz coefficients (maximal slope at zero) and step count
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 3
NS_EPS = 1e-7


def orthogonalize(g: torch.Tensor, steps: int = NS_STEPS, eps: float = NS_EPS) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors (g: 2-D), as g's dtype.

    Not U V^T exactly: the iteration is tuned to reach singular values in roughly (0.5, 1.5) in
    few steps, which trains as well (airbench94_muon's `zeropower_via_newtonschulz5`)."""
    if g.dim() != 2:
        raise ValueError(f"orthogonalize takes a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    x = x / (x.norm() + eps)          # top singular value <= 1
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    if tall:
        x = x.T
    return x.to(g.dtype)


class MuonSGD(torch.optim.Optimizer):
    """Param groups with `muon=True`: Muon (lr, muon_momentum, Nesterov); the others: SGD (lr,
    momentum, weight_decay, nesterov). lr and the other keys can be changed per group between steps."""

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 muon_momentum: float = MUON_MOMENTUM):
        if lr < 0 or momentum < 0 or muon_momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum, muon_momentum and weight_decay must be >= 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      muon=False, muon_momentum=muon_momentum))
        for g in self.param_groups:
            if g["muon"] and any(p.dim() < 2 for p in g["params"]):
                raise ValueError("a Muon group holds matrices or conv filters (2-D or more), not biases")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (self._muon if group["muon"] else self._sgd)(group)
        return loss

    def _muon(self, group: dict) -> None:
        m = group["muon_momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            buf.mul_(m).add_(p.grad)
            d = p.grad.add(buf, alpha=m) if group["nesterov"] else buf
            p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))     # the filter back to norm sqrt(c_out)
            p.add_(orthogonalize(d.reshape(len(d), -1)).view_as(p), alpha=-group["lr"])

    def _sgd(self, group: dict) -> None:
        m, wd = group["momentum"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            d = p.grad.add(p, alpha=wd) if wd else p.grad
            if m:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(m).add_(d)
                buf = state["momentum_buffer"]
                d = d.add(buf, alpha=m) if group["nesterov"] else buf
            p.add_(d, alpha=-group["lr"])
