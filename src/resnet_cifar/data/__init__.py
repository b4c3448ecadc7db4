"""Data: files on disk -> uint8 tensors (N, 3, 32, 32) + int64 labels + class names.

`load_dataset(name, data_dir, ...)` is the one entry point the rest of the product uses.
Rooms: cifar.py (official archives: download, verify, extract, read), folder.py (image folders,
decode cache), split.py (validation split and subsets), loader.py (device-resident batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Dataset:
    name: str                      # "cifar10" | "cifar100" | "folder"
    train_x: torch.Tensor          # uint8 (N, 3, 32, 32)
    train_y: torch.Tensor          # int64 (N,)
    test_x: torch.Tensor | None    # uint8 (M, 3, 32, 32), None when the dataset has no test split
    test_y: torch.Tensor | None
    classes: list[str]
    mean: tuple[float, float, float]   # normalisation constants for this dataset
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(name: str, data_dir, *, download: bool = False, url: str | None = None,
                 log=None) -> Dataset:
    """Load cifar10 | cifar100 | folder from `data_dir` as a Dataset.

    cifar10/cifar100: the extracted official python batches in data_dir (MD5-verified before
    reading); with `download=True` (or a `url`, which implies it) they are fetched first.
    folder: data_dir/train/<class>/* and optional data_dir/test/<class>/*, decoded once and cached.
    `log` is an optional callable taking one line of text (progress, cache use, resizing).
    """
    # Imported here so `import resnet_cifar.data` stays cheap (no PIL) and nothing runs at import.
    from ..constants import DATASETS
    from ..errors import UsageError

    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "folder":
        if download or url:
            raise UsageError("--download/--url only apply to cifar10 and cifar100; a folder "
                             "dataset is read from --data-dir as it is")
        from .folder import read_folder
        return read_folder(data_dir, log=log)

    from . import cifar
    if download or url:
        cifar.download(name, data_dir, url=url, log=log)
    return cifar.read_cifar(name, data_dir, log=log)


def detect_dataset(data_dir) -> str | None:
    """Which dataset `data_dir` holds, from its layout alone (nothing is read or decoded).

    "cifar10" / "cifar100": the extracted official folder (or its archive) is there, or data_dir
    is that folder; "folder": data_dir/train/ has a class sub-folder; None: neither (a fresh data
    dir, where a CIFAR download would go). Used when --dataset is left out.
    """
    from ..constants import CIFAR_SOURCES

    try:
        root = Path(data_dir).expanduser()
        for name, src in CIFAR_SOURCES.items():
            if ((root / src["folder"]).is_dir() or (root / src["filename"]).is_file()
                    or (root / src["meta"][0]).is_file()):
                return name
        train = root / "train"
        if train.is_dir() and any(e.is_dir() and not e.name.startswith(".") for e in train.iterdir()):
            return "folder"
    except (OSError, ValueError, RuntimeError):  # unreadable, a NUL byte, no home for ~: the loader names it
        return None
    return None
