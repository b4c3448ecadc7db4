"""`speedrun_resnet`: a residual variant of airbench94's network, built for least compute to accuracy.

airbench94 (Keller Jordan, github.com/KellerJordan/cifar10-airbench, PyPI airbench 0.1.8,
`lib_airbench94.py`) reaches 94.0% on CIFAR-10 in ~0.36 PFLOP of training with a 7-layer net
without residuals. This net keeps its shape and its compute and adds the residual connection
airbench96 uses inside each conv group:

    whiten: frozen 2x2 conv, 3 -> 24 channels (+ bias), from the training images' patch covariance
    GELU
    3 x group(c_out):  conv3x3 -> maxpool 2 -> BN -> GELU = x0;  x0 + GELU(BN(conv3x3(x0)))
    maxpool 3 -> flatten -> linear (no bias) -> x 1/9

Widths 64 / 256 / 256 (x `width`). BatchNorm has no scale (weight frozen at 1; only the bias is
learnt, at a higher lr: see optim.py) and momentum 0.4 with eps 1e-12, as airbench's. Every 3x3 conv
starts as the identity on its first c_in output channels (dirac init, airbench's `Conv`). The
whitening weights are not learnt: `init_whitening(model, images)` computes them from normalised
training images (eigenvectors of the 2x2 patch covariance, scaled by 1/sqrt(eigenvalue + eps),
and their negatives), as airbench's `init_whitening_conv`.

MACs per 32x32 image at width 1: 118.1 M, 1.97 M parameters (1.97 M trainable): the same as airbench94's
net, whose layers it keeps; the residual connections add no conv.

`speedrun_resnet_deep` (res_convs=2) puts two conv-BN-GELU layers under each group's residual add, as
airbench96 (`lib_airbench96.py`: 10 conv layers, there at widths 128 / 512 / 512 for 40 epochs): at width 1
160.7 M MACs an image, 1.36x the shallow net's (1.35x at width 0.75); the extra convs run after each group's pool.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .resnet import _ch

WIDTHS = (64, 256, 256)          # airbench94's hyp['net']['widths']
BN_MOMENTUM = 0.4                # torch's momentum = 1 - airbench's batchnorm_momentum 0.6
BN_EPS = 1e-12                   # airbench's BatchNorm eps
OUTPUT_SCALE = 1 / 9             # airbench's hyp['net']['scaling_factor']
WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4                # airbench's init_whitening_conv eps
WHITEN_IMAGES = 5000             # airbench whitens from the first 5,000 training images


class ScaleFreeBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale is frozen at 1: only the shift (bias) is learnt."""

    def __init__(self, num_features: int, momentum: float = BN_MOMENTUM, eps: float = BN_EPS):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


def dirac_conv(c_in: int, c_out: int, kernel: int = 3, padding: int = 1, bias: bool = False) -> nn.Conv2d:
    """A conv whose first min(c_in, c_out) filters start as the identity (torch's default init for the rest)."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=bias)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(c_in, c_out)])
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


class ResidualGroup(nn.Module):
    """conv -> pool -> BN -> GELU, then `res_convs` conv-BN-GELU layers added back (airbench96's group)."""

    def __init__(self, c_in: int, c_out: int, res_convs: int = 1):
        super().__init__()
        self.conv1 = dirac_conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = ScaleFreeBatchNorm(c_out)
        self.residual = nn.Sequential(*[
            nn.Sequential(dirac_conv(c_out, c_out), ScaleFreeBatchNorm(c_out), nn.GELU())
            for _ in range(res_convs)])

    def forward(self, x):
        x = F.gelu(self.norm1(self.pool(self.conv1(x))))
        return x + self.residual(x)


class SpeedrunResNet(nn.Module):
    own_init = True  # build_model keeps this init (dirac convs, whitening) instead of Kaiming's

    def __init__(self, num_classes: int = 10, width: float = 1.0, widths=WIDTHS, res_convs: int = 1):
        super().__init__()
        w1, w2, w3 = (_ch(c, width) for c in widths)
        whiten_width = 2 * 3 * WHITEN_KERNEL ** 2
        self.whiten = nn.Conv2d(3, whiten_width, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        with torch.no_grad():
            self.whiten.bias.zero_()
        self.group1 = ResidualGroup(whiten_width, w1, res_convs)
        self.group2 = ResidualGroup(w1, w2, res_convs)
        self.group3 = ResidualGroup(w2, w3, res_convs)
        self.pool = nn.MaxPool2d(3)
        self.linear = nn.Linear(w3, num_classes, bias=False)
        self.scale = OUTPUT_SCALE

    def forward(self, x):
        x = F.gelu(self.whiten(x))
        x = self.group3(self.group2(self.group1(x)))
        x = self.pool(x).flatten(1)
        return self.linear(x) * self.scale


# --------------------------------------------------------------------------- patch whitening
def patch_covariance(images: torch.Tensor, kernel: int = WHITEN_KERNEL, chunk: int = 500) -> torch.Tensor:
    """Second moment (c*k*k, c*k*k) of all k x k patches (stride 1) of float images (N, C, H, W).

    Accumulated in float64 over chunks of images, so 5,000 images need ~20 MB, not ~250 MB.
    Like airbench, the patches are not centred (the images are already normalised).
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"expected float images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    c = images.shape[1]
    d = c * kernel * kernel
    cov = torch.zeros(d, d, dtype=torch.float64, device=images.device)
    count = 0
    for part in images.split(chunk):
        # (n, c, H', W', k, k) -> (n*H'*W', c*k*k), in airbench's (c, kh, kw) order
        p = part.double().unfold(2, kernel, 1).unfold(3, kernel, 1)
        p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, d)
        cov += p.T @ p
        count += p.shape[0]
    return cov / max(count, 1)


def whitening_weights(images: torch.Tensor, kernel: int = WHITEN_KERNEL, eps: float = WHITEN_EPS) -> torch.Tensor:
    """Conv weights (2*c*k*k, c, k, k): eigenvectors / sqrt(eigenvalue + eps), largest first, then negated."""
    c = images.shape[1]
    cov = patch_covariance(images, kernel)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)          # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).reshape(-1, c, kernel, kernel)
    return torch.cat([filters, -filters]).float()


@torch.no_grad()
def init_whitening(model: nn.Module, images: torch.Tensor, eps: float = WHITEN_EPS) -> None:
    """Set the frozen whitening conv of `model` from normalised float training images (N, 3, 32, 32)."""
    conv = model.whiten
    weights = whitening_weights(images.to(conv.weight.device), conv.kernel_size[0], eps)
    conv.weight.copy_(weights.to(conv.weight.dtype))
