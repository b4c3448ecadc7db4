"""Evaluation: loss, top-1/top-5 and per-class accuracy of a model on uint8 images (+ flip TTA),
and the evaluation of a saved checkpoint on the test split or on the validation split it was
chosen on."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import runtime
from ..data import Dataset
from ..data.loader import DeviceLoader
from ..data.split import train_val_split
from ..errors import UsageError
from ..tta import tta_logits


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, mean, std,
             batch_size: int = 1024, tta: bool = False, amp_ctx=None, channels_last: bool = True,
             num_classes: int | None = None, return_probs: bool = False, tta_mode: str = "flip") -> dict[str, Any]:
    """Loss (plain cross entropy), top-1, top-5 and per-class accuracy on uint8 images x.

    With tta, tta_mode "flip" averages the class probabilities of the image and its mirror; "flip_translate"
    takes airbench's six views (tta.tta_logits: mirrors and 1-px shifts, their logits averaged).
    Sums stay on the device; they are read once at the end.
    """
    model.eval()
    device = x.device
    num_classes = num_classes or int(y.max().item()) + 1
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    per_class = torch.zeros(num_classes, dtype=torch.int64, device=device)
    probs = []
    ctx = amp_ctx if amp_ctx is not None else contextlib.nullcontext()
    loader = DeviceLoader(x, y, batch_size=batch_size, mean=mean, std=std, shuffle=False,
                          channels_last=channels_last)
    for xb, yb in loader:
        with ctx:
            if tta and tta_mode == "flip_translate":
                views = [tta_logits(model, xb, tta_mode)]
            else:
                views = [model(xb)] + ([model(xb.flip(3))] if tta else [])
        logp = torch.stack([F.log_softmax(v.float(), dim=1) for v in views])
        logp = torch.logsumexp(logp, dim=0) - math.log(len(views))  # log of the mean probability
        loss_sum += F.nll_loss(logp, yb, reduction="sum").double()
        k = min(5, logp.shape[1])
        top = logp.topk(k, dim=1).indices
        hit1 = top[:, 0] == yb
        top1 += hit1.sum()
        top5 += (top == yb[:, None]).any(1).sum()
        per_class += torch.bincount(yb[hit1], minlength=num_classes)
        if return_probs:
            probs.append(logp.exp().float().cpu())
    n = len(y)
    counts = torch.bincount(y, minlength=num_classes).cpu()
    correct = per_class.cpu()
    out = {
        "loss": loss_sum.item() / max(n, 1), "acc": top1.item() / max(n, 1), "top5": top5.item() / max(n, 1),
        "n": n, "per_class_acc": [(c / k) if k else None for c, k in zip(correct.tolist(), counts.tolist(), strict=True)],
    }
    if return_probs:
        out["probs"] = torch.cat(probs).numpy() if probs else np.zeros((0, num_classes), np.float32)
    return out


@dataclass(frozen=True)
class Evaluator:
    """`evaluate` with one run's settings bound, so callers pass only the model and the images."""

    mean: tuple
    std: tuple
    batch_size: int = 1024
    amp_ctx: Any = None
    channels_last: bool = True
    num_classes: int | None = None

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, tta: bool = False,
                 return_probs: bool = False, tta_mode: str = "flip") -> dict[str, Any]:
        return evaluate(model, x, y, mean=self.mean, std=self.std, batch_size=self.batch_size, tta=tta,
                        amp_ctx=self.amp_ctx, channels_last=self.channels_last, num_classes=self.num_classes,
                        return_probs=return_probs, tta_mode=tta_mode)


def _split_of(cfg, data: Dataset, split: str, foreign: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "test":
        if data.test_x is None:
            raise UsageError(f"dataset {data.name!r} at {cfg.data_dir!r} has no test split; "
                             "use --split val (or add DIR/test/<class>/ images)")
        return data.test_x, data.test_y
    if foreign:
        raise UsageError("a checkpoint of another tool has no run config to rebuild its validation split from; "
                         "use --split test")
    if cfg.val_size == 0:
        raise UsageError("this run had no validation split (--val-size 0); use --split test")
    _, val_idx = train_val_split(data.train_y, cfg.val_size, cfg.seed)
    return data.train_x[val_idx], data.train_y[val_idx]


def evaluate_checkpoint(state: dict, data: Dataset, *, split: str = "test", tta: bool = False,
                        tta_mode: str | None = None, device: str = "auto", batch_size: int | None = None) -> dict:
    """Evaluate a loaded checkpoint on the test split, or on the validation split it was chosen on
    (rebuilt from the run's own val_size and seed, so it is the very same images). Another tool's
    checkpoint (`checkpoint.load_any`) runs with the default settings; its class names are the
    dataset's when the number of outputs matches (such files do not name them). With `tta`, the views
    are `tta_mode`'s, else the run's own `--tta-mode`."""
    from .. import checkpoint as ckpt
    from ..config import Config, from_dict

    foreign = "config" not in state and state.get("foreign") is not None
    cfg = Config() if foreign else from_dict(state["config"])
    if foreign and len(state["classes"]) == data.num_classes:
        state = {**state, "classes": list(data.classes)}
    dev = runtime.pick_device(device)
    x, y = _split_of(cfg, data, split, foreign)
    if list(state["classes"]) != list(data.classes):
        raise UsageError(f"the classes of checkpoint {state.get('path', '')!r} {list(state['classes'])[:5]}... differ "
                         f"from the dataset's {list(data.classes)[:5]}...; evaluate on the dataset the model was "
                         "trained on")
    model = ckpt.build_from_checkpoint(state, dev, num_classes=data.num_classes, channels_last=cfg.channels_last)
    ev = Evaluator(tuple(state["mean"]), tuple(state["std"]), batch_size or cfg.eval_batch_size,
                   runtime.autocast(dev, runtime.resolve_amp(cfg.amp, dev)), cfg.channels_last, data.num_classes)
    mode = tta_mode or cfg.tta_mode
    result = ev(model, x.to(dev), y.to(dev), tta=tta, tta_mode=mode)
    result["per_class_acc"] = dict(zip(data.classes, result["per_class_acc"], strict=True))
    result.update({"split": split, "tta": tta, "tta_mode": mode if tta else None, "checkpoint": state.get("path"),
                   "model": state["model_args"]["name"], "dataset": data.name, "device": str(dev),
                   "data_differs": data_differs(state, data, split)})
    return result


def data_differs(state: dict, data: Dataset, split: str) -> list[str]:
    """How the images `split` is built from differ from the run's (its checkpoint's fingerprint):
    the validation split is carved from the train images, so for it those count."""
    from ..data import fingerprint

    return fingerprint.differences(state.get("data_fingerprint"), fingerprint.of_dataset(data),
                                   splits=("train",) if split == "val" else ("test",))
