"""Data: files on disk -> uint8 tensors (N, 3, 32, 32) + int64 labels + class names.

`load_dataset(name, data_dir, ...)` is the one entry point the rest of the product uses.
Rooms: cifar.py (official archives: download, verify, extract, read), folder.py (image folders,
decode cache), split.py (validation split and subsets), loader.py (device-resident batches).
"""

from __future__ import annotations

from dataclasses import dataclass

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
