"""Model summary: a layer table (as torchinfo prints it), parameter totals and MACs per image.

`summarize(name, num_classes, width)` builds the model from the registry, runs one 32x32 image
through it with forward hooks, and returns plain data: one row per module (tree order, like
torchinfo's "Layer (type:depth-idx)" column), its output shape and its own parameter count,
plus the totals. `format_table(summary)` turns that into text.

MACs are multiply-accumulates of the Conv2d and Linear layers for one image (the usual
"FLOPs" figure of papers is about twice this): a Conv2d does out_h * out_w * out_channels *
(in_channels / groups) * kh * kw of them, a Linear in_features * out_features. BatchNorm, ReLU,
additions and pooling are left out, as torchinfo does for its "Mult-Adds" total of these layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .constants import IMAGE_SIZE
from .errors import UsageError


def _shape(out) -> list[int] | None:
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return list(out[0].shape)
    return None


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_output = (module.in_channels // module.groups) * kh * kw
        return int(out[0].numel()) * per_output      # out[0]: one image of the batch
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features * int(out[0].numel() // module.out_features)
    return 0


def _record_forward(model: nn.Module, input_size: tuple[int, ...]) -> dict[int, dict]:
    """One forward pass with hooks: {id(module): {"calls", "macs", "output_shape"}}."""
    seen: dict[int, dict] = {}
    hooks = []

    def hook(module, _inputs, output):
        rec = seen.setdefault(id(module), {"calls": 0, "macs": 0, "output_shape": None})
        rec["calls"] += 1
        rec["output_shape"] = _shape(output)
        if isinstance(output, torch.Tensor):
            rec["macs"] += _macs(module, output)

    for m in model.modules():
        hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


def _layer_rows(model: nn.Module, seen: dict[int, dict]) -> list[dict[str, Any]]:
    """One row per module in tree order (torchinfo's "Layer (type:depth-idx)")."""
    rows: list[dict[str, Any]] = []
    counters: dict[int, int] = {}

    def walk(module: nn.Module, name: str, depth: int):
        own = sum(p.numel() for p in module.parameters(recurse=False))
        own_trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        rec = seen.get(id(module), {})
        counters[depth] = counters.get(depth, 0) + 1
        rows.append({
            "name": name,
            "type": type(module).__name__,
            "depth": depth,
            "index": counters[depth],
            "output_shape": rec.get("output_shape"),
            "params": own,
            "trainable_params": own_trainable,
            "total_params": sum(p.numel() for p in module.parameters()),
            "has_children": any(True for _ in module.children()),
            "macs": rec.get("macs", 0),
        })
        for child_name, child in module.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name, depth + 1)

    walk(model, "", 0)
    return rows


def summarize_model(model: nn.Module, input_size: tuple[int, ...] = (1, 3, IMAGE_SIZE, IMAGE_SIZE)) -> dict[str, Any]:
    """Run one forward pass with hooks; return rows, totals and MACs per image as plain data."""
    rows = _layer_rows(model, _record_forward(model, input_size))
    # parameters() de-duplicates shared tensors, so these are the true totals.
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    return {
        "input_shape": list(input_size),
        "layers": rows,
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "macs_per_image": sum(r["macs"] for r in rows),
        "param_bytes": param_bytes,
        "buffer_bytes": buffer_bytes,
    }


def check_size(name: str, num_classes: int, width: float) -> None:
    """UsageError when the model is out of bounds, decided before anything is allocated: the
    arguments' ranges first, then the parameter count on the meta device."""
    from .bounds import MAX_PARAMS, meta_parameter_count, model_size_problem
    from .models import list_models

    if name not in list_models():
        return   # build_model names the valid ones
    problem = model_size_problem(name, num_classes, width)
    if problem:
        raise UsageError(f"{problem.replace('num_classes', '--num-classes').replace('width', '--width', 1)}")
    n = meta_parameter_count(name, num_classes, width)
    if n > MAX_PARAMS:
        raise UsageError(f"{name} with --width {width:g} and --num-classes {num_classes} has {n:,} parameters "
                         f"({4 * n / 1e9:.0f} GB), more than the {MAX_PARAMS:,} this tool builds; use a smaller --width")


