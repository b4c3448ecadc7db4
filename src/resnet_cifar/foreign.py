"""Checkpoints of other tools, turned into the state resnet-cifar's checkpoints describe.

Understood (always read with torch.load(weights_only=True): tensors and plain values, no code):

* kuangliu/pytorch-cifar: `{'net': state_dict, 'acc': float, 'epoch': int}` (main.py), keys
  prefixed `module.` when it trained under DataParallel; its ResNets use our key names.
* xternalz/WideResNet-pytorch: `{'epoch', 'state_dict', 'best_prec1'}` (train.py); its WRNs use
  our wide nets' key names.
* a plain state_dict (name -> tensor) of any registry architecture.

`module.` (DataParallel/DDP) and `_orig_mod.` (torch.compile) prefixes are stripped. The
architecture is named (`model=`) or inferred: the first registry model whose state_dict has the
same keys and shapes, at the class count of its head and the width of its stem. A mismatch is one
line naming the first differing key and its shapes (a usage error: the fix is --model).
Normalisation: the given mean/std, else the tool's own constants below, else (a plain
state_dict) it must be given.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .constants import CIFAR10_CLASSES
from .errors import CheckpointError, UsageError

# Normalisation the tools trained with, from their training scripts.
TOOLS = {
    # kuangliu/pytorch-cifar main.py: transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    "kuangliu/pytorch-cifar": {"key": "net", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010)},
    # xternalz/WideResNet-pytorch train.py: mean [125.3, 123.0, 113.9] / 255, std [63.0, 62.1, 66.7] / 255
    "xternalz/WideResNet-pytorch": {"key": "state_dict", "mean": tuple(v / 255.0 for v in (125.3, 123.0, 113.9)),
                                    "std": tuple(v / 255.0 for v in (63.0, 62.1, 66.7))},
}
PREFIXES = ("module.", "_orig_mod.")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def unwrap(obj: Any, where: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state_dict inside a foreign checkpoint (prefixes stripped) and the tool it came from."""
    tool = next((t for t, info in TOOLS.items() if isinstance(obj, dict) and _is_state_dict(obj.get(info["key"]))),
                None)
    sd = obj[TOOLS[tool]["key"]] if tool else obj
    if not _is_state_dict(sd):
        raise CheckpointError(f"{where} is neither a resnet-cifar checkpoint nor a state_dict (name -> tensor), "
                              f"nor a kuangliu/pytorch-cifar {{'net': ...}} or {{'state_dict': ...}} file")
    out = {}
    for k, v in sd.items():
        for p in PREFIXES:
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out, tool


def _meta_state(name: str, num_classes: int = 10, width: float = 1.0) -> dict[str, torch.Size]:
    return dict(_meta_items(name, num_classes, width))


@functools.cache
def _meta_items(name: str, num_classes: int, width: float) -> tuple[tuple[str, torch.Size], ...]:
    """Keys and shapes of a registry model's state_dict, from a meta-device build (no memory, no init)."""
    from .models import build_model

    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes, width=width)
    return tuple((k, v.shape) for k, v in model.state_dict().items())


def first_difference(expected: dict[str, torch.Size], sd: dict[str, torch.Tensor]) -> str | None:
    """'key': what differs, for the first key in the model's order (then the file's), or None."""
    for k, shape in expected.items():
        if k not in sd:
            if k.endswith("num_batches_tracked"):
                continue  # files from before torch 0.4.1 lack it; it is filled with 0
            return f"{k!r} is missing from the file (the model expects {tuple(shape)})"
        if sd[k].shape != shape:
            return f"{k!r} has shape {tuple(sd[k].shape)} in the file, the model expects {tuple(shape)}"
    extra = next((k for k in sd if k not in expected), None)
    return f"{extra!r} {tuple(sd[extra].shape)} is in the file but not in the model" if extra else None


