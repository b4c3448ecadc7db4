"""Bounds on untrusted sizes, and a walk that checks a value is small plain data.

A checkpoint, a config file or a command line is untrusted: a few hundred bytes of pickle or YAML
can describe a value whose `repr` needs gigabytes (lists that reference themselves through
aliases/memo entries, nested a few dozen levels), or model arguments whose model does not fit in
memory. Everything here runs before any `repr`, model construction or allocation, and costs at
most `budget` steps whatever the input.

The limits are generous for any model this package builds (ResNet-18 at width 1 has 11 M
parameters; ImageNet-21k, the largest common label set, has 21,841 classes) and small enough
that refusing is instant.
"""

from __future__ import annotations

import math
from typing import Any

MAX_WIDTH = 16.0             # channel multiplier: 16x ResNet-18 is ~2.9 G parameters already
MAX_NUM_CLASSES = 100_000
MAX_PARAMS = 1_000_000_000   # 4 GB of float32 weights: summary/export refuse above this
MAX_NAME_CHARS = 256         # a class or model name
MAX_NODES = 200_000          # values visited by check_plain (a run's checkpoint holds ~10^4)
MAX_STRING_CHARS = 1 << 20   # all strings of one checked value together
MAX_DEPTH = 32
# Pixels of one image file after the JPEG decoder's own downscaling (draft): 50 Mpx is a large
# photo (8660x5770) and ~150 MB decoded; a 12000x12000 PNG (144 Mpx) is refused from its header.
MAX_IMAGE_PIXELS = 50_000_000

_SCALARS = (bool, int, float, str, type(None))


class TooLarge(ValueError):
    """A value is not small plain data; the message says where and why (no repr of the value)."""


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "shape")


def check_plain(value: Any, where: str, *, budget: int = MAX_NODES, max_depth: int = MAX_DEPTH,
                max_chars: int = MAX_STRING_CHARS, tensors: bool = True) -> None:
    """Raise TooLarge unless `value` is plain data (dict/list/tuple of str/int/float/bool/None,
    and tensors when `tensors`) of at most `budget` nodes, `max_depth` levels and `max_chars`
    characters in all its strings. Shared references count each time they are reached, which is
    what a repr or a copy would pay; the walk stops as soon as a bound is passed.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, where)]
    nodes = chars = 0
    while stack:
        x, depth, path = stack.pop()
        nodes += 1
        if nodes > budget:
            raise TooLarge(f"{where} holds more than {budget:,} values (nested or repeated references)")
        if depth > max_depth:
            raise TooLarge(f"{path} is nested more than {max_depth} levels deep")
        if isinstance(x, str):
            chars += len(x)
            if chars > max_chars:
                raise TooLarge(f"{where} holds more than {max_chars:,} characters of text")
        elif isinstance(x, _SCALARS) or (tensors and _is_tensor(x)):
            continue
        elif isinstance(x, dict):
            for k, v in x.items():
                if not isinstance(k, (str, int)):
                    raise TooLarge(f"{path} has a key of type {type(k).__name__}")
                if isinstance(k, str):
                    chars += len(k)
                    if chars > max_chars:
                        raise TooLarge(f"{where} holds more than {max_chars:,} characters of text")
                stack.append((v, depth + 1, f"{path}.{k}" if isinstance(k, str) and len(k) <= 40 else path))
        elif isinstance(x, (list, tuple)):
            if len(x) > budget:
                raise TooLarge(f"{path} has {len(x):,} items (more than {budget:,})")
            stack.extend((v, depth + 1, path) for v in x)
        else:
            raise TooLarge(f"{path} holds a {type(x).__name__}, not plain data")


def int_in(x: Any, lo: int, hi: int) -> bool:
    """x is a real int (not a bool) with lo <= x <= hi."""
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def float_in(x: Any, lo: float, hi: float, *, lo_open: bool = False) -> bool:
    """x is an int or float (not a bool), finite, within [lo, hi] ((lo, hi] when lo_open)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    x = float(x)
    return math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi


def short_str(x: Any, limit: int = MAX_NAME_CHARS) -> bool:
    return isinstance(x, str) and 0 < len(x) <= limit


def shown(x: Any) -> str:
    """A number for an error message without ever printing something huge: `nan`, `1e+300`,
    `2000000000`; for other types just the type name."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return f"a {type(x).__name__}"
    if isinstance(x, int) and abs(x) < 10**15:
        return str(x)
    try:
        return f"{float(x):g}"
    except OverflowError:
        return "a huge integer"


def model_size_problem(name: Any, num_classes: Any, width: Any) -> str | None:
    """Why these model arguments are out of bounds (a phrase), or None when they are fine.
    Checks types and ranges only; nothing is built."""
    if not short_str(name, 64):
        return f"model name must be a short string, got a {type(name).__name__}"
    if not int_in(num_classes, 1, MAX_NUM_CLASSES):
        return f"num_classes must be an integer from 1 to {MAX_NUM_CLASSES:,}, got {shown(num_classes)}"
    if not float_in(width, 0.0, MAX_WIDTH, lo_open=True):
        return f"width must be a number in (0, {MAX_WIDTH:g}], got {shown(width)}"
    return None


def meta_parameter_count(name: str, num_classes: int, width: float) -> int:
    """Parameters of a registry model, counted on the meta device (no memory is allocated)."""
    import torch

    from .models import build_model

    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes, width=width)
    return sum(p.numel() for p in model.parameters())
