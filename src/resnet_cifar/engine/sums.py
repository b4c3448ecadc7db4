"""The running sums of a training metric: loss sum, correct predictions, image count.

One small type for what was three encodings (tensor indices, a dict, a tuple). The values live in
one float64 tensor on the device, so adding a step's sums queues one kernel and never synchronises;
`as_dict` is the single read (a sync point). In checkpoints the sums are the plain floats of
`as_dict` (`partial` of a mid-epoch checkpoint), so their format is unchanged.
"""

from __future__ import annotations

import torch

from .. import distributed as distm

FIELDS = ("loss_sum", "correct", "count")


class Sums:
    """(loss_sum, correct, count) as one float64 tensor of shape (3,) on the device."""

    __slots__ = ("values",)

    def __init__(self, values: torch.Tensor):
        self.values = values

    @classmethod
    def zeros(cls, device: torch.device | str = "cpu") -> "Sums":
        return cls(torch.zeros(3, dtype=torch.float64, device=device))

    @classmethod
    def from_dict(cls, d: dict, device: torch.device | str = "cpu") -> "Sums":
        return cls(torch.tensor([float(d[k]) for k in FIELDS], dtype=torch.float64, device=device))

    @classmethod
    def of(cls, loss_sum: torch.Tensor, correct: torch.Tensor, count: int) -> "Sums":
        """From a summed loss and a hit count on the device, and an image count (no sync: a fill, where
        torch.tensor(count, device=...) would copy from host memory and wait for the device)."""
        dev = loss_sum.device
        return cls(torch.stack([loss_sum.detach().to(torch.float64), correct.to(torch.float64),
                                torch.full((), float(count), dtype=torch.float64, device=dev)]))

    @property
    def loss_sum(self) -> torch.Tensor:
        return self.values[0]

    @property
    def correct(self) -> torch.Tensor:
        return self.values[1]

    @property
    def count(self) -> torch.Tensor:
        return self.values[2]

    def __iter__(self):  # loss_sum, correct, count = sums  (0-d tensors; float() of one is a sync)
        return iter(self.values.unbind())

    def add(self, other: "Sums") -> "Sums":
        """In place; returns self."""
        self.values += other.values
        return self

    def clone(self) -> "Sums":
        return Sums(self.values.clone())

    def all_reduce(self, world: distm.World) -> "Sums":
        """The sums over every rank (a new object; a collective under DDP, a copy otherwise)."""
        return Sums(distm.all_reduce_sum(self.values.clone(), world))

    def as_dict(self) -> dict[str, float]:
        """The three values as floats (one host-device sync)."""
        return dict(zip(FIELDS, self.values.tolist(), strict=True))
