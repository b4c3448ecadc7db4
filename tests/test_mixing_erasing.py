"""Random erasing, mixup and cutmix: planned per epoch/batch, torchvision's semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnet_cifar.data.erasing import ErasePlan, erase, plan_erasing
from resnet_cifar.errors import UsageError
from resnet_cifar.mixing import MixedTarget, Mixing, MixParams, draw, hard_labels, mix, mixed_loss


def test_erasing_plan_is_seeded_and_has_torchvisions_statistics():
    g = lambda s: torch.Generator().manual_seed(s)
    a, b = plan_erasing(20000, 0.5, g(0)), plan_erasing(20000, 0.5, g(0))
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("top", "left", "height", "width"))
    erased = a.height > 0
    assert erased.double().mean().item() == pytest.approx(0.5, abs=0.02)
    area = (a.height * a.width)[erased].double() / 1024
    assert area.min() >= 0.01 and area.max() <= 0.36  # scale (0.02, 0.33), after rounding the sides
    assert ((a.top + a.height) <= 32).all() and ((a.left + a.width) <= 32).all() and (a.top >= 0).all()
    v2 = pytest.importorskip("torchvision.transforms.v2")
    t = v2.RandomErasing(p=1.0)
    torch.manual_seed(0)
    ref = []
    for _ in range(4000):
        p = t.make_params([torch.zeros(3, 32, 32)])
        ref.append(p["h"] * p["w"] / 1024 if p["v"] is not None else 0.0)
    assert area.mean().item() == pytest.approx(sum(ref) / len(ref), rel=0.05)


def test_erase_zeroes_the_planned_rectangle_only_and_keeps_channels_last():
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    plan = ErasePlan(torch.tensor([1, 0]), torch.tensor([2, 0]), torch.tensor([3, 0]), torch.tensor([4, 0]))
    out = erase(x, plan)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out[0, :, 1:4, 2:6] == 0).all()
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[1:4, 2:6] = False
    assert torch.equal(out[0][:, keep], x[0][:, keep]) and torch.equal(out[1], x[1])
    v2 = pytest.importorskip("torchvision.transforms.v2")
    assert torch.equal(out[0], v2.functional.erase(x[0], 1, 2, 3, 4, torch.tensor(0.0)))


def test_draw_is_a_pure_function_of_seed_epoch_batch():
    m = Mixing(mixup_alpha=0.2, cutmix_alpha=1.0)
    assert draw(m, 0, 1, 2) == draw(m, 0, 1, 2)
    draws = [draw(m, 0, 1, b) for b in range(400)]
    mixups = [d.lam for d in draws if d.kind == "mixup"]
    assert len(set(mixups)) == len(mixups) and draw(m, 0, 2, 0) != draw(m, 0, 1, 0) != draw(m, 1, 1, 0)
    share = sum(d.kind == "mixup" for d in draws) / 400
    assert 0.4 < share < 0.6


def test_mixup_mixes_images_with_their_neighbours():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    out, t = mix(x, y, MixParams("mixup", 0.7))
    assert torch.allclose(out, 0.7 * x + 0.3 * x.roll(1, 0), atol=1e-6)
    assert torch.equal(t.y_b, torch.tensor([3, 0, 1, 2]))
    assert torch.equal(hard_labels(t), y) and torch.equal(MixedTarget(y, t.y_b, 0.3).dominant(), t.y_b)


def test_cutmix_pastes_the_box_and_lambda_is_the_kept_share():
    m = Mixing(cutmix_alpha=1.0)
    p = next(d for b in range(50) if (d := draw(m, 3, 0, b)).box[2] - d.box[0] > 2)
    x1, y1, x2, y2 = p.box
    assert p.lam == pytest.approx(1 - (x2 - x1) * (y2 - y1) / 1024)
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out, _ = mix(x, torch.arange(3), p)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[:, :, y1:y2, x1:x2], x.roll(1, 0)[:, :, y1:y2, x1:x2])
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[y1:y2, x1:x2] = False
    assert torch.equal(out[:, :, outside], x[:, :, outside])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_loss_equals_cross_entropy_on_torchvisions_soft_targets(smoothing):
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    lam = 0.35
    target = MixedTarget(y, y.roll(1, 0), lam)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
    one_hot = F.one_hot(y, 5).float()
    soft = one_hot.roll(1, 0).mul(1 - lam).add(one_hot.mul(lam))  # v2 MixUp/CutMix's _mixup_label
    assert mixed_loss(crit, logits, target).item() == pytest.approx(crit(logits, soft).item(), rel=1e-6)
    assert mixed_loss(crit, logits, y).item() == pytest.approx(crit(logits, y).item())


@pytest.mark.parametrize("kwargs", [{"mixup_alpha": -1.0}, {"cutmix_alpha": float("nan")}])
def test_bad_alpha_is_a_usage_error(kwargs):
    with pytest.raises(UsageError, match="alpha must be a finite number"):
        Mixing(**kwargs)
