"""Learning-rate schedules as pure functions of the optimizer step (plus plateau state).

A schedule that is a function of the step is trivially resumable (its state is the step count)
and testable without an optimizer. `plateau` mirrors torch's ReduceLROnPlateau('min', rel
threshold 1e-4) stepped once per epoch on the validation loss; tests check it against torch's.

Short runs: a preset's warm-up and SWA phase are sized for its own epoch count. `plan(cfg)` fits
them to the run (a warm-up never takes more than a quarter of it; SWA never starts before one epoch
at the schedule's lr, so a 1-epoch run trains at --lr and not at --swa-lr) and says so in one line
each. The plan is a pure function of the config, so a resumed run gets the same one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import Config, swa_start_epoch
from .progress import plural

WARMUP_MAX_FRACTION = 0.25   # the longest warm-up, as a fraction of the run's epochs
SWA_FIRST_EPOCH = 2          # SWA (and its constant --swa-lr) starts at epoch 2 at the earliest


@dataclass(frozen=True)
class Plan:
    """The warm-up and SWA phase as this run will have them, and the lines that say what changed."""
    warmup_epochs: float
    swa_start: int | None        # first epoch trained at --swa-lr and averaged; None: no SWA
    notes: tuple[str, ...] = ()


def plan(cfg: Config) -> Plan:
    warmup, warmup_note = _warmup(cfg)
    swa_start, swa_note = _swa_start(cfg)
    return Plan(warmup_epochs=warmup, swa_start=swa_start,
                notes=tuple(n for n in (warmup_note, swa_note) if n))


def _warmup(cfg: Config) -> tuple[float, str | None]:
    longest = WARMUP_MAX_FRACTION * cfg.epochs
    if cfg.warmup_epochs <= longest:
        return cfg.warmup_epochs, None
    return longest, (f"warm-up shortened from {cfg.warmup_epochs:g} to {longest:g} epochs, a quarter of "
                     f"this {cfg.epochs}-epoch run")


def _swa_start(cfg: Config) -> tuple[int | None, str | None]:
    if not cfg.swa:
        return None, None
    at_lr = f"--lr {cfg.lr:g} ({cfg.scheduler} schedule)"
    if cfg.epochs < SWA_FIRST_EPOCH:
        return None, (f"SWA off: a {cfg.epochs}-epoch run has no epoch before SWA would start; it trains at "
                      f"{at_lr}, not at --swa-lr {cfg.swa_lr:g}")
    asked = swa_start_epoch(cfg)
    start = max(asked, SWA_FIRST_EPOCH)
    swa_part = (f"{plural(cfg.epochs - start + 1, 'epoch')} ({start}-{cfg.epochs}) at the constant "
                f"--swa-lr {cfg.swa_lr:g}")
    if asked < start:
        return start, f"SWA start moved from epoch {asked} to {start}: epoch 1 trains at {at_lr}, then {swa_part}"
    if 2 * (cfg.epochs - start + 1) >= cfg.epochs:  # half the run or more: worth a line
        return start, f"SWA from epoch {start} of {cfg.epochs}: {swa_part}, not at {at_lr}"
    return start, None


class LRSchedule:
    def __init__(self, cfg: Config, steps_per_epoch: int):
        self.kind = cfg.scheduler
        self.base_lr = cfg.lr
        self.min_lr = cfg.min_lr
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, cfg.epochs * steps_per_epoch)
        self.warmup_steps = int(round(plan(cfg).warmup_epochs * steps_per_epoch))
        self.milestones = [int(round(m * cfg.epochs)) * steps_per_epoch for m in cfg.milestones]
        self.gamma = cfg.gamma
        # plateau state (same fields as torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.factor, self.patience = cfg.plateau_factor, cfg.plateau_patience
        self.threshold = 1e-4
        self.best = math.inf
        self.num_bad_epochs = 0
        self.scale = 1.0

    def _after_warmup(self, step: int) -> float:
        """How far `step` is through the steps after the warm-up, in [0, 1] (cosine, linear)."""
        t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return min(max(t, 0.0), 1.0)

    def lr(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based)."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "plateau":
            return max(self.base_lr * self.scale, self.min_lr) * warm
        if self.kind == "constant":
            return self.base_lr * warm
        if self.kind == "multistep":
            return self.base_lr * self.gamma ** sum(step >= m for m in self.milestones) * warm
        if self.kind == "cosine":
            # Warm-up, then cosine from base_lr to min_lr over the remaining steps.
            t = self._after_warmup(step)
            return (self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t))) * warm
        if self.kind == "onecycle":
            # torch's OneCycleLR (cos annealing): base/25 -> base over the first 30% (or the warm-up
            # when one is given), then down to base/(25*1e4).
            up = self.warmup_steps or max(1, int(0.3 * self.total_steps))
            start, peak, end = self.base_lr / 25, self.base_lr, self.base_lr / 25 / 1e4
            if step < up:
                t = step / up
                return peak + (start - peak) * (1 + math.cos(math.pi * t)) / 2
            t = min(1.0, (step - up) / max(1, self.total_steps - up))
            return end + (peak - end) * (1 + math.cos(math.pi * t)) / 2
        if self.kind == "triangle":
            # airbench94's: linear 0.2 -> 1 at 23% of the steps -> 0.07 at the end (optim.triangle)
            from .optim import triangle

            return self.base_lr * triangle(step, self.total_steps) * warm
        if self.kind == "linear":
            # airbench94_muon's: from base_lr straight down to 0 at the end (after any warm-up)
            return self.base_lr * (1.0 - self._after_warmup(step)) * warm
        raise ValueError(self.kind)

    def epoch_end(self, val_loss: float | None) -> bool:
        """Plateau bookkeeping after each epoch; returns True when the lr was reduced."""
        if self.kind != "plateau" or val_loss is None:
            return False
        if val_loss < self.best * (1 - self.threshold):
            self.best, self.num_bad_epochs = val_loss, 0
            return False
        self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            self.scale *= self.factor
            self.num_bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "num_bad_epochs": self.num_bad_epochs, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.scale = float(state["scale"])
