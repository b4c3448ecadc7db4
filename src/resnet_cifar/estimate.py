"""CPU-aware start: what the device is, and whether the chosen recipe fits in a sitting.

`device_description(device)` names the processor or GPU for the first line of `train`.
`probe_flops_per_second(model, device)` times one forward + backward of a few random images on a
copy of the model (a second or two for ResNet-18 on a CPU, so the answer comes within seconds,
not after the first real steps); the global RNG, the model and its BN statistics are untouched,
so a run with the probe follows the same trajectory as one without. `estimated_seconds` turns the
recipe's training FLOPs into time at that rate, and `long_run_advice` says so when it is more than
`LONG_RUN_SECONDS` and points at the `speedrun` preset. The probe measures a tiny batch, so it
is a rough guide (it tends to underestimate the throughput of full batches).
"""

from __future__ import annotations

import copy
import os
import time

import torch
import torch.nn.functional as F

from . import runtime
from .compute import forward_macs, images_per_epoch, train_flops

LONG_RUN_SECONDS = 2 * 3600
# The preset's measured CPU result (README "No GPU?"; benchmarks/README.md S23, S29, S33, S40, S41; torch 2.14.1).
SPEEDRUN_MEASURED = ("90.9% val with TTA on the JPEG copy of CIFAR-10 (n=3), ~21 min, on a 2-core AMD EPYC Zen 5; "
                     "~23 min on a 2-core Intel Xeon with AMX (9 min with --amp bf16), ~38 min on an Ice Lake one "
                     "(all AVX-512); ~54 min on a 2-core AMD EPYC Zen 3 (AVX2)")


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple GPU (mps)"
    return f"CPU {runtime.cpu_name()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} threads)"


def probe_flops_per_second(model: torch.nn.Module, device: torch.device, batch: int = 8,
                           channels_last: bool = True, image_size: int = 32) -> float:
    """Training FLOP/s of one timed forward + backward (after one untimed) on a copy of `model`.

    The copy runs in eval mode (BN from its running statistics, a few % cheaper than batch statistics):
    a training-mode forward is the run's own business (hooks and tests count them)."""
    probe = copy.deepcopy(model).to(device).eval()
    macs = forward_macs(probe)
    fork = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        x = torch.randn(batch, 3, image_size, image_size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        seconds = 0.0
        for timed in (False, True):
            t0 = time.perf_counter()
            out = probe(x)
            F.cross_entropy(out.float(), torch.zeros(batch, dtype=torch.long, device=device)).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0 if timed else seconds
    return train_flops(macs, batch) / max(seconds, 1e-9)


def estimated_seconds(macs_per_image: int, images: int, flops_per_second: float) -> float:
    return train_flops(macs_per_image, images) / flops_per_second


def _fmt(seconds: float) -> str:
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h}h{m:02d}m" if h else f"{m}m"


def speedrun_command(dataset: str, data_dir: str) -> str:
    return f"resnet-cifar train --preset speedrun --dataset {dataset} --data-dir {data_dir}"


def long_run_advice(seconds: float, device: torch.device, dataset: str, data_dir: str,
                    limit: float = LONG_RUN_SECONDS, preset: str = "") -> str | None:
    """None when the estimate is within `limit` or the device is not a CPU; else the advice, one line."""
    if device.type != "cpu" or seconds <= limit:
        return None
    head = f"this recipe needs about {_fmt(seconds)} on this CPU (a rough estimate from a quick probe)"
    if preset == "speedrun":
        return head
    return (f"{head}; for a ResNet in less compute try: {speedrun_command(dataset, data_dir)} "
            f"(its time and accuracy on a CPU: {SPEEDRUN_MEASURED})")


def bf16_hint(amp: str, device: torch.device) -> str | None:
    """On a CPU with native bf16 instructions and `--amp auto` (fp32 there): one line saying that
    `--amp bf16` is faster here. None elsewhere, and when the user chose --amp."""
    if device.type != "cpu" or amp != "auto":
        return None
    found = runtime.cpu_bf16_instructions()
    if not found:
        return None
    return (f"this CPU has native bf16 ({', '.join(found)}): --amp bf16 trains faster here (the speedrun preset "
            "2.65x on a 2-core Xeon with AMX, 90.88% against fp32's 90.64%, n=1; benchmarks/README.md S39-S41)")


def cpu_advice(cfg, num_classes: int, num_train: int, device: torch.device) -> str | None:
    """`long_run_advice` for a config about to train `num_train` images on `device` (None off the CPU)."""
    if device.type != "cpu":
        return None
    from .models import build_model

    with torch.random.fork_rng(devices=[]):      # the run's initialisation stays what it would be
        model = build_model(cfg.model, num_classes, cfg.width, cfg.zero_init_residual)
    model = model.to(memory_format=torch.channels_last) if cfg.channels_last else model
    rate = probe_flops_per_second(model, device, channels_last=cfg.channels_last)
    per_epoch = images_per_epoch(num_train, cfg.batch_size, cfg.drop_last)
    seconds = estimated_seconds(forward_macs(model), per_epoch * cfg.epochs, rate)
    return long_run_advice(seconds, device, cfg.dataset, cfg.data_dir, preset=cfg.preset)
