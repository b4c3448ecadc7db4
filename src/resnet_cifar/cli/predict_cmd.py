"""`resnet-cifar predict CKPT IMAGE... [--topk 3] [--json] [--device auto|cpu|cuda|mps]`."""

from __future__ import annotations

import json
import sys

from ..config import DEVICES
from .common import add_foreign_flags, foreign_kwargs


def add_parser(subparsers):
    p = subparsers.add_parser(
        "predict", help="classify image files with a checkpoint",
        description="Classify images with a trained checkpoint (a .pt file or a run directory, "
                    "which means RUN_DIR/checkpoints/best.pt). Each image is converted to 32x32 RGB "
                    "exactly as training data is and normalised with the checkpoint's mean/std. "
                    "A file that cannot be read gets its own error line; the rest are still "
                    "answered. Exit 1 if any file failed.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run directory")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (png, jpg, ...)")
    p.add_argument("--topk", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"predictions": [{"file", "top": [{"class", "prob"}], "error"}]}')
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to run (auto: CUDA when available)")
    add_foreign_flags(p)
    p.set_defaults(run=run)
    return p


def format_line(p: dict) -> str:
    if p["error"]:
        return f"{p['file']}: error: {p['error']}"
    top = ", ".join(f"{t['class']} {t['prob']:.1%}" for t in p["top"])
    return f"{p['file']}: {top}" + ("  (resized to 32x32)" if p["resized"] else "")


def run(args) -> int:
    from ..predict import predict_files

    result = predict_files(args.checkpoint, args.images, topk=args.topk, device=args.device, **foreign_kwargs(args))
    failed = [p for p in result["predictions"] if p["error"]]
    if args.json:
        print(json.dumps(result))
    else:
        for p in result["predictions"]:
            print(format_line(p))    # one line per file, in order, errors included
    if failed:
        sys.stdout.flush()
        print(f"resnet-cifar: error: {len(failed)} of {len(result['predictions'])} images could not be "
              f"read (first: {failed[0]['file']}); fix or remove them", file=sys.stderr)
    return 1 if failed else 0
