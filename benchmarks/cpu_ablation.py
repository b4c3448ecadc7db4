"""What each CPU setting buys: the real engine step under several settings, timed in interleaved rounds.

    python benchmarks/cpu_ablation.py [--model resnet18] [--batch-size 128] [--rounds 5] [--steps 2]
        [--variants ours,nchw,bf16,threads1,foreach,compile,baseline,bare] [--out results.jsonl]

Every variant is built once and warmed up; then each round times `--steps` steps of every variant in
turn, so slow drifts of background load (other processes on a shared machine) hit all variants
alike. Reported: the median images/s over rounds per variant and its ratio to `ours` (the default
configuration: channels_last, fp32, eager, all cores, engine optimizer), and the best window per
variant (the least disturbed one on a shared machine). CPU only.

Variants
  ours      engine.step.train_step + DeviceLoader, channels_last, fp32, eager (what `train` runs on a CPU)
  nchw      ours with --no-channels-last (contiguous NCHW tensors and weights)
  bf16      ours with --amp bf16 (autocast to bfloat16)
  threads1  ours with torch.set_num_threads(1) during its windows
  foreach   ours with SGD(foreach=True) instead of the default per-tensor loop on the CPU
  compile   ours with --compile on (inductor); its first step, i.e. the compile time, is reported
  baseline  the tutorial pipeline of `resnet-cifar bench` (DataLoader workers, PIL, fp32, NCHW)
  bare      forward + backward of the channels_last model on one fixed batch: no data, no optimizer
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from resnet_cifar import bench, runtime
from resnet_cifar.config import resolve
from resnet_cifar.engine import param_groups, setup
from resnet_cifar.models import build_model


def make_ours(data, args, **over):
    flags = dict(model=args.model, batch_size=args.batch_size, epochs=1, val_size=0, scheduler="constant",
                 swa=False, ema=0.0, device="cpu", amp="off", compile="off", channels_last=True, download=False)
    flags.update(over)
    cfg = resolve(flag_values=flags, preset="tutorial")
    log = bench._Collect(lambda m: print(m, file=sys.stderr, flush=True))
    setup(cfg)
    return bench._Ours(cfg, data, torch.device("cpu"), log)


class Bare:
    def __init__(self, args):
        self.model = build_model(args.model, 10).to(memory_format=torch.channels_last).train()
        self.x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (args.batch_size,))

    def steps(self, n):
        t0 = time.perf_counter()
        for _ in range(n):
            F.cross_entropy(self.model(self.x), self.y).backward()
            self.model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


class Threads:
    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def steps(self, k):
        before = torch.get_num_threads()
        torch.set_num_threads(self.n)
        try:
            return self.inner.steps(k)
        finally:
            torch.set_num_threads(before)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variants", default="ours,nchw,bf16,threads1,foreach,baseline,bare")
    p.add_argument("--out", default=None, help="append one JSON line per window here")
    args = p.parse_args()
    runtime.configure_threads()
    names = args.variants.split(",")
    data = bench.synthetic_dataset(args.batch_size * (args.warmup + args.rounds * args.steps + 2))
    v = {}
    first = {}
    for name in names:
        t0 = time.perf_counter()
        if name == "ours":
            v[name] = make_ours(data, args)
        elif name == "nchw":
            v[name] = make_ours(data, args, channels_last=False)
        elif name == "bf16":
            v[name] = make_ours(data, args, amp="bf16")
        elif name == "threads1":
            v[name] = Threads(make_ours(data, args), 1)
        elif name == "foreach":
            o = make_ours(data, args)
            t = o.t
            t.optimizer = torch.optim.SGD(param_groups(t.model, t.cfg), lr=t.cfg.lr, momentum=t.cfg.momentum,
                                          nesterov=t.cfg.nesterov, foreach=True)
            v[name] = o
        elif name == "compile":
            v[name] = make_ours(data, args, compile="on")
        elif name == "baseline":
            v[name] = bench.Baseline(data.train_x, data.train_y, model_name=args.model, num_classes=10, width=1.0,
                                      batch_size=args.batch_size, mean=data.mean, std=data.std,
                                      device=torch.device("cpu"), workers=min(4, os.cpu_count() or 1))
        elif name == "bare":
            v[name] = Bare(args)
        else:
            raise SystemExit(f"unknown variant {name}")
        first[name] = v[name].steps(1)
        if args.warmup > 1:
            v[name].steps(args.warmup - 1)
        print(f"{name}: built + first step {first[name]:.1f}s (total {time.perf_counter() - t0:.1f}s)",
              file=sys.stderr, flush=True)
    rates = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            load = os.getloadavg()[0]
            secs = v[name].steps(args.steps)
            rate = args.steps * args.batch_size / secs
            rates[name].append(rate)
            line = {"round": r, "variant": name, "img_s": round(rate, 2), "loadavg": round(load, 2)}
            print(json.dumps(line), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(line) + "\n")
    ref = statistics.median(rates["ours"]) if "ours" in rates else None
    summary = {
        "model": args.model, "batch_size": args.batch_size, "torch": torch.__version__, "cpu": bench.cpu_name(),
        "cpu_flags": bench.cpu_flags(), "threads": torch.get_num_threads(), "rounds": args.rounds,
        "steps_per_round": args.steps, "first_step_s": {n: round(s, 1) for n, s in first.items()},
        "median_img_s": {n: round(statistics.median(x), 2) for n, x in rates.items()},
        # On a shared machine the fastest window is the least disturbed one: an estimate of the
        # uncontended speed (compare with the median; a large gap means heavy background load).
        "best_img_s": {n: round(max(x), 2) for n, x in rates.items()},
        "best_vs_ours": ({n: round(max(x) / max(rates["ours"]), 3) for n, x in rates.items()} if ref else None),
        "vs_ours": {n: round(statistics.median(x) / ref, 3) for n, x in rates.items()} if ref else None,
        "per_round_ratio_to_ours": ({n: [round(a / b, 3) for a, b in zip(x, rates["ours"], strict=True)] for n, x in rates.items()}
                                    if ref else None),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(summary, indent=1), flush=True)


if __name__ == "__main__":
    main()
