"""`--optimizer muon`: Muon on the conv filters and SGD on the rest (muon.py), the linear schedule,
and a speedrun run with them that trains, resumes bitwise and refuses bad values."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from helpers import CrashAfter, tiny_dataset
from resnet_cifar.cli import main
from resnet_cifar.config import resolve
from resnet_cifar.engine import build_parts, fit, load_resume_state
from resnet_cifar.muon import MuonSGD, orthogonalize
from resnet_cifar.optim import split_filters
from resnet_cifar.schedule import LRSchedule


def reference_muon_step(p, grad, buf, lr, momentum):
    """airbench94_muon.py's Muon.step for one filter, in float32 (the reference casts to bf16 on CUDA)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    buf.mul_(momentum).add_(grad)
    g = grad.add(buf, alpha=momentum)
    p.mul_(len(p) ** 0.5 / p.norm())
    X = g.reshape(len(g), -1).float()
    X = X / (X.norm() + 1e-7)
    tall = X.size(0) > X.size(1)
    X = X.T if tall else X
    for _ in range(3):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    X = X.T if tall else X
    p.add_(X.view(g.shape), alpha=-lr)


@pytest.mark.parametrize("shape", [(16, 40), (40, 16)])
def test_orthogonalize_gives_singular_values_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 1e3
    s = torch.linalg.svdvals(orthogonalize(g))
    assert orthogonalize(g).shape == g.shape
    # the tuned quintic lands the singular values in about (0.5, 1.5), not exactly at 1
    assert 0.3 < s.min() and s.max() < 1.6, s
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.randn(2, 3, 4))


def test_muon_group_equals_airbench_muon_step():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    p = nn.Parameter(w.clone())
    opt = MuonSGD([{"params": [p], "muon": True}], lr=0.24, nesterov=True, muon_momentum=0.6)
    ref, buf = w.clone(), torch.zeros_like(w)
    for _ in range(3):
        grad = torch.randn_like(w)
        p.grad = grad.clone()
        opt.step()
        reference_muon_step(ref, grad, buf, 0.24, 0.6)
        torch.testing.assert_close(p.detach(), ref, rtol=1e-5, atol=1e-6)
    # the filter's norm is pulled back to sqrt(c_out) before each step, so it stays near it
    assert abs(p.norm().item() - 8 ** 0.5) < 1.0


def test_sgd_groups_equal_torch_sgd():
    torch.manual_seed(0)
    w = torch.randn(5, 3)
    p, q = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    ours = MuonSGD([{"params": [p], "weight_decay": 1e-2}], lr=0.3, momentum=0.85, nesterov=True)
    theirs = torch.optim.SGD([{"params": [q], "weight_decay": 1e-2}], lr=0.3, momentum=0.85, nesterov=True)
    for _ in range(4):
        grad = torch.randn_like(w)
        p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)


def test_a_muon_group_refuses_biases_and_split_filters_moves_only_conv_weights():
    with pytest.raises(ValueError, match="biases"):
        MuonSGD([{"params": [nn.Parameter(torch.zeros(3))], "muon": True}], lr=0.1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = split_filters([{"params": list(net.parameters()), "weight_decay": 5e-4}], muon_lr_scale=0.16)
    assert groups[0]["muon"] and groups[0]["params"] == [net[0].weight]
    assert (groups[0]["lr_scale"], groups[0]["weight_decay"]) == (0.16, 0.0)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.parameters()} - {id(net[0].weight)}
    assert groups[1]["weight_decay"] == 5e-4 and "muon" not in groups[1]


def test_linear_schedule_falls_from_the_lr_to_zero():
    cfg = resolve(flag_values=dict(model="resnet20", epochs=4, lr=2.0, scheduler="linear", warmup_epochs=0,
                                   swa=False, val_size=0))
    s = LRSchedule(cfg, steps_per_epoch=5)
    assert s.lr(0) == 2.0 and s.lr(10) == 1.0 and s.lr(19) == pytest.approx(0.1) and s.lr(20) == 0.0


TINY = dict(width=0.125, dataset="folder", device="cpu", epochs=2, batch_size=32, val_size=32, report=False,
            compile="off", optimizer="muon", scheduler="linear", lookahead=False)


def test_muon_speedrun_parts_give_the_filters_the_muon_lr():
    cfg = resolve(flag_values={**TINY, "muon_lr": 0.24, "lr": 1.5}, preset="speedrun")
    parts = build_parts(cfg, tiny_dataset(num_classes=3), torch.device("cpu"))
    opt = parts.optimizer
    assert isinstance(opt, MuonSGD)
    muon = [g for g in opt.param_groups if g["muon"]]
    assert len(muon) == 1 and all(p.dim() == 4 for p in muon[0]["params"])
    assert len(muon[0]["params"]) == 6                    # 3 groups x 2 convs; the whitening conv is frozen
    from resnet_cifar.engine.step import set_lr

    set_lr(opt, 1.5, 0)
    assert muon[0]["lr"] == pytest.approx(0.24)
    # the whitening bias learns at the BN biases' lr under muon (airbench94_muon), still only for its epochs
    white = [g for g in opt.param_groups if g.get("until_epoch") is not None]
    assert len(white) == 1 and white[0]["lr"] == pytest.approx(1.5 * 64)
    set_lr(opt, 1.5, cfg.whiten_bias_epochs)
    assert white[0]["lr"] == 0.0


def test_muon_speedrun_resumes_bitwise(tmp_path):
    data = tiny_dataset(num_classes=3)
    cfg = resolve(flag_values={**TINY, "epochs": 3, "whiten_bias_epochs": 1, "deterministic": True,
                               "checkpoint_every": 3, "batch_size": 24}, preset="speedrun")
    fit(cfg, data, tmp_path / "full")
    with pytest.raises(RuntimeError, match="crash"):
        fit(cfg, data, tmp_path / "cut", progress=CrashAfter(steps=7))       # last.pt at step 6
    state = load_resume_state(tmp_path / "cut")
    assert state["step"] == 6
    fit(cfg, data, tmp_path / "cut", resume_state=state)
    load = lambda d: torch.load(d / "checkpoints" / "last.pt", weights_only=True)
    a, b = load(tmp_path / "full"), load(tmp_path / "cut")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("flag, value", [("--muon-lr", "0"), ("--muon-lr", "-1"), ("--muon-momentum", "1"),
                                         ("--optimizer", "muom")])
def test_bad_muon_values_are_one_line_usage_errors(flag, value, tmp_path, capsys):
    try:
        rc = main(["train", "--preset", "speedrun", "--optimizer", "muon", flag, value, "--out", str(tmp_path / "r")])
    except SystemExit as e:  # argparse's own errors (a choice that does not exist)
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag.lstrip("-").split("-")[0] in err[0]
    assert not (tmp_path / "r").exists()