def summarize(name: str, num_classes: int = 10, width: float = 1.0) -> dict[str, Any]:
    """Summary of registry model `name` for 32x32 RGB images (see `summarize_model`)."""
    from .models import build_model

    check_size(name, num_classes, width)
    model = build_model(name, num_classes=num_classes, width=width)
    out = summarize_model(model)
    return {"model": name, "num_classes": num_classes, "width": width, **out}


def _fmt_shape(shape) -> str:
    return "--" if shape is None else "[" + ", ".join(str(s) for s in shape) + "]"


def _has_later_sibling(rows: list[dict], i: int, level: int) -> bool:
    """True when a row after i sits at `level` before any row shallower than that level."""
    for later in rows[i + 1:]:
        if later["depth"] < level:
            return False
        if later["depth"] == level:
            return True
    return False


def _tree_prefixes(rows: list[dict], max_depth: int) -> list[str]:
    """torchinfo-style tree drawing: "├─" for a child, "│    " for an open ancestor level."""
    shown = [r for r in rows if r["depth"] <= max_depth]
    out = []
    for i, r in enumerate(shown):
        d = r["depth"]
        if d == 0:
            out.append("")
            continue
        # an ancestor level stays open while a later row sits at that level under it
        parts = ["│    " if _has_later_sibling(shown, i, level) else "     " for level in range(1, d)]
        parts.append("├─" if _has_later_sibling(shown, i, d) else "└─")
        out.append("".join(parts))
    return out


def format_table(summary: dict[str, Any], max_depth: int = 3) -> str:
    """The summary as a torchinfo-like text table.

    Rows deeper than `max_depth` are folded into their ancestor at `max_depth`, which then shows
    the parameters of its whole subtree; a row with children shown gets "--" unless it holds
    parameters of its own, and so does a layer without parameters (ReLU-free shortcuts, pools).
    """
    rows = summary["layers"]
    shown = [r for r in rows if r["depth"] <= max_depth]
    prefixes = _tree_prefixes(rows, max_depth)
    labels, params = [], []
    for r, pre in zip(shown, prefixes, strict=True):
        labels.append(f"{pre}{r['type']}" + (f": {r['depth']}-{r['index']}" if r["depth"] else ""))
        folded = r["has_children"] and r["depth"] == max_depth
        n = r["total_params"] if folded else r["params"]
        params.append("--" if n == 0 else f"{n:,}")
    shapes = [_fmt_shape(r["output_shape"]) for r in shown]
    w1 = max(len("Layer (type:depth-idx)"), *(len(s) for s in labels)) + 2
    w2 = max(len("Output Shape"), *(len(s) for s in shapes)) + 2
    w3 = max(len("Param #"), *(len(s) for s in params))
    width = w1 + w2 + w3
    lines = ["=" * width,
             f"{'Layer (type:depth-idx)':<{w1}}{'Output Shape':<{w2}}{'Param #':>{w3}}",
             "=" * width]
    for a, b, c in zip(labels, shapes, params, strict=True):
        lines.append(f"{a:<{w1}}{b:<{w2}}{c:>{w3}}")
    macs = summary["macs_per_image"]
    lines += [
        "=" * width,
        f"Total params: {summary['total_params']:,}",
        f"Trainable params: {summary['trainable_params']:,}",
        f"Non-trainable params: {summary['non_trainable_params']:,}",
        f"MACs per {summary['input_shape'][2]}x{summary['input_shape'][3]} image "
        f"(Conv2d + Linear): {macs:,} ({macs / 1e6:,.2f} M)",
        "=" * width,
        f"Params size (MB): {summary['param_bytes'] / 1e6:,.2f}",
        f"Buffers size (MB): {summary['buffer_bytes'] / 1e6:,.2f}",
        "=" * width,
    ]
    return "\n".join(lines)
