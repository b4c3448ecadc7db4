"""Validation split and training subsets, stratified by class, seeded and deterministic.

Both functions return index tensors (int64) sorted ascending, so the result depends only on
(labels, size, seed) and not on any iteration order. Per-class quotas are proportional to the
class frequency, rounded by largest remainder (ties go to the lower class index), so the total is
exactly what was asked. Randomness comes from a private torch.Generator on the CPU.
"""

from __future__ import annotations

import torch

from ..errors import UsageError


def _quotas(counts: torch.Tensor, n: int) -> list[int]:
    """Split n over classes proportionally to counts (largest-remainder, exact integers)."""
    total = int(counts.sum())
    counts = [int(c) for c in counts.tolist()]
    quota = [n * c // total for c in counts]
    remainder = [n * c % total for c in counts]
    missing = n - sum(quota)
    for k in sorted(range(len(counts)), key=lambda k: (-remainder[k], k))[:missing]:
        quota[k] += 1
    return quota


def _stratified_pick(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Positions (into `labels`) of a stratified random sample of size n, sorted."""
    labels = labels.to(torch.int64).cpu()
    if n == 0 or labels.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)          # positions grouped by class
    picked, start = [], 0
    for k, q in enumerate(_quotas(counts, n)):
        members = order[start:start + int(counts[k])]
        start += int(counts[k])
        perm = torch.randperm(len(members), generator=gen)[:q]
        picked.append(members[perm])
    return torch.sort(torch.cat(picked)).values


def check_split_sizes(n: int, val_size: int, train_subset: int = 0) -> int:
    """The number of training images a split of n images leaves; the errors `train_val_split` and
    `stratified_subset` would raise, raised before anything is loaded onto a device or printed."""
    if val_size < 0:
        raise UsageError(f"--val-size must be 0 or more, got {val_size}")
    if val_size >= n:
        raise UsageError(f"--val-size {val_size} must be smaller than the {n} training images; "
                         f"use a smaller --val-size (0 for no validation set)")
    if train_subset < 0:
        raise UsageError(f"--train-subset must be 0 or more, got {train_subset}")
    if train_subset > n - val_size:
        raise UsageError(f"--train-subset {train_subset} is more than the {n - val_size} training images "
                         f"available; use at most {n - val_size}")
    return train_subset or n - val_size


def train_val_split(labels: torch.Tensor, val_size: int, seed: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions 0..N-1 into (train_idx, val_idx), stratified by label, both sorted.

    val_size 0 gives an empty validation set; val_size must be smaller than N.
    """
    n = int(labels.shape[0])
    check_split_sizes(n, val_size)
    val = _stratified_pick(labels, val_size, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def stratified_subset(idx: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A stratified random subset of n of the indices `idx` (which index into `labels`), sorted.

    Used for --train-subset: n=10000 of CIFAR-10's balanced train split gives 1000 per class.
    """
    idx = idx.to(torch.int64).cpu()
    if n < 0:
        raise UsageError(f"--train-subset must be 0 or more, got {n}")
    if n > idx.numel():
        raise UsageError(f"--train-subset {n} is more than the {idx.numel()} training images "
                         f"available; use at most {idx.numel()}")
    pos = _stratified_pick(labels.cpu()[idx], n, seed)
    return torch.sort(idx[pos]).values
