"""The global side effects of a training process, in one call made by the entry point."""

from __future__ import annotations

import torch

from .. import distributed as distm
from .. import runtime
from ..config import Config


def setup(cfg: Config, world: distm.World | None = None) -> torch.device:
    """Pick the device, join the process group, fix the RNG seeds and the backend flags.

    Refuses (UsageError, before anything is written) a global batch the world cannot split.
    Process-wide: the process group (torchrun), the current CUDA device, deterministic kernels or
    cudnn autotuning + TF32, all RNG seeds, and the host-memory setting on the CPU. Returns the
    training device. Called by `engine.fit` (and so by `resnet_cifar.run.train`) before the run's
    parts are built; calling it again is harmless (the same settings, the seeds reset).
    """
    world = world or distm.World()
    device = runtime.pick_device(cfg.device, world.local_rank if world.distributed else None)
    distm.init(world, device)
    distm.validate(cfg.batch_size, cfg.accum_steps, cfg.sync_bn, world, device)  # the same refusal on every rank
    runtime.set_deterministic(cfg.deterministic)   # also cudnn.benchmark = not deterministic
    runtime.seed_everything(cfg.seed)
    if device.type == "cuda" and not cfg.deterministic:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    runtime.keep_host_memory(device=device)
    return device
