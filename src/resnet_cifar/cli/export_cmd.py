"""`resnet-cifar export CKPT --format onnx|torchscript --out FILE`."""

from __future__ import annotations

import json


def add_parser(subparsers):
    p = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX or TorchScript (and check it)",
        description="Export a checkpoint (file or run directory) to ONNX or TorchScript with a dynamic "
                    "batch axis, reload the file (onnxruntime / torch.jit.load), compare its outputs "
                    "with PyTorch on random normalised images and print the max abs difference. "
                    "The file is written only when it matches, and an existing file only with --force. Input: normalised float32 "
                    "(N, 3, 32, 32); output: logits.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run directory")
    p.add_argument("--format", choices=("onnx", "torchscript"),
                   help="default: from --out's suffix (.onnx, or .ts/.pt for TorchScript)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists (never the checkpoint itself)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..export import export

    r = export(args.checkpoint, args.out, args.format, force=args.force)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"exported {r['checkpoint']} ({r['model_args']['name']}, {len(r['classes'])} classes) "
          f"to {r['out']} ({r['format']}, {r['bytes'] / 1e6:.2f} MB, exporter: {r['exporter']})")
    print(f"check: max abs difference vs PyTorch {r['max_abs_diff']:.3g} on {r['check_batch']} random "
          f"images (tolerance {r['tolerance']:.3g}): ok")
    mean, std = (", ".join(f"{v:.4f}" for v in r[k]) for k in ("mean", "std"))
    print(f"input 'images' float32 [batch, 3, 32, 32] normalised with mean [{mean}] std [{std}]; "
          f"output 'logits' [batch, {len(r['classes'])}]")
    return 0
