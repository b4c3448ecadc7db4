"""The epoch plan of the strong augmentations: off means nothing drawn, positions index it exactly."""

from __future__ import annotations

import pytest
import torch

from resnet_cifar.data.augment import StrongAugment, after_normalize, before_normalize, plan_strong
from resnet_cifar.data.policies import Policy, apply_policy
from resnet_cifar.errors import UsageError


def test_nothing_on_plans_nothing():
    assert plan_strong(100, 123, StrongAugment(), "cpu") is None
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert before_normalize(x, None, torch.arange(2), torch.arange(2)) is x
    f = x.float()
    assert after_normalize(f, None, torch.arange(2)) is f


def test_positions_index_the_epoch_plan_and_the_plan_is_seeded():
    aug = StrongAugment(Policy("randaugment"), random_erase=0.5)
    a, b, c = plan_strong(64, 7, aug, "cpu"), plan_strong(64, 7, aug, "cpu"), plan_strong(64, 8, aug, "cpu")
    assert torch.equal(a.policy.op, b.policy.op) and torch.equal(a.erase.top, b.erase.top)
    assert not torch.equal(a.policy.op, c.policy.op)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
    pos = torch.tensor([5, 17, 3, 40])
    out = before_normalize(x[pos], a, pos, pos)
    whole = apply_policy(x, a.policy.op, a.policy.mag, a.policy.op)  # the whole epoch at once
    assert torch.equal(out, whole[pos])
    erased = after_normalize(torch.ones(4, 3, 32, 32), a, pos)
    for i, p in enumerate(pos.tolist()):
        assert (erased[i] == 0).sum().item() == 3 * (a.erase.height[p] * a.erase.width[p]).item()


def test_describe_and_validation():
    aug = StrongAugment(Policy("autoaugment"), random_erase=0.25)
    text = " ".join(aug.describe())
    assert "AutoAugment, CIFAR-10 policy" in text and "p=0.25" in text
    with pytest.raises(UsageError, match="--random-erase is a probability"):
        StrongAugment(random_erase=1.5)
