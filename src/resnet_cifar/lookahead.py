"""Lookahead of weights, as airbench94 does it (PyPI airbench 0.1.8, `utils.LookaheadState`).

Every `every` optimizer steps the slow copy moves towards the trained weights and the trained
weights jump back onto it:  slow <- slow + (1 - d) (fast - slow);  fast <- slow.  The decay d grows
with training, d = 0.95**5 * (step / total)**3: early on the slow copy just follows (d ~ 0), late
in training it averages. After the last step the weights are set to the slow copy. Every floating
tensor of the state dict takes part (BatchNorm running statistics too), as in airbench.

Its whole state is the slow copy: `state_dict()` / `load_state_dict()` make a resume exact.
"""

from __future__ import annotations

import torch
import torch.nn as nn

EVERY = 5              # airbench: `if current_steps % 5 == 0`
BASE_DECAY = 0.95 ** 5
POWER = 3


class Lookahead:
    def __init__(self, model: nn.Module, every: int = EVERY, base_decay: float = BASE_DECAY, power: float = POWER):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.base_decay, self.power = every, base_decay, power
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def decay(self, step: int, total_steps: int) -> float:
        return self.base_decay * (step / total_steps) ** self.power

    @torch.no_grad()
    def _update(self, model: nn.Module, decay: float) -> None:
        state = model.state_dict()
        for k, slow in self.slow.items():
            slow.lerp_(state[k], 1.0 - decay)
            state[k].copy_(slow)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Call after optimizer step number `step` (1-based) of `total_steps`."""
        if step % self.every == 0:
            self._update(model, self.decay(step, total_steps))
        if step >= total_steps:
            self._update(model, 1.0)

    def state_dict(self) -> dict:
        return {"slow": {k: v.clone() for k, v in self.slow.items()}, "every": self.every,
                "base_decay": self.base_decay, "power": self.power}

    def load_state_dict(self, state: dict) -> None:
        slow = state["slow"]
        if set(slow) != set(self.slow):
            raise KeyError(f"lookahead state has keys {sorted(set(slow) ^ set(self.slow))[:3]}... that do not "
                           "match the model")
        with torch.no_grad():
            for k, v in slow.items():
                self.slow[k].copy_(v)
        self.every, self.base_decay, self.power = int(state["every"]), float(state["base_decay"]), float(state["power"])
