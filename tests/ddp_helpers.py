"""Pieces of the DDP equivalence tests (2 processes vs 1) shared by test_ddp and test_ddp_toolkit:
a BN-free model, the tiny config and data, the epoch loop without validation, spawning."""

from __future__ import annotations

import shutil
import socket
import time

import torch
import torch.nn as nn

from helpers import TINY, tiny_dataset
from resnet_cifar import engine


class _NoBN(nn.Module):
    """BN-free: a DDP step then equals the one-process step exactly (up to float rounding)."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def _no_bn(name, num_classes=10, width=1.0, zero_init_residual=False):
    return _NoBN(num_classes)


EQ = {**TINY, "batch_size": 16, "val_size": 8, "epochs": 2, "checkpoint_every": 1, "nesterov": True,
      "weight_decay": 5e-4, "label_smoothing": 0.1, "warmup_epochs": 0.5}


def _eq_data():
    return tiny_dataset(n_per_class=12, num_classes=4, test_per_class=0)   # 40 train: batches 16, 16, 8


def _epochs(trainer, keep_mid=None):
    """run()'s epoch loop without validation: train rows per epoch; copy the mid-epoch-1 checkpoint."""
    stop = engine.StopFlag()   # not entered: no signal handlers in workers
    rows = {}
    for e in range(trainer.state.epoch + 1, trainer.cfg.epochs + 1):
        rows[e] = trainer.train_epoch(e, stop)
        if e == 1 and keep_mid is not None and trainer.world.is_main:
            shutil.copy(trainer.ckpt_dir / "last.pt", keep_mid)   # written at step 2 of 3
        trainer.state.end_epoch(e)   # epoch = e, batch = 0, partial sums zero
    return rows


def _summary(trainer, rows):
    return {"model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "rows": {e: {k: r[k] for k in ("train_loss", "train_acc")} for e, r in rows.items()},
            "step": trainer.state.step}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, args, nprocs, timeout):
    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{nprocs} processes still running after {timeout}s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
