"""The model catalogue: every registry model with its parameters, MACs per image and family.

`model_catalog(num_classes)` is what `resnet-cifar models` prints. The models are built on torch's
meta device (shapes only, no memory, no initialisation cost), so listing resnet152 is as cheap as
listing resnet20; parameters and MACs come from `summary.summarize_model`, the numbers
`resnet-cifar summary --model NAME` shows for one model.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

# (model class, residual block class) -> family, as the papers name them.
FAMILIES = {
    ("ResNet", "BasicBlock"): "ResNet, basic blocks (He et al. 2016; 3x3 stem for 32x32)",
    ("ResNet", "Bottleneck"): "ResNet, bottleneck blocks (He et al. 2016; 3x3 stem for 32x32)",
    ("ResNet", "PreActBlock"): "pre-activation ResNet (He et al. 2016, identity mappings)",
    ("CifarResNet", "CifarBasicBlock"): "CIFAR ResNet, 6n+2 layers (He et al. 2016, section 4.2)",
}


def family(model: nn.Module) -> str:
    """The family of a built model: its class and the class of its residual blocks."""
    kind = type(model).__name__
    block = next((type(m).__name__ for m in model.modules()
                  if m is not model and type(m).__name__.endswith(("Block", "Bottleneck"))), "")
    return FAMILIES.get((kind, block), f"{kind} ({block})" if block else kind)


def model_catalog(num_classes: int = 10) -> list[dict[str, Any]]:
    """One row per registry model, in registry order: name, params, macs_per_image, family."""
    import torch

    from .models import build_model, list_models
    from .summary import summarize_model

    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = build_model(name, num_classes=num_classes)
            s = summarize_model(model)
        rows.append({"name": name, "params": s["total_params"], "macs_per_image": s["macs_per_image"],
                     "family": family(model)})
    return rows


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def format_catalog(rows: list[dict[str, Any]]) -> str:
    """The catalogue as an aligned text table."""
    header = ("model", "params", "MACs/image", "family")
    cells = [(r["name"], _millions(r["params"]), _millions(r["macs_per_image"]), r["family"]) for r in rows]
    w = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(3)]
    lines = [f"{header[0]:<{w[0]}}  {header[1]:>{w[1]}}  {header[2]:>{w[2]}}  {header[3]}"]
    lines += [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}  {d}" for a, b, c, d in cells]
    return "\n".join(lines)
