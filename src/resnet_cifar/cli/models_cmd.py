"""`resnet-cifar models [--num-classes N] [--json]`: the models `--model` accepts."""

from __future__ import annotations

import json


def add_parser(subparsers):
    p = subparsers.add_parser(
        "models", help="the models --model accepts: parameters, MACs per image, family",
        description="List every model of the registry with its parameter count, multiply-accumulates "
                    "per 32x32 image (Conv2d + Linear) and family. `summary --model NAME` shows one "
                    "model layer by layer.")
    p.add_argument("--num-classes", type=int, default=10, help="output classes (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..catalog import format_catalog, model_catalog
    from ..errors import UsageError

    if args.num_classes < 1:
        raise UsageError(f"--num-classes must be >= 1, got {args.num_classes}")
    rows = model_catalog(num_classes=args.num_classes)
    if args.json:
        print(json.dumps({"num_classes": args.num_classes, "models": rows}))
    else:
        print(format_catalog(rows))
        print("(MACs: multiply-accumulates per 32x32 image; `resnet-cifar summary --model NAME` for the layers)")
    return 0
