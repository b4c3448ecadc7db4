"""The per-step weight EMA (`--ema`), without host-device syncs.

torch's `AveragedModel.update_parameters` asks the device twice a step whether this is the first
update (`bool(n_averaged == 0)`, `n_averaged > 0`): two syncs that stop the host from queueing the
next step's kernels while the GPU still runs this one (benchmarks/gpu_session.py counted them on an
H200, 2026-12-04). `DeviceEMA` is that same AveragedModel (same state dict, `n_averaged` included,
so checkpoints are unchanged) with the count also kept on the host: one read of `n_averaged` after
construction or a `load_state_dict`, none after. The arithmetic is torch's own
`get_ema_multi_avg_fn`, applied per (device, dtype) group as AveragedModel does, so the averaged
weights are bitwise the same.
"""

from __future__ import annotations

import itertools

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class DeviceEMA(AveragedModel):
    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self._host_n: int | None = 0  # updates so far, on the host; None: read n_averaged once
        self.register_load_state_dict_post_hook(DeviceEMA._forget_count)

    @staticmethod
    def _forget_count(module, incompatible_keys) -> None:
        module._host_n = None

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        if self._host_n is None:
            self._host_n = int(self.n_averaged)  # once per load: the only sync
        averaged = [p.detach() for p in itertools.chain(self.module.parameters(), self.module.buffers())]
        current = [p.detach().to(a.device) for a, p in
                   zip(averaged, itertools.chain(model.parameters(), model.buffers()), strict=True)]
        if self._host_n == 0:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
        else:
            groups: dict[tuple, tuple[list, list]] = {}
            for a, c in zip(averaged, current, strict=True):
                group = groups.setdefault((a.device, a.dtype), ([], []))
                group[0].append(a)
                group[1].append(c)
            for averaged_group, current_group in groups.values():
                self.multi_avg_fn(averaged_group, current_group, None)  # the EMA ignores the count
        self.n_averaged += 1
        self._host_n += 1
