"""Optimiser pieces of the speedrun recipe: parameter groups with their own lr scale, a triangular schedule.

airbench94's hyperparameters (PyPI airbench 0.1.8, `lib_airbench94.py` and `utils.train`) are
"decoupled": lr 11.5 and weight decay 0.0153 per 1,024 examples, Nesterov momentum 0.85, on the
*sum* of the per-image losses. This engine averages the loss over the batch, so the same steps are
(`sgd_hyperparameters`):

    lr           = 11.5 / (1 + 1 / (1 - 0.85)) * batch / 1024     (1.50 at batch 1024)
    weight_decay = 0.0153 / 11.5                                   (1.33e-3, any batch size)

BatchNorm biases get `bias_lr_scale` (64) times the lr and weight_decay / 64 (the same absolute
decay per step); the whitening layer's bias learns only for the first `whiten_bias_epochs` (3)
epochs. Groups carry `lr_scale` and `until_epoch`: `group_lr(group, lr, epoch)` is the lr a group
gets when the schedule says `lr` (a frozen group gets 0, which also stops its weight decay; its
gradient keeps flowing, so DDP sees the same parameters every step).
"""

from __future__ import annotations

import math

import torch.nn as nn

# airbench94 hyp['opt'] (lr and weight decay per 1,024 examples of a summed loss)
AIRBENCH_LR = 11.5
AIRBENCH_MOMENTUM = 0.85
AIRBENCH_WEIGHT_DECAY = 0.0153
BIAS_LR_SCALE = 64.0
WHITEN_BIAS_EPOCHS = 3
# airbench94's triangle(total_steps, start=0.2, end=0.07, peak=0.23)
TRIANGLE = dict(start=0.2, peak_at=0.23, end=0.07)


def sgd_hyperparameters(batch_size: int, lr: float = AIRBENCH_LR, momentum: float = AIRBENCH_MOMENTUM,
                        weight_decay: float = AIRBENCH_WEIGHT_DECAY) -> tuple[float, float]:
    """airbench's decoupled (lr, weight decay) -> torch SGD's (lr, weight_decay) for a batch-mean loss."""
    return lr / (1 + 1 / (1 - momentum)) * batch_size / 1024, weight_decay / lr


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._NormBase)


def speedrun_param_groups(model: nn.Module, weight_decay: float, bias_lr_scale: float = BIAS_LR_SCALE,
                          whiten_bias_epochs: int = WHITEN_BIAS_EPOCHS, whiten_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters in three groups: norm biases (lr x scale, decay / scale), the whitening
    bias (lr x whiten_lr_scale, until `whiten_bias_epochs`), everything else. Empty groups are left out."""
    norm_ids = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    whiten = getattr(model, "whiten", None)
    whiten_ids = {id(p) for p in whiten.parameters()} if isinstance(whiten, nn.Module) else set()
    norm, white, rest = [], [], []
    for p in model.parameters():
        if p.requires_grad:
            (norm if id(p) in norm_ids else white if id(p) in whiten_ids else rest).append(p)
    groups = [
        {"params": norm, "lr_scale": bias_lr_scale, "weight_decay": weight_decay / bias_lr_scale},
        {"params": white, "lr_scale": whiten_lr_scale, "weight_decay": weight_decay / whiten_lr_scale,
         "until_epoch": whiten_bias_epochs},
        {"params": rest, "lr_scale": 1.0, "weight_decay": weight_decay},
    ]
    return [g for g in groups if g["params"]]


def split_filters(groups: list[dict], muon_lr_scale: float) -> list[dict]:
    """`groups` with every conv filter (4-D) moved into one Muon group first (muon.MuonSGD): lr x
    `muon_lr_scale` (muon lr / the schedule's lr), no weight decay (Muon normalises the filters)."""
    filters, rest = [], []
    for g in groups:
        keep = [p for p in g["params"] if p.dim() != 4]
        filters += [p for p in g["params"] if p.dim() == 4]
        if keep:
            rest.append({**g, "params": keep})
    muon = [{"params": filters, "muon": True, "lr_scale": muon_lr_scale, "weight_decay": 0.0}] if filters else []
    return muon + rest


def group_lr(group: dict, lr: float, epoch: int) -> float:
    """The lr of `group` in (0-based) `epoch` when the schedule gives `lr`."""
    if epoch >= group.get("until_epoch", math.inf):
        return 0.0
    return lr * group.get("lr_scale", 1.0)


def triangle(step: int, total_steps: int, start: float = TRIANGLE["start"], peak_at: float = TRIANGLE["peak_at"],
             end: float = TRIANGLE["end"]) -> float:
    """lr factor for (0-based) `step`: linear from `start` to 1 at int(peak_at * total), then to `end`.

    Equals airbench's `triangle(...)[step]`, which its LambdaLR reads before each step.
    """
    peak = int(peak_at * total_steps)
    if step < peak:
        return start + (1.0 - start) * step / peak
    if total_steps == peak:
        return 1.0
    return 1.0 + (end - 1.0) * (min(step, total_steps) - peak) / (total_steps - peak)
