"""One optimizer step, in the open: micro-batches, autocast, loss scaling, `no_sync`, the update.

`train_step` is the step that `train` runs and that `bench` times; everything it needs is built
once per run into a `StepSetup` (nanoGPT's pattern: the autocast context is made once, the step
has no device or precision branches). It returns the step's metric sums on the device and a
device flag for "the loss was finite": nothing here synchronises with the host.

`guarded_step` adds what a long run needs around it: CUDA out-of-memory turned into advice or,
with --auto-batch, a retry with the micro-batch halved.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .. import distributed as distm
from ..errors import WorkError
from ..lookahead import Lookahead
from ..optim import group_lr
from .sums import Sums


@dataclass
class StepSetup:
    """What one step needs, built once per run (`engine.parts.build_parts`)."""

    model: torch.nn.Module                # what runs forward/backward: the DDP/compile wrapper, if any
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_ctx: contextlib.AbstractContextManager
    label_smoothing: float = 0.0
    accum_steps: int = 1                  # micro-batches per step (--auto-batch may double it)
    world: distm.World = field(default_factory=distm.World)
    ema: torch.nn.Module | None = None    # an AveragedModel updated after every step
    raw: torch.nn.Module | None = None    # the unwrapped model EMA averages (default: model)
    epoch: int = 0                        # 0-based epoch of the step (param groups with until_epoch)
    lookahead: Lookahead | None = None    # airbench's lookahead, after every step of `total_steps`
    total_steps: int = 0

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.raw if self.raw is not None else self.model


@dataclass
class StepOutput:
    sums: Sums                 # this rank's loss sum, correct, count for the step (on the device)
    finite: torch.Tensor       # bool on the device: the step's loss was finite


def set_lr(optimizer: torch.optim.Optimizer, lr: float, epoch: int = 0) -> None:
    """The schedule's lr on every group, times the group's lr_scale (0 past its until_epoch; optim.py)."""
    for g in optimizer.param_groups:
        g["lr"] = group_lr(g, lr, epoch)


def train_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor, n_global: int, lr: float) -> StepOutput:
    """One optimizer step over a (rank's share of a) global batch, in `s.accum_steps` micro-batches.

    The loss of each micro-batch is its *sum* divided by the global batch size, so the accumulated
    gradient equals that of one big batch exactly (also for an uneven last batch). DDP averages
    gradients over ranks, hence the factor world.size. An out-of-memory error raised once the
    update has begun carries `during_update = True` (the step cannot be redone then).
    """
    set_lr(s.optimizer, lr, s.epoch)
    scale = s.world.size / n_global
    chunks = [(xm, ym) for xm, ym in zip(x.tensor_split(s.accum_steps), y.tensor_split(s.accum_steps), strict=True) if len(ym)]
    loss_total = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i, (xm, ym) in enumerate(chunks):
        last = i == len(chunks) - 1
        sync = s.model.no_sync() if s.world.distributed and not last else contextlib.nullcontext()
        with sync:
            with s.amp_ctx:
                out = s.model(xm)
            loss = F.cross_entropy(out.float(), ym, label_smoothing=s.label_smoothing, reduction="sum")
            s.scaler.scale(loss * scale).backward()
        loss_total += loss.detach()
        correct += (out.detach().argmax(1) == ym).sum()
    try:
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.optimizer.zero_grad(set_to_none=True)
        if s.ema is not None:
            s.ema.update_parameters(s.unwrapped)
    except torch.cuda.OutOfMemoryError as e:
        e.during_update = True
        raise
    return StepOutput(Sums.of(loss_total, correct, len(y)), torch.isfinite(loss_total))


def guarded_step(s: StepSetup, x: torch.Tensor, y: torch.Tensor, n_global: int, lr: float, *, batch_size: int,
                 auto_batch: bool = False, step_number: int = 0,
                 log: Callable[[str], None] = lambda m: None) -> StepOutput:
    """`train_step`, with CUDA out-of-memory turned into advice or, with auto_batch, a retry.

    The retry redoes the step from a clean slate with the micro-batch halved (accum_steps doubled):
    gradients dropped and the BN statistics of the failed attempt restored (its sums are dropped
    with it). So the run equals one that used that accumulation from the start; the caller keeps
    `s.accum_steps` in its checkpoints, so a resume keeps it.
    """
    auto = auto_batch and not s.world.distributed  # ranks would disagree on accum_steps
    if auto:
        buffers = list(s.unwrapped.buffers())
        saved_buffers = [b.clone() for b in buffers]
    while True:
        updating = False
        try:
            result = train_step(s, x, y, n_global, lr)
        except torch.cuda.OutOfMemoryError as e:
            updating = getattr(e, "during_update", False)  # the rest once the attempt's tensors are freed
        else:
            if s.lookahead is not None:
                s.lookahead.after_step(s.unwrapped, step_number + 1, s.total_steps)
            return result
        s.optimizer.zero_grad(set_to_none=True)
        if x.device.type == "cuda":
            torch.cuda.empty_cache()
        micro = -(-len(y) // s.accum_steps)
        if not auto or updating or micro <= 1:
            raise WorkError(oom_message(batch_size, s.accum_steps, micro, step_number, s.world))
        with torch.no_grad():
            for b, saved in zip(buffers, saved_buffers, strict=True):
                b.copy_(saved)
        s.accum_steps *= 2
        log(f"out of memory with a micro-batch of {micro}: --auto-batch continues with "
            f"{-(-len(y) // s.accum_steps)} x {s.accum_steps} accumulation steps (same "
            f"global batch {batch_size}; kept in checkpoints)")


def oom_message(batch_size: int, accum_steps: int, micro: int, step_number: int, world: distm.World) -> str:
    """What to do about an out-of-memory step: the accumulation that keeps the global batch, or --auto-batch."""
    B, a = batch_size, accum_steps
    more = next((k for k in range(2 * a, B + 1) if B % k == 0), None)
    fix = (f"keep the global batch with --accum-steps {more} (micro-batches of {B // more}"
           f"{' per device' if world.distributed else ''})" if more else "lower --batch-size")
    devices = f" / {world.size} devices" if world.distributed else ""
    return (f"CUDA out of memory in training step {step_number + 1} with a micro-batch of {micro} images "
            f"(--batch-size {B} / --accum-steps {a}{devices}); {fix}, or pass --auto-batch to halve it automatically")
