"""AutoAugment / RandAugment / TrivialAugmentWide plans: torchvision's tables, deterministic draws,
and a planned batch equal to torchvision's ops applied image by image."""

from __future__ import annotations

import pytest
import torch

from resnet_cifar.data.ops import OP_INDEX, OPS
from resnet_cifar.data.policies import CIFAR10_POLICY, Policy, _bins, apply_policy, plan_policy
from resnet_cifar.errors import UsageError

v2 = pytest.importorskip("torchvision.transforms.v2")

TV = {"autoaugment": (v2.AutoAugment, 10), "randaugment": (v2.RandAugment, 31),
      "trivialaugment": (v2.TrivialAugmentWide, 31)}


def test_cifar10_policy_is_torchvisions():
    tv = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)._policies
    assert [tuple(map(tuple, sp)) for sp in tv] == [tuple(map(tuple, sp)) for sp in CIFAR10_POLICY]


@pytest.mark.parametrize("kind", list(TV))
def test_op_lists_and_bins_are_torchvisions(kind):
    cls, num_bins = TV[kind]
    ours = _bins(kind, num_bins, 32, 32)
    assert list(ours) == list(cls._AUGMENTATION_SPACE)
    for name, (fn, _) in cls._AUGMENTATION_SPACE.items():
        ref = fn(num_bins, 32, 32)
        assert (ref is None) == (ours[name] is None), name
        if ref is not None:
            assert torch.equal(ref, ours[name]), name


def _plan(policy, n=4000, seed=0):
    return plan_policy(n, policy, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["autoaugment", "randaugment", "trivialaugment"])
def test_plan_is_a_function_of_the_seed(kind):
    a, b, c = _plan(Policy(kind)), _plan(Policy(kind)), _plan(Policy(kind), seed=1)
    assert torch.equal(a.op, b.op) and torch.equal(a.mag, b.mag)
    assert not torch.equal(a.op, c.op)


def test_autoaugment_applies_each_op_with_its_probability():
    n = 20000
    plan = _plan(Policy("autoaugment"), n)
    assert plan.op.shape == (n, 2)
    expected = sum(p for sp in CIFAR10_POLICY for _, p, _ in sp) / (2 * len(CIFAR10_POLICY))
    applied = (plan.op != OP_INDEX["Identity"]).double().mean().item()
    assert abs(applied - expected) < 0.015
    used = {OPS[i] for i in plan.op.unique().tolist()}
    assert used == {op for sp in CIFAR10_POLICY for op, _, _ in sp} | {"Identity"}
    rot = plan.mag[plan.op == OP_INDEX["Rotate"]].abs()
    assert set(rot.unique().tolist()) <= {float(torch.linspace(0, 30, 10)[2])}  # Rotate appears at bin 2 only
    assert (plan.mag[plan.op == OP_INDEX["Rotate"]] < 0).double().mean().item() == pytest.approx(0.5, abs=0.05)


def test_randaugment_uses_magnitude_m_and_every_op():
    plan = _plan(Policy("randaugment", num_ops=3, magnitude=5))
    assert plan.op.shape == (4000, 3)
    assert {OPS[i] for i in plan.op.unique().tolist()} == set(OPS[:14])
    shear = plan.mag[plan.op == OP_INDEX["ShearX"]].abs()
    assert torch.allclose(shear, torch.full_like(shear, float(torch.linspace(0.0, 0.3, 31)[5])))
    assert (plan.mag[plan.op == OP_INDEX["Identity"]] == 0).all()


def test_trivialaugment_draws_every_bin():
    plan = _plan(Policy("trivialaugment"), 20000)
    rot = plan.mag[plan.op[:, 0] == OP_INDEX["Rotate"], 0].abs().unique()
    assert torch.allclose(rot, torch.linspace(0.0, 135.0, 31).double())


@pytest.mark.parametrize("kind", ["autoaugment", "randaugment", "trivialaugment"])
def test_planned_batch_equals_torchvision_image_by_image(kind):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (48, 3, 32, 32), generator=g, dtype=torch.uint8)
    plan = _plan(Policy(kind), len(x), seed=4)
    out = apply_policy(x, plan.op, plan.mag, plan.op)
    tv = v2.TrivialAugmentWide()
    for i in range(len(x)):
        ref = x[i]
        for s in range(plan.op.shape[1]):
            ref = tv._apply_image_or_video_transform(ref, OPS[plan.op[i, s]], float(plan.mag[i, s]),
                                                    interpolation=v2.InterpolationMode.NEAREST, fill=tv._fill)
        assert (out[i].int() - ref.int()).abs().max() <= 1, (i, [OPS[j] for j in plan.op[i]])


@pytest.mark.parametrize("kwargs, match", [({"kind": "ra"}, "unknown augmentation policy"),
                                           ({"kind": "randaugment", "magnitude": 31}, "magnitude must be in 0..30"),
                                           ({"kind": "randaugment", "num_ops": 0}, "number of ops")])
def test_bad_policy_is_a_usage_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        Policy(**kwargs)
