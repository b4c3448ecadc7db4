"""Stratified, seeded validation split and training subsets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_cifar.data.split import stratified_subset, train_val_split
from resnet_cifar.errors import UsageError


def _labels(counts, seed=0):
    y = torch.cat([torch.full((c,), k, dtype=torch.int64) for k, c in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def test_stratified_disjoint_covering_sorted():
    y = _labels([100] * 10)
    tr, va = train_val_split(y, 50, seed=0)
    assert torch.bincount(y[va], minlength=10).tolist() == [5] * 10
    assert len(tr) + len(va) == 1000
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(1000))
    assert torch.equal(tr, torch.sort(tr).values) and torch.equal(va, torch.sort(va).values)
    assert tr.dtype == va.dtype == torch.int64


def test_unbalanced_classes_get_proportional_largest_remainder_quotas():
    y = _labels([500, 300, 200, 7])
    _, va = train_val_split(y, 101, seed=3)
    # exact quotas 50.15, 30.09, 20.06, 0.70 -> floors 50, 30, 20, 0 + 1 to the largest remainder
    assert torch.bincount(y[va], minlength=4).tolist() == [50, 30, 20, 1]


def test_seeded_deterministic_and_seed_dependent():
    y = _labels([60] * 5)
    a = train_val_split(y, 25, seed=1)
    b = train_val_split(y, 25, seed=1)
    c = train_val_split(y, 25, seed=2)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])


def test_val_size_zero_and_too_large():
    y = _labels([3, 3])
    tr, va = train_val_split(y, 0, seed=0)
    assert torch.equal(tr, torch.arange(6)) and va.numel() == 0
    with pytest.raises(UsageError, match="smaller than the 6"):
        train_val_split(y, 6, seed=0)
    with pytest.raises(UsageError):
        train_val_split(y, -1, seed=0)


def test_subset_is_stratified_within_given_indices():
    y = _labels([1000] * 10)
    tr, va = train_val_split(y, 1000, seed=0)
    sub = stratified_subset(tr, y, 500, seed=0)
    assert torch.bincount(y[sub], minlength=10).tolist() == [50] * 10
    assert set(sub.tolist()) <= set(tr.tolist()) and len(set(sub.tolist())) == 500
    assert torch.equal(sub, stratified_subset(tr, y, 500, seed=0))
    assert not torch.equal(sub, stratified_subset(tr, y, 500, seed=1))
    assert torch.equal(stratified_subset(tr, y, len(tr), seed=0), tr)
    assert stratified_subset(tr, y, 0, seed=0).numel() == 0
    with pytest.raises(UsageError, match="at most 9000"):
        stratified_subset(tr, y, 9001, seed=0)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=1, max_size=8), frac=st.floats(0, 0.99),
       seed=st.integers(0, 2**31))
def test_split_properties(counts, frac, seed):
    y = _labels(counts, seed % 7)
    n = len(y)
    val_size = min(int(frac * n), n - 1)
    tr, va = train_val_split(y, val_size, seed)
    assert len(va) == val_size and len(tr) == n - val_size
    assert not set(tr.tolist()) & set(va.tolist())
    got = torch.bincount(y[va], minlength=len(counts)).tolist()
    for k, c in enumerate(counts):                      # within 1 of the exact proportion
        assert abs(got[k] - val_size * c / n) < 1


def test_split_sizes_are_checked_before_any_split():
    from resnet_cifar.data.split import check_split_sizes

    assert check_split_sizes(500, 50) == 450 and check_split_sizes(500, 50, train_subset=100) == 100
    assert check_split_sizes(500, 0) == 500
    with pytest.raises(UsageError, match="--val-size 5000 must be smaller than the 500 training images"):
        check_split_sizes(500, 5000)
    with pytest.raises(UsageError, match="--train-subset 451 is more than the 450"):
        check_split_sizes(500, 50, train_subset=451)
    with pytest.raises(UsageError, match="--val-size must be 0 or more"):
        check_split_sizes(500, -1)
