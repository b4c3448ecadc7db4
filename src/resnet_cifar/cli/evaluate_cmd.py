"""`resnet-cifar evaluate CKPT`: loss, top-1, top-5 and per-class accuracy of a checkpoint."""

from __future__ import annotations

import json

from ..constants import DATASETS
from .common import add_device_flag, add_foreign_flags, foreign_kwargs, stderr_log


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the test or validation split")
    p.add_argument("checkpoint", metavar="CKPT", help="a .pt file, or a run directory (uses checkpoints/best.pt)")
    p.add_argument("--dataset", choices=DATASETS, help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", metavar="PATH", help="default: the data dir the checkpoint was trained on")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--tta", action="store_true", help="average the predictions of each image and its mirror")
    p.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_device_flag(p)
    add_foreign_flags(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from .. import checkpoint, runtime
    from ..data import load_dataset
    from ..engine import evaluate_checkpoint
    from ..errors import UsageError

    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    runtime.keep_host_memory(device=runtime.pick_device(args.device))
    state = checkpoint.load_any(args.checkpoint, **foreign_kwargs(args))
    saved = state.get("config", {})
    dataset = args.dataset or saved.get("dataset", "cifar10")
    data_dir = args.data_dir or saved.get("data_dir", "data")
    data = load_dataset(dataset, data_dir, log=None if args.json else stderr_log)
    r = evaluate_checkpoint(state, data, split=args.split, tta=args.tta, device=args.device,
                            batch_size=args.batch_size)
    if r["data_differs"]:
        what = ("so this validation split is not the run's: training images may be among it" if args.split == "val"
                else "so these are not the images the run was tested on")
        stderr_log(f"warning: the data differ from the run's ({'; '.join(r['data_differs'][:3])}), {what}")
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']} on {r['dataset']} {r['split']} ({r['n']} images{', flip TTA' if r['tta'] else ''}): "
          f"loss {r['loss']:.4f}  top-1 {100 * r['acc']:.2f}%  top-5 {100 * r['top5']:.2f}%")
    width = max(len(c) for c in r["per_class_acc"])
    for name, acc in r["per_class_acc"].items():
        print(f"  {name:<{width}}  {'n/a' if acc is None else f'{100 * acc:6.2f}%'}")
    return 0
