"""`resnet-cifar summary --model NAME [--num-classes 10] [--width 1.0] [--depth 3] [--json]`."""

from __future__ import annotations

import json


def add_parser(subparsers):
    p = subparsers.add_parser(
        "summary", help="layer table, parameter count and MACs of a model",
        description="Print a model's layers (output shape and parameters for one 32x32 image), "
                    "total and trainable parameters, and multiply-accumulates per image.")
    p.add_argument("--model", default="resnet18", help="registry name (default resnet18)")
    p.add_argument("--num-classes", type=int, default=10, help="output classes (default 10)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    p.add_argument("--depth", type=int, default=3,
                   help="deepest tree level shown in the table (default 3; deeper layers are folded in)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..errors import UsageError
    from ..summary import format_table, summarize

    if args.depth < 0:
        raise UsageError(f"--depth must be >= 0, got {args.depth}")
    s = summarize(args.model, num_classes=args.num_classes, width=args.width)
    if args.json:
        print(json.dumps(s))
    else:
        print(f"{s['model']} (num_classes={s['num_classes']}, width={s['width']:g}), "
              f"input {s['input_shape']}")
        print(format_table(s, max_depth=args.depth))
    return 0
