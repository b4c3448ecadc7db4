"""The speedrun recipe's parts, each against a hand count or airbench94's own code (copied here as the reference)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from resnet_cifar.compute import eval_flops, forward_macs, images_seen, train_flops
from resnet_cifar.data.altflip import alternating_flips, base_flips
from resnet_cifar.lookahead import Lookahead
from resnet_cifar.models import build_model
from resnet_cifar.models.speedrun import ScaleFreeBatchNorm, init_whitening, whitening_weights
from resnet_cifar.optim import group_lr, sgd_hyperparameters, speedrun_param_groups, triangle
from resnet_cifar.tta import TTA_VIEWS, tta_logits


def _smooth_images(n=40, seed=0):
    """Float images with correlated neighbouring pixels and channels (so whitening has work to do)."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(n, 3, 34, 34, generator=g), 3, 1)     # spatial correlation
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.3, 0.0], [-0.6, 0.2, 0.4]])  # channel correlation
    return torch.einsum("dc,nchw->ndhw", mix, x)


# ------------------------------------------------------------------------------ compute
def test_train_and_eval_flops_match_a_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    conv = 32 * 32 * 4 * (3 * 3 * 3)          # output pixels x out channels x (in channels x kernel)
    linear = 4 * 32 * 32 * 10
    assert forward_macs(net) == conv + linear == 151_552
    assert train_flops(forward_macs(net), 100) == (conv + linear) * 2 * 3 * 100
    assert eval_flops(forward_macs(net), 100, views=6) == (conv + linear) * 2 * 100 * 6
    assert images_seen(45_000, 10) == 450_000


def test_speedrun_resnet_macs_by_hand():
    m = build_model("speedrun_resnet")
    by_hand = (31 * 31 * 24 * 3 * 2 * 2          # whitening 2x2, no padding: 31x31 out
               + 31 * 31 * 64 * 24 * 9           # group1 conv1 (before the pool)
               + 15 * 15 * 64 * 64 * 9           # group1 residual conv at 15x15
               + 15 * 15 * 256 * 64 * 9 + 7 * 7 * 256 * 256 * 9
               + 7 * 7 * 256 * 256 * 9 + 3 * 3 * 256 * 256 * 9
               + 256 * 10)
    assert forward_macs(m) == by_hand == 118_147_360
    # airbench94's budget: 9.9 epochs of 50,000 images at these MACs is its ~0.35 PFLOP
    assert 0.34e15 < train_flops(by_hand, 50_000 * 9.9) < 0.36e15


def test_speedrun_resnet_deep_adds_one_conv_per_group_under_the_residual():
    shallow, deep = build_model("speedrun_resnet"), build_model("speedrun_resnet_deep")
    extra = 15 * 15 * 64 * 64 * 9 + 7 * 7 * 256 * 256 * 9 + 3 * 3 * 256 * 256 * 9  # after each group's pool
    assert forward_macs(deep) == forward_macs(shallow) + extra == 160_651_552
    for group in (deep.group1, deep.group2, deep.group3):
        assert len(group.residual) == 2                           # conv-BN-GELU twice, then the add
        for layer in group.residual:
            x = torch.randn(1, layer[0].in_channels, 5, 5)
            assert torch.allclose(layer[0](x), x, atol=1e-6)      # each starts as the identity (dirac)


# ------------------------------------------------------------------------------ the net
def test_speedrun_resnet_init_is_dirac_and_scale_free():
    torch.manual_seed(0)
    m = build_model("speedrun_resnet", width=0.125)
    conv = m.group1.residual[0][0]
    x = torch.randn(2, conv.in_channels, 8, 8)
    assert torch.allclose(conv(x), x, atol=1e-6)                 # identity at init (c_in == c_out)
    bns = [mod for mod in m.modules() if isinstance(mod, ScaleFreeBatchNorm)]
    assert len(bns) == 6 and all((b.weight == 1).all() and not b.weight.requires_grad for b in bns)
    assert not m.whiten.weight.requires_grad and m.whiten.bias.requires_grad
    w = m.group1.conv1.weight                                     # 24 -> 8 channels: 8 identity filters
    assert torch.equal(w, nn.init.dirac_(torch.empty(8, 24, 3, 3)))


