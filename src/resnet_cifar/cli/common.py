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


def stderr_log(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)
