"""SAM: the two-pass update against its definition, accumulation, BN statistics, resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from resnet_cifar.errors import UsageError
from resnet_cifar.models import build_model
from resnet_cifar.sam import SAM, frozen_bn_stats


def _loss(w, x, y):
    return F.cross_entropy(x @ w, y, reduction="sum")


def test_update_is_sgd_at_the_ascended_point():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    w0 = torch.randn(5, 3)
    w = w0.clone().requires_grad_()
    sam = SAM([w], torch.optim.SGD, rho=0.1, lr=0.5, momentum=0.0)
    _loss(w, x, y).backward()
    sam.first_step()
    sam.zero_grad()
    _loss(w, x, y).backward()
    sam.second_step()
    # by hand: g at w0, e = rho g/||g||, g' at w0 + e, w0 - lr g'
    a = w0.clone().requires_grad_()
    g, = torch.autograd.grad(_loss(a, x, y), a)
    b = (w0 + 0.1 * g / g.norm()).requires_grad_()
    g2, = torch.autograd.grad(_loss(b, x, y), b)
    assert torch.allclose(w.detach(), w0 - 0.5 * g2, atol=1e-6)


def test_closure_step_and_accumulated_micro_batches_equal_one_batch():
    torch.manual_seed(1)
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    w0 = torch.randn(4, 3)
    ws = []
    for chunks in (1, 3):
        w = w0.clone().requires_grad_()
        sam = SAM([w], rho=0.05, lr=0.1, momentum=0.9)

        def passes(w=w, chunks=chunks):
            for xm, ym in zip(x.tensor_split(chunks), y.tensor_split(chunks), strict=True):
                _loss(w, xm, ym).backward()

        for _ in range(3):
            passes()
            sam.step(passes)
            sam.zero_grad()
        ws.append(w.detach())
    assert torch.allclose(ws[0], ws[1], atol=1e-5)
    assert not torch.allclose(ws[0], w0)


def test_bn_statistics_come_from_the_first_pass_only():
    torch.manual_seed(0)
    model = build_model("resnet20", width=0.25)
    ref = build_model("resnet20", width=0.25)
    ref.load_state_dict(model.state_dict())
    x = torch.randn(8, 3, 32, 32)
    model(x).sum().backward()
    with torch.no_grad():
        ref(x)  # one pass: what the statistics must be
    with frozen_bn_stats(model):
        model(x * 3 + 1).sum().backward()  # different activations: would move the stats
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        if "running" in k or "num_batches" in k:
            assert torch.equal(a, b), k


def test_frozen_bn_still_normalises_with_batch_statistics():
    bn = nn.BatchNorm2d(3).train()
    x = torch.randn(4, 3, 5, 5) * 7 + 2
    with frozen_bn_stats(bn):
        out = bn(x)
    assert out.mean().abs() < 1e-5 and (bn.running_mean == 0).all()


def test_state_dict_resumes_the_momentum():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    w0 = torch.randn(4, 3)

    def run(steps, state=None, w_start=None):
        w = (w0 if w_start is None else w_start).clone().requires_grad_()
        sam = SAM([w], rho=0.05, lr=0.1, momentum=0.9)
        if state is not None:
            sam.load_state_dict(state)
        for _ in range(steps):
            _loss(w, x, y).backward()
            sam.step(lambda: _loss(w, x, y).backward())
            sam.zero_grad()
        return w.detach(), sam.state_dict()

    straight, _ = run(4)
    half, state = run(2)
    assert "momentum_buffer" in state["state"][0]
    resumed, _ = run(2, state, half)
    assert torch.equal(straight, resumed)


def test_lr_set_on_sam_reaches_the_base_optimizer_and_rho_is_checked():
    w = torch.zeros(2, requires_grad=True)
    sam = SAM([w], lr=0.1)
    for g in sam.param_groups:
        g["lr"] = 0.01
    assert sam.base_optimizer.param_groups[0]["lr"] == 0.01
    with pytest.raises(UsageError, match="--sam-rho"):
        SAM([w], rho=0.0, lr=0.1)
