"""Non-finite losses, counted on the device and read by the host only now and then.

Reading a flag after every step is a host-device sync: the CPU waits for the GPU to drain before it
queues the next step, so the GPU idles while Python prepares it. The watch instead folds each
step's flag into a few counters on the device (tiny kernels queued behind the step, no sync) and
the engine reads them every `check_every` steps, before every checkpoint and at the end of each
epoch. A non-finite step is therefore found at most `check_every` steps late, and never saved.

fp16 is the exception to "any non-finite step is fatal": GradScaler skips such steps and lowers
its scale, so only a long run of them means the run is broken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import WorkError

# Steps between reads on asynchronous devices. At a few ms per step on a GPU this is a sync every
# ~0.1-0.3 s (<0.1% of the time); it also bounds how late DDP ranks agree on a stop signal.
CHECK_EVERY_ASYNC = 50


def check_every(device: torch.device) -> int:
    """Every step on the CPU, where nothing runs ahead and a read costs nothing."""
    return 1 if device.type == "cpu" else CHECK_EVERY_ASYNC


@dataclass
class Reading:
    bad_steps: int        # steps since the last read whose loss was not finite (on any rank)
    longest_run: int      # the longest run of consecutive such steps, counting a run that began earlier
    first_bad_step: int   # the first of them (optimizer step number), 0 when there were none
    stopping: bool        # DDP: some rank caught a stop signal


class FiniteWatch:
    def __init__(self, device: torch.device):
        self.device = device
        # [bad steps, current run, longest run, first bad step, stopping], int64 on the device
        self.state = torch.zeros(5, dtype=torch.int64, device=device)

    def add(self, finite: torch.Tensor, step: int, stopping: torch.Tensor | None = None) -> None:
        """Fold one step's flag in; queued on the device, never synchronises."""
        s = self.state
        bad = (~finite.bool()).to(torch.int64).reshape(())
        run = (s[1] + 1) * bad
        first = torch.where((s[3] == 0) & (bad > 0), torch.full_like(s[3], step), s[3])
        stop = s[4] if stopping is None else torch.maximum(s[4], stopping.to(torch.int64).reshape(()))
        self.state = torch.stack([s[0] + bad, run, torch.maximum(s[2], run), first, stop])

    def read(self) -> Reading:
        """The counters since the last read (a sync point); the current run carries over."""
        bad, run, longest, first, stop = self.state.tolist()
        self.state = torch.tensor([0, run, run, 0, 0], dtype=torch.int64, device=self.device)
        return Reading(int(bad), int(longest), int(first), bool(stop))

    def reset(self) -> None:
        """Zero every counter: an epoch starts with no run of bad steps behind it (the last
        epoch's end read everything else)."""
        self.state = torch.zeros(5, dtype=torch.int64, device=self.device)


def judge(r: Reading, *, amp: str, max_skipped_steps: int, steps_per_epoch: int) -> int:
    """What a reading means for the run: the number of skipped (fp16) steps to count, or a WorkError.

    Without loss scaling any non-finite step is fatal. With fp16, GradScaler skipped those steps;
    only a run of more than max_skipped_steps of them in a row means the run is broken.
    """
    if not r.bad_steps:
        return 0
    spe = max(steps_per_epoch, 1)
    where = (f"step {r.first_bad_step} (epoch {(r.first_bad_step - 1) // spe + 1}, "
             f"batch {(r.first_bad_step - 1) % spe + 1})")
    if amp == "fp16":
        if r.longest_run <= max_skipped_steps:
            return r.bad_steps
        raise WorkError(f"{r.longest_run} consecutive fp16 steps had a non-finite loss (the first of this "
                        f"stretch's at {where}); stopping. Try --amp bf16 or off, or a lower --lr")
    raise WorkError(f"loss became non-finite at {where}; stopped without saving it. Lower --lr, check the "
                    "data's normalisation, or resume from the last checkpoint")