# ------------------------------------------------------------------------------ whitening
def _airbench_whitening(train_set, eps=5e-4):
    """airbench 0.1.8 utils.get_patches / get_whitening_parameters / init_whitening_conv, verbatim math."""
    c, (h, w) = train_set.shape[1], (2, 2)
    patches = train_set.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    n = patches.shape[0]
    flat = patches.view(n, -1)
    cov = (flat.T @ flat) / n
    eigenvalues, eigenvectors = torch.linalg.eigh(cov, UPLO="U")
    eigenvalues, eigenvectors = eigenvalues.flip(0).view(-1, 1, 1, 1), eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    return torch.cat((scaled, -scaled))


def test_whitening_weights_match_airbench_up_to_eigenvector_sign():
    x = _smooth_images()
    ours, ref = whitening_weights(x), _airbench_whitening(x)
    assert ours.shape == ref.shape == (24, 3, 2, 2)
    sign = torch.sign((ours * ref).flatten(1).sum(1)).view(-1, 1, 1, 1)
    assert torch.allclose(ours, sign * ref, rtol=1e-3, atol=1e-3)
    assert torch.equal(ours[12:], -ours[:12])


def test_whitened_patches_have_unit_covariance():
    x = _smooth_images()
    m = build_model("speedrun_resnet", width=0.125)
    init_whitening(m, x, eps=1e-8)
    out = F.conv2d(x, m.whiten.weight[:12])                     # the 12 whitened channels
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = flat.T @ flat / flat.shape[0]
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert not m.whiten.weight.requires_grad


# ------------------------------------------------------------------------------ optimiser pieces
def _airbench_triangle(steps, start=0.2, end=0.07, peak=0.23):
    xp = torch.tensor([0, int(peak * steps), steps])
    fp = torch.tensor([start, 1, end])
    x = torch.arange(1 + steps)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - (m * xp[:-1])
    indices = torch.clamp(torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1, 0, len(m) - 1)
    return m[indices] * x + b[indices]


@pytest.mark.parametrize("total", [426, 50, 7])
def test_triangle_equals_airbench_schedule(total):
    ref = _airbench_triangle(total)
    ours = torch.tensor([triangle(s, total) for s in range(total + 1)])
    assert torch.allclose(ours, ref.float(), atol=1e-6)


def test_sgd_hyperparameters_convert_airbench_decoupled_values():
    lr, wd = sgd_hyperparameters(1024)
    assert lr == pytest.approx(1.5) and wd == pytest.approx(0.0153 / 11.5)
    assert sgd_hyperparameters(512)[0] == pytest.approx(0.75) and sgd_hyperparameters(512)[1] == wd
    # the same step as airbench's torch SGD on the *summed* loss: lr_sum * (g_sum + wd_sum p)
    kilostep = 1024 * (1 + 1 / 0.15)
    lr_sum, wd_sum = 11.5 / kilostep, 0.0153 * 1024 / kilostep / (11.5 / kilostep)
    g_mean, p = 0.3, 2.0
    assert lr * (g_mean + wd * p) == pytest.approx(lr_sum * (g_mean * 1024 + wd_sum * p))


def test_param_groups_scale_norm_biases_and_stop_the_whitening_bias():
    m = build_model("speedrun_resnet", width=0.125)
    groups = speedrun_param_groups(m, weight_decay=0.01, bias_lr_scale=64, whiten_bias_epochs=3)
    norm, white, rest = groups
    bn_biases = {id(mod.bias) for mod in m.modules() if isinstance(mod, ScaleFreeBatchNorm)}
    assert {id(p) for p in norm["params"]} == bn_biases
    assert norm["lr_scale"] == 64 and norm["weight_decay"] == pytest.approx(0.01 / 64)
    assert white["params"] == [m.whiten.bias]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in m.parameters() if p.requires_grad)   # each once, no frozen
    assert group_lr(norm, 0.5, 9) == 32.0 and group_lr(rest, 0.5, 9) == 0.5
    assert group_lr(white, 0.5, 2) == 0.5 and group_lr(white, 0.5, 3) == 0.0
    torch.optim.SGD(groups, lr=0.1, momentum=0.85, nesterov=True)   # torch accepts the extra keys


