"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: a 3x3 stem of 16 channels, three groups of (d-4)/6 pre-activation basic blocks with
16k/32k/64k channels (strides 1/2/2), then BN-ReLU, global average pooling and a linear head.
A block whose shape changes (channels or stride) gets a 1x1 projection shortcut (no BN), fed by the
block's pre-activated input; otherwise the shortcut is the identity. Optional dropout sits between
the two convolutions of each block, as in the paper.

Module and parameter names follow the widely used PyTorch port (xternalz/WideResNet-pytorch):
`conv1`, `block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}`, `bn1`, `fc`, so its plain
state_dicts load as they are. Parameter counts at 10 classes: WRN-16-8 10,961,370,
WRN-28-10 36,479,194, WRN-40-4 8,949,210 (tests/test_models.py).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .resnet import _ch


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.convShortcut = None
        if stride != 1 or in_planes != planes:
            self.convShortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def last_bn(self):
        return None  # the residual branch ends in a conv, not a BN

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, dropout)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 inputs; `width` scales every channel count (tiny test models)."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 (n >= 1), got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        stem, c1, c2, c3 = (_ch(c, width) for c in (16, 16 * widen, 32 * widen, 64 * widen))
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.block1 = WideGroup(n, stem, c1, 1, dropout)
        self.block2 = WideGroup(n, c1, c2, 2, dropout)
        self.block3 = WideGroup(n, c2, c3, 2, dropout)
        self.bn1 = nn.BatchNorm2d(c3)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
