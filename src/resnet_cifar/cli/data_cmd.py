"""`resnet-cifar data download|stats|preview`: get the data, check its numbers, look at it."""

from __future__ import annotations

import json

from ..config import Config
from .common import add_data_flags, stderr_log


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="download, inspect and preview datasets")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    d = actions.add_parser("download", help="fetch and verify the official CIFAR archive")
    add_data_flags(d)
    d.add_argument("--url", help="mirror URL of the archive (or set RESNET_CIFAR_CIFAR10_URL / _CIFAR100_URL)")
    d.set_defaults(run=run_download)

    s = actions.add_parser("stats", help="per-class counts and per-channel mean/std of the train split")
    add_data_flags(s, defaults=False)  # --dataset: detected from --data-dir's layout when left out
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(run=run_stats)

    v = actions.add_parser("preview", help="a labelled grid of training images, as the network sees them")
    add_data_flags(v, defaults=False)
    v.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    v.add_argument("--augment", action="store_true", help="after the training augmentations (crop + flip, and "
                                                          "the policy, erasing and mixing flags below)")
    _add_policy_flags(v)
    v.add_argument("--seed", type=int, default=0, help="as train's --seed: the same first batch (default 0)")
    v.add_argument("--val-size", type=int, default=Config.val_size,
                   help=f"as train's --val-size: these images are held out, not shown (default {Config.val_size})")
    v.add_argument("--out", default="preview.png", metavar="FILE", help="PNG to write (default preview.png)")
    v.set_defaults(run=run_preview)


def _add_policy_flags(v) -> None:
    """train's --auto-augment, --ra-*, --random-erase, --mixup-alpha, --cutmix-alpha (same names, defaults, help)."""
    from dataclasses import fields

    from ..config import Config

    g = v.add_argument_group("augmentation policy (with --augment; as train's flags)")
    for f in fields(Config):
        if f.name in ("auto_augment", "ra_num_ops", "ra_magnitude", "random_erase", "mixup_alpha", "cutmix_alpha"):
            m = f.metadata
            g.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                           choices=m["choices"], metavar=m["metavar"], help=f"{m['help']} (default {f.default})")


def _policy_of(args):
    """(StrongAugment, Mixing) of data preview's flags; they need --augment."""
    from ..config import Config
    from ..engine.parts import mixing_from, strong_augment_from
    from ..errors import UsageError

    names = ("auto_augment", "ra_num_ops", "ra_magnitude", "random_erase", "mixup_alpha", "cutmix_alpha")
    cfg = Config(**{k: getattr(args, k) for k in names})
    strong, mixing = strong_augment_from(cfg), mixing_from(cfg)
    if (strong.enabled or mixing.enabled) and not args.augment:
        raise UsageError("--auto-augment, --random-erase, --mixup-alpha and --cutmix-alpha show with --augment; add it")
    return strong, mixing


def _resolve_data_args(args) -> None:
    """--data-dir defaults to ./data; a left-out --dataset is what the directory's layout shows
    (an image folder, a CIFAR folder or archive), else cifar10. The output names the dataset."""
    from ..data import detect_dataset

    args.data_dir = args.data_dir or "data"
    if args.dataset is None:
        args.dataset = detect_dataset(args.data_dir) or "cifar10"


def run_download(args) -> int:
    from ..data import cifar
    from ..errors import UsageError

    if args.dataset == "folder":
        raise UsageError("`data download` fetches cifar10 or cifar100; a folder dataset is already on disk")
    folder = cifar.download(args.dataset, args.data_dir, url=args.url, log=stderr_log)
    print(f"{args.dataset}: verified batches in {folder}")
    return 0


def run_stats(args) -> int:
    import time

    from ..data import load_dataset
    from ..data.stats import dataset_stats

    _resolve_data_args(args)
    t0 = time.perf_counter()
    ds = load_dataset(args.dataset, args.data_dir, log=None if args.json else stderr_log)
    load_s = time.perf_counter() - t0
    st = dataset_stats(ds)
    st["load_seconds"] = round(load_s, 3)
    if args.json:
        print(json.dumps(st))
        return 0
    print(f"{st['dataset']} in {args.data_dir}: {st['train_images']} train / "
          f"{st['test_images'] if st['test_images'] is not None else 'no'} test images, "
          f"{st['num_classes']} classes, loaded in {load_s:.2f}s")
    width = max(len(c) for c in st["classes"])
    print(f"  {'class':<{width}}  {'train':>7}  {'test':>7}")
    for c in st["classes"]:
        test = st["test_per_class"][c] if st["test_per_class"] else "-"
        print(f"  {c:<{width}}  {st['train_per_class'][c]:>7}  {test:>7}")
    fmt = lambda v: ", ".join(f"{x:.4f}" for x in v)
    print(f"  train mean  {fmt(st['train_mean'])}   (normalisation uses {fmt(st['mean_in_use'])})")
    print(f"  train std   {fmt(st['train_std'])}   (normalisation uses {fmt(st['std_in_use'])})")
    return 0


def run_preview(args) -> int:
    from ..errors import UsageError
    from ..preview import make_preview

    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    _resolve_data_args(args)
    strong, mixing = _policy_of(args)
    grid = make_preview(args.dataset, args.data_dir, n=args.n, augment=args.augment, out=args.out,
                        seed=args.seed, val_size=args.val_size, log=stderr_log, strong=strong, mixing=mixing)
    print(f"wrote {grid['out']}: {grid['n']} training images of {grid['dataset']} in a "
          f"{grid['rows']}x{grid['cols']} grid, {grid['augmentation']}, "
          f"de-normalised from the network's input (seed {grid['seed']})")
    return 0
