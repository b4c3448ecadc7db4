"""Flag groups shared by several subcommands (one definition, same spelling everywhere)."""

from __future__ import annotations

import argparse

from ..constants import DATASETS


def add_data_flags(p: argparse.ArgumentParser, required: bool = False, defaults: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="cifar10" if defaults else None,
                   help="cifar10 | cifar100 | folder (PATH/train/<class>/*.png|jpg)")
    g.add_argument("--data-dir", default="data" if defaults else None, metavar="PATH",
                   help="where the dataset lives (default: ./data)")


def add_device_flag(p: argparse.ArgumentParser) -> None:
    from ..config import DEVICES

    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to run (auto: CUDA when available)")


def add_foreign_flags(p: argparse.ArgumentParser) -> None:
    """--model/--mean/--std: what another tool's checkpoint (kuangliu/pytorch-cifar, a state_dict) does not say."""
    g = p.add_argument_group("another tool's checkpoint (kuangliu/pytorch-cifar {'net': ...}, a plain state_dict)")
    g.add_argument("--model", metavar="NAME", help="its architecture (default: inferred from its keys and shapes)")
    g.add_argument("--mean", metavar="M1,M2,M3", help="the per-channel mean it was trained with "
                                                     "(default: that tool's own; required for a plain state_dict)")
    g.add_argument("--std", metavar="S1,S2,S3", help="the per-channel std it was trained with (as --mean)")


def foreign_kwargs(args) -> dict:
    return {"model": args.model, "mean": args.mean, "std": args.std}


def stderr_log(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)