def _fit(name: str, sd: dict[str, torch.Tensor]) -> tuple[int, float, str | None]:
    """(num_classes, width, first difference or None) of `sd` against registry model `name`."""
    base = _meta_state(name)
    keys = list(base)
    head, stem = keys[-1], keys[0]  # the head's bias comes last, the stem's conv weight first
    num_classes = int(sd[head].shape[0]) if head in sd and sd[head].dim() == 1 else 10
    width = sd[stem].shape[0] / base[stem][0] if stem in sd and sd[stem].dim() == 4 else 1.0
    if num_classes < 1 or not width > 0:
        return num_classes, width, f"{head!r} / {stem!r} have no usable shape"
    return num_classes, width, first_difference(_meta_state(name, num_classes, width), sd)


def infer(sd: dict[str, torch.Tensor], where: str, model: str | None = None) -> tuple[str, int, float]:
    """(registry name, num_classes, width) whose state_dict has exactly these keys and shapes."""
    from .models import list_models

    if model is not None:
        if model not in list_models():
            raise UsageError(f"unknown model {model!r}; choose one of: {', '.join(list_models())}")
        num_classes, width, diff = _fit(model, sd)
        if diff:
            raise UsageError(f"{where} does not fit --model {model}: {diff}")
        return model, num_classes, width
    best = None
    for name in list_models():
        num_classes, width, diff = _fit(name, sd)
        if diff is None:
            return name, num_classes, width
        shared = len(set(_meta_state(name)) & set(sd))
        if best is None or shared > best[0]:
            best = (shared, name, diff)
    raise UsageError(f"cannot tell the architecture of {where}: no registry model has its keys and shapes "
                          f"(closest {best[1]}: {best[2]}); pass --model NAME")


def _stats(values, what: str) -> tuple[float, float, float]:
    if isinstance(values, str):
        values = values.split(",")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(v == v and abs(v) != float("inf") for v in out):
        raise UsageError(f"--{what} needs three numbers m1,m2,m3 (one per channel), got {values!r}")
    if what == "std" and not all(v > 0 for v in out):
        raise UsageError(f"--std values must be > 0, got {values!r}")
    return out


def _normalisation(mean, std, known: dict, where: str, required: bool) -> tuple[list | None, list | None]:
    """The given mean/std, else the tool's own; for a plain state_dict they must be given (or None
    when not `required`)."""
    if (mean is None or std is None) and not known:
        if required:
            raise UsageError(f"{where} is a plain state_dict: its normalisation is unknown; pass --mean m1,m2,m3 "
                             "--std s1,s2,s3 (the values it was trained with)")
        return None, None
    return (list(_stats(mean if mean is not None else known["mean"], "mean")),
            list(_stats(std if std is not None else known["std"], "std")))


def convert(obj: Any, where: str, *, model: str | None = None, mean=None, std=None,
            classes=None, stats_required: bool = True) -> dict[str, Any]:
    """A foreign checkpoint as the state `checkpoint.load` returns: model, model_args, classes,
    mean, std (and `foreign`: the tool, `path`: where). Nothing is built here. stats_required=False
    (weights only, e.g. --init-from): unknown statistics are None instead of an error."""
    sd, tool = unwrap(obj, where)
    name, num_classes, width = infer(sd, where, model)
    mean, std = _normalisation(mean, std, TOOLS.get(tool, {}), where, stats_required)
    if classes is None:
        classes = list(CIFAR10_CLASSES) if num_classes == 10 else [f"class_{i}" for i in range(num_classes)]
    if len(classes) != num_classes:
        raise UsageError(f"{where} has {num_classes} outputs, but {len(classes)} class names were given")
    expected = _meta_state(name, num_classes, width)
    state = dict(sd)
    for k in expected:
        if k not in state:  # num_batches_tracked of old files
            state[k] = torch.tensor(0, dtype=torch.long)
    return {"model": state, "model_args": {"name": name, "num_classes": num_classes, "width": width},
            "classes": list(classes), "mean": mean, "std": std, "foreign": tool or "state_dict", "path": where}
