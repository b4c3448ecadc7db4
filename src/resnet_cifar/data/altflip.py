"""Alternating (derandomised) flips, as airbench94's loader does them (`altflip=True`).

Each training image gets one random flip state, drawn once for the run (seeded); in every odd
epoch all images are flipped relative to it. So an image is seen mirrored in exactly every other
epoch, instead of in a random half of them: more diversity over few epochs than independent
flips. `alternating_flips(order, seed, epoch)` returns the flip decision for each position of an
epoch's order, like `EpochPlan.flip`; it depends only on (seed, epoch), so a resume is exact.
"""

from __future__ import annotations

import torch

_STREAM = 0x5EED_F11B  # a stream of its own, apart from the loader's per-epoch generators


def base_flips(n: int, seed: int) -> torch.Tensor:
    """The run's flip state per image (bool (n,)), before alternation."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + _STREAM) % (2**63 - 1))
    return torch.rand(n, generator=g) < 0.5


def alternating_flips(order: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """Flip decision per position of `order` (a permutation of image indices) in `epoch` (0-based)."""
    flips = base_flips(len(order), seed)
    if epoch % 2 == 1:
        flips = ~flips
    return flips[order.cpu()]
