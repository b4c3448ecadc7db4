"""Where a run stands: its position, history, best result, time to accuracy, elapsed time and
skipped steps, as plain data; `state_dict`/`load_state_dict` are what checkpoints hold of it, and
`validate_resume` is every check a checkpoint must pass before a run continues from it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import CheckpointError

THRESHOLDS = (0.90, 0.93, 0.94, 0.95)     # validation accuracies whose first time is recorded
PARTIAL_KEYS = ("loss_sum", "correct", "count", "seconds")
RESUME_KEYS = {"optimizer": dict, "schedule": dict, "scaler": dict, "epoch": int, "batch": int, "step": int,
               "rng": dict, "partial": dict, "history": list, "best": dict, "time_to_acc": dict,
               "elapsed": float, "accum_steps": int, "config": dict}


def _no_partial() -> dict:
    return {k: 0.0 for k in PARTIAL_KEYS}


@dataclass
class RunState:
    epoch: int = 0            # completed epochs
    batch: int = 0            # batches done in the current (epoch + 1)
    step: int = 0             # optimizer steps done
    accum_steps: int = 1
    partial: dict = field(default_factory=_no_partial)   # the current epoch's sums so far (all ranks) + seconds
    history: list = field(default_factory=list)          # one metrics row per finished epoch
    best: dict = field(default_factory=lambda: {"val_acc": None, "epoch": None, "source": "raw"})
    time_to_acc: dict = field(default_factory=lambda: {f"{t:.2f}": None for t in THRESHOLDS})
    flops_to_acc: dict = field(default_factory=lambda: {f"{t:.2f}": None for t in THRESHOLDS})  # training FLOPs
    elapsed: float = 0.0      # wall time of training + validation so far, across resumes
    skipped_steps: int = 0    # fp16 steps GradScaler skipped

    def end_epoch(self, epoch: int) -> None:
        self.epoch, self.batch = epoch, 0
        self.partial = _no_partial()

    def reached(self, acc: float, elapsed: float, flops: int | None = None) -> None:
        """Record the first time (and the training compute) each accuracy threshold was reached."""
        for t in THRESHOLDS:
            key = f"{t:.2f}"
            if acc >= t and self.time_to_acc[key] is None:
                self.time_to_acc[key] = elapsed
                self.flops_to_acc[key] = flops

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "accum_steps": self.accum_steps,
                "partial": dict(self.partial), "history": list(self.history), "best": dict(self.best),
                "time_to_acc": dict(self.time_to_acc), "elapsed": float(self.elapsed),
                "skipped_steps": self.skipped_steps, "flops_to_acc": dict(self.flops_to_acc)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.accum_steps = state["accum_steps"]
        self.partial = {k: float(v) for k, v in state["partial"].items()}
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.time_to_acc = dict(state["time_to_acc"])
        self.elapsed = float(state["elapsed"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        # checkpoints written before compute was counted have none: thresholds reached then stay unknown
        self.flops_to_acc = {**{k: None for k in self.time_to_acc}, **dict(state.get("flops_to_acc") or {})}


def validate_resume(state: dict, steps_per_epoch: int, epochs: int) -> None:
    """Refuse, in one line, a checkpoint that cannot continue this run's trajectory exactly."""
    where = state.get("path", "last.pt")
    for key, kind in RESUME_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"checkpoint {where!r} has no valid {key!r} state; it cannot resume the same "
                                  "trajectory (start a new run, or resume from another checkpoint)")
    rng = state["rng"]
    if (not isinstance(rng.get("torch"), torch.Tensor) or not isinstance(rng.get("numpy"), dict)
            or not isinstance(rng.get("python"), dict)):
        raise CheckpointError(f"checkpoint {where!r} has corrupt RNG state; refusing to resume on a different "
                              "trajectory")
    partial = state["partial"]
    if not (all(isinstance(partial.get(k), (int, float)) for k in PARTIAL_KEYS)
            and state["step"] >= 0 and state["accum_steps"] >= 1):
        raise CheckpointError(f"checkpoint {where!r} has corrupt position state (step {state['step']}, "
                              f"accum_steps {state['accum_steps']}, partial sums {list(partial)}); refusing to resume")
    if not (0 <= state["batch"] < steps_per_epoch and 0 <= state["epoch"] <= epochs):
        raise CheckpointError(f"checkpoint {where!r} has an invalid data position (epoch {state['epoch']}, "
                              f"batch {state['batch']}) for this dataset; refusing to resume")