# ------------------------------------------------------------------------------ lookahead
def test_lookahead_follows_airbench_rule_and_resumes_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    la = Lookahead(model)
    slow0 = {k: v.clone() for k, v in model.state_dict().items()}
    total = 12

    def train_step(m, step):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * step)
        m(torch.randn(8, 3, generator=torch.Generator().manual_seed(step)))   # moves BN running stats

    for step in range(1, 5):
        train_step(model, step)
        la.after_step(model, step, total)
    assert not torch.equal(model[0].weight, slow0["0.weight"])        # no update before step 5
    train_step(model, 5)
    fast = {k: v.clone() for k, v in model.state_dict().items()}
    la.after_step(model, 5, total)
    d = 0.95 ** 5 * (5 / total) ** 3
    for k in ("0.weight", "1.running_mean", "1.bias"):
        expected = slow0[k] + (1 - d) * (fast[k] - slow0[k])
        assert torch.allclose(model.state_dict()[k], expected) and torch.allclose(la.slow[k], expected)
    assert model.state_dict()["1.num_batches_tracked"] == fast["1.num_batches_tracked"]   # ints untouched

    saved_model, saved_la = {k: v.clone() for k, v in model.state_dict().items()}, la.state_dict()
    for step in range(6, total + 1):
        train_step(model, step)
        la.after_step(model, step, total)
    end = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(end[k], la.slow[k]) for k in la.slow)       # the last step lands on the slow copy

    model.load_state_dict(saved_model)
    la2 = Lookahead(model)
    la2.load_state_dict(saved_la)
    for step in range(6, total + 1):
        train_step(model, step)
        la2.after_step(model, step, total)
    assert all(torch.equal(end[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------ TTA
def test_tta_views_and_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)).eval()
    x = torch.randn(3, 3, 8, 8)
    model(x)
    flip = lambda t: t.flip(-1)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :8, :8], padded[..., 2:, 2:]
    expected = (0.25 * model(x) + 0.25 * model(flip(x))
                + 0.125 * sum(model(v) for v in (up_left, flip(up_left), down_right, flip(down_right))))
    assert torch.allclose(tta_logits(model, x, "flip_translate"), expected, atol=1e-6)
    assert torch.allclose(tta_logits(model, x, "flip"), 0.5 * model(x) + 0.5 * model(flip(x)), atol=1e-6)
    assert torch.equal(tta_logits(model, x, "none"), model(x))
    assert TTA_VIEWS == {"none": 1, "flip": 2, "flip_translate": 6}
    with pytest.raises(ValueError, match="flip_translate"):
        tta_logits(model, x, "flips")


def test_tta_of_a_flip_and_shift_invariant_model_is_the_model():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()   # mean colour: invariant to both
    x = torch.rand(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    padded_mean_changes = tta_logits(model, x) - model(x)
    assert padded_mean_changes.abs().max() < 0.1          # reflect padding moves the mean a little only


# ------------------------------------------------------------------------------ alternating flips
def test_alternating_flips_flip_each_image_every_other_epoch():
    n, seed = 64, 3
    order0, order1 = torch.randperm(n), torch.randperm(n)
    per_image = []
    for epoch, order in enumerate([order0, order1, order0, order1]):
        f = alternating_flips(order, seed, epoch)
        img = torch.empty(n, dtype=torch.bool)
        img[order] = f                                    # back from positions to image indices
        per_image.append(img)
    assert torch.equal(per_image[0], base_flips(n, seed)) and 16 < int(per_image[0].sum()) < 48
    assert torch.equal(per_image[1], ~per_image[0]) and torch.equal(per_image[2], per_image[0])
    assert torch.equal(per_image[3], per_image[1])
    assert not torch.equal(base_flips(n, seed), base_flips(n, seed + 1))


# ------------------------------------------------------------------------------ all together
def test_recipe_parts_train_a_tiny_speedrun_resnet(synthetic_images):
    torch.manual_seed(0)
    x8, y = synthetic_images(16, 4)
    x = (torch.from_numpy(x8).float() / 255 - 0.5) / 0.25
    y = torch.from_numpy(y)
    model = build_model("speedrun_resnet", num_classes=4, width=0.125)
    init_whitening(model, x)
    lr, wd = sgd_hyperparameters(len(y))
    opt = torch.optim.SGD(speedrun_param_groups(model, wd), lr=lr, momentum=0.85, nesterov=True)
    la, total = Lookahead(model), 30
    losses = []
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = group_lr(g, lr * triangle(step, total), epoch=step // 10)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        la.after_step(model, step + 1, total)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses
    model.eval()
    assert (tta_logits(model, x).argmax(1) == y).float().mean() > 0.9


def test_summary_prints_the_speedrun_nets_macs_and_trainable_params(capsys):
    from resnet_cifar.cli import main

    assert main(["summary", "--model", "speedrun_resnet"]) == 0
    out = capsys.readouterr().out
    assert "(Conv2d + Linear): 118,147,360 (118.15 M)" in out
    assert "Trainable params: 1,971,352" in out and "Non-trainable params: 1,440" in out
