"""`resnet-cifar evaluate CKPT`: loss, top-1, top-5 and per-class accuracy of a checkpoint."""

from __future__ import annotations

import json

from ..config import TTA_MODES
from ..constants import DATASETS
from .common import add_device_flag, add_foreign_flags, foreign_kwargs, stderr_log


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the test or validation split")
    p.add_argument("checkpoint", metavar="CKPT", help="a .pt file, or a run directory (uses checkpoints/best.pt)")
    p.add_argument("--dataset", choices=DATASETS, help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", metavar="PATH", help="default: the data dir the checkpoint was trained on")
    p.add_argument("--split", choices=("test", "val"),
                   help="default: test, or the run's validation split when the dataset has no test split")
    p.add_argument("--tta", action="store_true", help="test-time augmentation with the run's --tta-mode (flip: "
                   "each image and its mirror; flip_translate: airbench's 6 views)")
    p.add_argument("--tta-mode", choices=TTA_MODES, help="these views instead of the run's (implies --tta)")
    p.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_device_flag(p)
    add_foreign_flags(p)
    p.set_defaults(run=run)


def _data_source(args, saved: dict) -> tuple[str, str]:
    """(dataset, data dir): the flags, else what the run saved; a saved dir that is gone is a usage error."""
    from pathlib import Path

    from ..errors import UsageError

    dataset = args.dataset or saved.get("dataset", "cifar10")
    if args.data_dir:
        return dataset, args.data_dir
    data_dir = saved.get("data_dir", "data")
    if not Path(data_dir).expanduser().exists():
        where = "" if Path(data_dir).is_absolute() else f" (relative to {Path.cwd()})"
        raise UsageError(f"the checkpoint was trained on {dataset} in {data_dir!r}, which does not exist "
                         f"here{where}; pass --data-dir PATH to where that data is now")
    return dataset, data_dir


def _pick_split(args, data, saved: dict, log) -> str:
    """--split, or test; a dataset without a test split falls back to the run's validation split."""
    from ..errors import UsageError

    if args.split or data.test_x is not None:
        return args.split or "test"
    if not saved.get("val_size", 1):
        raise UsageError(f"dataset {data.name!r} has no test split and the run held out no validation "
                         "images (--val-size 0); add DIR/test/<class>/ images to evaluate on")
    if log is not None:
        log(f"dataset {data.name!r} has no test split: evaluating on the run's validation split "
            "(--split val), the images it chose its best weights on")
    return "val"


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
    dataset, data_dir = _data_source(args, saved)
    log = None if args.json else stderr_log
    data = load_dataset(dataset, data_dir, log=log)
    split = _pick_split(args, data, saved, log)
    r = evaluate_checkpoint(state, data, split=split, tta=args.tta or args.tta_mode is not None,
                            tta_mode=args.tta_mode, device=args.device,
                            batch_size=args.batch_size)
    if r["data_differs"]:
        what = ("so this validation split is not the run's: training images may be among it" if split == "val"
                else "so these are not the images the run was tested on")
        stderr_log(f"warning: the data differ from the run's ({'; '.join(r['data_differs'][:3])}), {what}")
    if args.json:
        print(json.dumps(r))
        return 0
    views = f", {r['tta_mode']} TTA" if r["tta"] else ""
    print(f"{r['model']} on {r['dataset']} {r['split']} ({r['n']} images{views}): "
          f"loss {r['loss']:.4f}  top-1 {100 * r['acc']:.2f}%  top-5 {100 * r['top5']:.2f}%")
    width = max(len(c) for c in r["per_class_acc"])
    for name, acc in r["per_class_acc"].items():
        print(f"  {name:<{width}}  {'n/a' if acc is None else f'{100 * acc:6.2f}%'}")
    return 0
