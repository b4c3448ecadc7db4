"""`resnet-cifar bench`: training and evaluation images/s, ours vs the tutorial's DataLoader pipeline."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import AMP_MODES, COMPILE_MODES
from ..constants import DATASETS
from .common import add_device_flag, stderr_log


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="images/s of our training step and evaluation vs the tutorial's DataLoader pipeline",
        description="Measure training and evaluation images/s of our pipeline (the real engine step) and, in "
                    "the same run, of the classic tutorial pipeline (torchvision DataLoader, PIL transforms, "
                    "fp32). Warm-up steps are excluded; figures are medians over timed windows that alternate "
                    "between the two. The baseline needs torchvision: pip install 'resnet-cifar[vision]'; "
                    "without it only ours is measured (--baseline makes it required).")
    p.add_argument("--model", default="resnet18", metavar="NAME")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = the reference model)")
    p.add_argument("--batch-size", type=int, default=128)
    add_device_flag(p)
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="timed training steps per pipeline (default: 100 on CUDA, 10 on the CPU)")
    p.add_argument("--warmup", type=int, default=None, metavar="N",
                   help="untimed steps first: compilation, autotuning, worker start (default: 20 on CUDA, 2 on CPU)")
    p.add_argument("--windows", type=int, default=5, metavar="N", help="timed windows; the median is reported")
    p.add_argument("--amp", choices=AMP_MODES, default="auto", help="ours only; the baseline is fp32")
    p.add_argument("--compile", choices=COMPILE_MODES, default="auto", help="ours only (auto: on for CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="ours only")
    p.add_argument("--eval-images", type=int, default=None, metavar="N",
                   help="images per evaluation window (default: 10000 on CUDA, 1024 on the CPU)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="use real images (with --data-dir); default: synthetic uint8 images")
    p.add_argument("--data-dir", default=None, metavar="PATH")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--baseline", dest="baseline", action="store_true", default=None,
                   help="require the tutorial baseline (an error when torchvision is missing)")
    b.add_argument("--no-baseline", dest="baseline", action="store_false", help="measure ours only")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="baseline DataLoader workers (default: min(4, cores), as the tutorial)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(run=run)


def run(args) -> int:
    from .. import runtime
    from ..bench import format_table, run_bench
    from ..errors import UsageError

    if args.data_dir and not args.dataset:
        raise UsageError("--data-dir needs --dataset (cifar10, cifar100 or folder)")
    if args.eval_images is not None and args.eval_images < 1:
        raise UsageError(f"--eval-images must be >= 1, got {args.eval_images}")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    runtime.configure_threads()
    result = run_bench(model=args.model, width=args.width, batch_size=args.batch_size, device=args.device,
                       steps=args.steps, warmup=args.warmup, windows=args.windows, amp=args.amp,
                       compile=args.compile, channels_last=args.channels_last, dataset=args.dataset,
                       data_dir=args.data_dir, baseline=args.baseline, baseline_workers=args.workers,
                       eval_images=args.eval_images, log=None if args.json else stderr_log)
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(format_table(result), file=sys.stdout, flush=True)
    return 0
