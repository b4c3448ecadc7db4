"""Model registry: `build_model(name, num_classes=10)` and `list_models()`.

The registry is an explicit dict, so the set of models is visible in one place and a typo gets a
list of valid names instead of an AttributeError.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch.nn as nn

from ..errors import UsageError
from .resnet import BasicBlock, Bottleneck, CifarResNet, PreActBlock, ResNet, init_weights
from .speedrun import SpeedrunResNet
from .wide import WideResNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet18": partial(ResNet, BasicBlock, [2, 2, 2, 2]),
    "resnet34": partial(ResNet, BasicBlock, [3, 4, 6, 3]),
    "resnet50": partial(ResNet, Bottleneck, [3, 4, 6, 3]),
    "resnet101": partial(ResNet, Bottleneck, [3, 4, 23, 3]),
    "resnet152": partial(ResNet, Bottleneck, [3, 8, 36, 3]),
    "preact_resnet18": partial(ResNet, PreActBlock, [2, 2, 2, 2], preact=True),
    "resnet20": partial(CifarResNet, 20),
    "resnet32": partial(CifarResNet, 32),
    "resnet44": partial(CifarResNet, 44),
    "resnet56": partial(CifarResNet, 56),
    "resnet110": partial(CifarResNet, 110),
    "wrn16_8": partial(WideResNet, 16, 8),
    "wrn28_10": partial(WideResNet, 28, 10),
    "wrn40_4": partial(WideResNet, 40, 4),
    "speedrun_resnet": SpeedrunResNet,
    # airbench96's deeper group (two conv-BN-GELU layers under each residual add): 1.36x the MACs at width 1
    "speedrun_resnet_deep": partial(SpeedrunResNet, res_convs=2),
}
# Models with a dropout rate (`build_model(..., dropout=P)`, train's --dropout).
_WITH_DROPOUT = ("wrn16_8", "wrn28_10", "wrn40_4")


def list_models() -> list[str]:
    return list(_REGISTRY)


def dropout_models() -> tuple[str, ...]:
    """The models `build_model(..., dropout=P)` accepts."""
    return _WITH_DROPOUT


def build_model(name: str, num_classes: int = 10, width: float = 1.0,
                zero_init_residual: bool = False, dropout: float = 0.0) -> nn.Module:
    """Build a freshly initialised model from the registry (dropout: only the wide nets have it)."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}")
    if num_classes < 1:
        raise UsageError(f"num_classes must be >= 1, got {num_classes}")
    if not width > 0:
        raise UsageError(f"width must be > 0, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), got {dropout}")
    if dropout and name not in _WITH_DROPOUT:
        raise UsageError(f"model {name!r} has no dropout; use one of {', '.join(_WITH_DROPOUT)} or --dropout 0")
    extra = {"dropout": dropout} if dropout else {}
    model = _REGISTRY[name](num_classes=num_classes, width=width, **extra)
    if getattr(model, "own_init", False):  # e.g. speedrun_resnet: dirac convs, frozen whitening
        return model
    return init_weights(model, zero_init_residual)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["build_model", "list_models", "dropout_models", "count_parameters"]
