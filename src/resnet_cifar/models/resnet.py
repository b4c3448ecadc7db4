"""CIFAR ResNets.

Two families:

* ImageNet-depth ResNets adapted to 32x32 inputs (He et al., 2016, as in kuangliu/pytorch-cifar):
  a 3x3 stride-1 stem with no max-pool, four stages of 64/128/256/512 channels (x `expansion` for
  Bottleneck), 1x1 projection shortcut with BN whenever the shape changes. A 7x7 stride-2 stem and a
  max-pool would shrink a 32x32 image to 8x8 before the first block and throw away most of it.
* The CIFAR ResNets of the paper's section 4.2 (resnet20..resnet110): 3 stages of 16/32/64 channels,
  6n+2 layers. Shortcuts use option A (parameter-free: stride-2 subsampling and zero-padded channels),
  as in the paper, which gives resnet20 its 0.27M parameters.

`width` scales every channel count (tiny models for tests); 1.0 is the reference architecture.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al., "Identity Mappings in Deep Residual Networks", 2016)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def last_bn(self):
        return None  # the residual branch ends in a conv, not a BN

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes: int = 10, width: float = 1.0,
                 preact: bool = False):
        super().__init__()
        self.in_planes = _ch(64, width)
        self.preact = preact
        self.conv1 = nn.Conv2d(3, self.in_planes, 3, 1, 1, bias=False)
        self.bn1 = None if preact else nn.BatchNorm2d(self.in_planes)
        self.layer1 = self._make_layer(block, _ch(64, width), num_blocks[0], 1)
        self.layer2 = self._make_layer(block, _ch(128, width), num_blocks[1], 2)
        self.layer3 = self._make_layer(block, _ch(256, width), num_blocks[2], 2)
        self.layer4 = self._make_layer(block, _ch(512, width), num_blocks[3], 2)
        self.bn_final = nn.BatchNorm2d(self.in_planes) if preact else None
        self.linear = nn.Linear(self.in_planes, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(x)
        if self.bn1 is not None:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn_final is not None:
            out = F.relu(self.bn_final(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class ShortcutA(nn.Module):
    """Option A shortcut: subsample spatially and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class CifarBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(in_planes, planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR (He et al., 2016, section 4.2)."""

    def __init__(self, depth: int, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.in_planes = _ch(16, width)
        self.conv1 = nn.Conv2d(3, self.in_planes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        self.layer1 = self._make_layer(_ch(16, width), n, 1)
        self.layer2 = self._make_layer(_ch(32, width), n, 2)
        self.layer3 = self._make_layer(_ch(64, width), n, 2)
        self.linear = nn.Linear(self.in_planes, num_classes)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(CifarBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> nn.Module:
    """Kaiming-normal (fan_out) convs and linear layers, BN gamma 1 / beta 0 (as torchvision's ResNet).

    zero_init_residual sets the last BN gamma of every residual branch to 0, so each block starts
    as the identity (Goyal et al., 2017); it helps large-batch training.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            last = getattr(m, "last_bn", None)
            bn = last() if callable(last) else None
            if bn is not None:
                nn.init.zeros_(bn.weight)
    return model
