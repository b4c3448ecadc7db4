"""Learning-rate schedules as pure functions of the optimizer step (plus plateau state).

A schedule that is a function of the step is trivially resumable (its state is the step count)
and testable without an optimizer. `plateau` mirrors torch's ReduceLROnPlateau('min', rel
threshold 1e-4) stepped once per epoch on the validation loss; tests check it against torch's.
"""

from __future__ import annotations

import math

from .config import Config


class LRSchedule:
    def __init__(self, cfg: Config, steps_per_epoch: int):
        self.kind = cfg.scheduler
        self.base_lr = cfg.lr
        self.min_lr = cfg.min_lr
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, cfg.epochs * steps_per_epoch)
        self.warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.milestones = [int(round(m * cfg.epochs)) * steps_per_epoch for m in cfg.milestones]
        self.gamma = cfg.gamma
        # plateau state (same fields as torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.factor, self.patience = cfg.plateau_factor, cfg.plateau_patience
        self.threshold = 1e-4
        self.best = math.inf
        self.num_bad_epochs = 0
        self.scale = 1.0

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
            t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            t = min(max(t, 0.0), 1.0)
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
