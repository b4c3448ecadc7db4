"""Training and evaluation throughput: our pipeline and the tutorial's, side by side, in one run.

Ours is the real engine: the run's parts are built from a config exactly as `train` builds them
(`engine.build_parts` + `engine.parts.wrap_for_training`), and the timed loop calls the public step
that `train` runs (`engine.step.guarded_step` -> `train_step`) with the finite watch read every
`check_every` steps, on batches of the device-resident loader: the same step, autocast, scaler,
optimizer, compile wrapper and channels_last as a training run. There is no bench-only step.

The baseline is the classic tutorial pipeline (kuangliu/pytorch-cifar style): a torchvision-style
dataset of HWC uint8 arrays turned into PIL images, RandomCrop(32, padding=4) +
RandomHorizontalFlip + ToTensor + Normalize in `min(4, cores)` DataLoader worker processes with
shuffle, fp32, contiguous memory format, no compile, and a plain loop (zero_grad, forward,
cross-entropy, backward, SGD step). It leaves out the tutorial's two per-step `.item()` calls,
which only make the baseline slower. Same images, model, batch size and device as ours.

Timing: warm-up steps first (they hold compilation, cudnn autotuning and worker start-up; the
first step's time is reported on its own), then `windows` timed windows alternating between ours
and the baseline, so both see the same background load. Each figure is the median over windows.
On CUDA every window ends with a synchronize, so queued work is counted where it belongs.

Host memory on the CPU: `train` keeps freed host memory for reuse (`runtime.keep_host_memory`);
the tutorial script runs with glibc's defaults. The setting is process-wide, so the bench switches
it before each of its windows: ours with memory kept, the baseline with glibc's defaults as they
settle after warm-up.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import finite, runtime
from .bench_baseline import Baseline, sync
from .distributed import World
from .engine.sums import Sums
from .progress import Silent
from .runtime import cpu_name, device_name

VISION_HINT = "pip install 'resnet-cifar[vision]'"


# ------------------------------------------------------------------------------------ helpers
def cpu_flags() -> list[str]:
    """The CPU features that decide CPU bf16 speed (empty where /proc/cpuinfo is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile",
                                                       "avx512_vnni", "avx_vnni"})
    except OSError:
        pass
    return []


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def synthetic_dataset(n: int, num_classes: int = 10, seed: int = 0):
    """uint8 noise images with CIFAR-10's normalisation constants: throughput does not care what is in them."""
    from .constants import CIFAR10_MEAN, CIFAR10_STD
    from .data import Dataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return Dataset("synthetic", x, y, None, None, [f"class{i}" for i in range(num_classes)],
                   CIFAR10_MEAN, CIFAR10_STD)


class _Collect(Silent):
    """The progress sink of the bench: no bars, but the log lines are kept (the compile-fallback
    warning lands here) and passed on to `log`."""

    def __init__(self, log: Callable[[str], None] | None = None):
        self.lines: list[str] = []
        self._log = log

    def log(self, message: str) -> None:
        self.lines.append(message)
        if self._log:
            self._log(message)


# ------------------------------------------------------------------------------------- ours
class _Ours:
    """The engine's public step over the device loader, continuing across epochs as needed."""

    def __init__(self, cfg, data, device: torch.device, progress: _Collect):
        from .engine import build_parts
        from .engine.parts import wrap_for_training

        self.cfg = cfg
        self.parts = build_parts(cfg, data, device)
        self.parts.step.model = wrap_for_training(self.parts.model, cfg, device, World(), warn=progress.log)
        self.device = device
        self.watch = finite.FiniteWatch(device)
        self.check_every = finite.check_every(device)
        self.sums = Sums.zeros(device)
        self.step_count = 0
        self.batches = self._batches()
        self.images = 0
        self.parts.step.model.train()

    def _batches(self) -> Iterator:
        epoch = 1
        while True:
            for b, x, y in self.parts.loader.batches(epoch):
                if len(y) == self.cfg.batch_size:   # a smaller last batch would only time a recompile
                    yield b, x, y
            epoch += 1

    def steps(self, n: int) -> float:
        from .engine import step

        p, cfg = self.parts, self.cfg
        runtime.keep_host_memory(True, self.device)
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            b, x, y = next(self.batches)
            out = step.guarded_step(p.step, x, y, len(y), p.schedule.lr(self.step_count), batch_size=cfg.batch_size,
                                    auto_batch=cfg.auto_batch, step_number=self.step_count)
            self.step_count += 1
            self.sums.add(out.sums)
            self.watch.add(out.finite, self.step_count)
            if self.step_count % self.check_every == 0:
                self.finish()
        sync(self.device)
        self.images += n * cfg.batch_size
        return time.perf_counter() - t0

    def finish(self) -> None:
        """Read the finite watch, as train does: a non-finite loss fails the bench too."""
        finite.judge(self.watch.read(), amp=self.parts.amp, max_skipped_steps=self.cfg.max_skipped_steps,
                     steps_per_epoch=len(self.parts.loader))


def _have_torchvision() -> bool:
    try:
        import torchvision.transforms  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------ the run
def _counts(steps, warmup, windows, batch_size, on_cuda) -> tuple[int, int, int, list[int]]:
    from .errors import UsageError

    steps = steps if steps is not None else (100 if on_cuda else 10)
    warmup = warmup if warmup is not None else (20 if on_cuda else 2)
    if steps < 1 or warmup < 0 or windows < 1 or batch_size < 1:
        raise UsageError("--steps, --windows and --batch-size must be >= 1 and --warmup >= 0")
    windows = min(windows, steps)
    per_window = [steps // windows + (1 if i < steps % windows else 0) for i in range(windows)]
    return steps, warmup, windows, per_window


def _baseline_wanted(baseline: bool | None, say) -> tuple[bool, str | None]:
    """(run the baseline?, why it was skipped). baseline=True needs torchvision (a UsageError without)."""
    from .errors import UsageError

    if baseline is False:
        return False, None
    if _have_torchvision():
        return True, None
    if baseline is True:
        raise UsageError(f"the tutorial baseline needs torchvision: {VISION_HINT} (or pass --no-baseline)")
    error = f"torchvision is not installed, so the tutorial baseline was skipped: {VISION_HINT}"
    say(error)
    return False, error


def _bench_data(dataset, data_dir, need: int, batch_size: int, num_classes: int, seed: int, say):
    from .data import load_dataset
    from .errors import UsageError

    if dataset:
        data, desc = load_dataset(dataset, data_dir or "data", download=False, log=say), f"{dataset}:{data_dir}"
    else:
        data, desc = synthetic_dataset(max(need, 2 * batch_size), num_classes=num_classes, seed=seed), "synthetic uint8"
    if len(data.train_y) < batch_size:
        raise UsageError(f"--batch-size {batch_size} is larger than the {len(data.train_y)} training images")
    return data, desc


def _time_training(ours: _Ours, base: Baseline | None, warmup: int, per_window: list[int], batch_size: int,
                   say) -> dict:
    """Warm-up (the first step timed on its own), then windows alternating between ours and the baseline."""
    first = ours.steps(1) if warmup else None
    if warmup > 1:
        ours.steps(warmup - 1)
    base_first = None
    if base is not None and warmup:
        base_first = base.steps(1)
        if warmup > 1:
            base.steps(warmup - 1)
    ours_w, base_w = [], []
    for i, k in enumerate(per_window):
        ours_w.append(k * batch_size / ours.steps(k))
        if base is not None:
            base_w.append(k * batch_size / base.steps(k))
        say(f"window {i + 1}/{len(per_window)}: ours {ours_w[-1]:.1f} img/s"
            + (f", baseline {base_w[-1]:.1f} img/s" if base is not None else ""))
    ours.finish()
    return {"first": first, "base_first": base_first, "ours": ours_w, "base": base_w}


def _time_evaluation(ours: _Ours, base: Baseline | None, n_eval: int, windows: int) -> tuple[list, list]:
    """The engine's evaluation at the configured eval batch (one sync per call) vs the tutorial's test loop."""
    dev, p = ours.device, ours.parts
    ex, ey = p.splits.train_x[:n_eval], p.splits.train_y[:n_eval]

    def ours_eval() -> float:
        runtime.keep_host_memory(True, dev)
        sync(dev)
        t0 = time.perf_counter()
        p.evaluator(p.model, ex, ey)
        sync(dev)
        return time.perf_counter() - t0

    ours_eval()  # warm-up (cudnn autotune for the eval batch shape)
    if base is not None:
        base.evaluate(min(n_eval, 200))  # warm-up
    eval_w, base_w = [], []
    for _ in range(windows):
        eval_w.append(n_eval / ours_eval())
        if base is not None:
            base_w.append(n_eval / base.evaluate(n_eval))
    return eval_w, base_w


def run_bench(*, model: str = "resnet18", batch_size: int = 128, device: str = "auto", steps: int | None = None,
              warmup: int | None = None, windows: int = 5, amp: str = "auto", compile: str = "auto",
              channels_last: bool = True, dataset: str | None = None, data_dir: str | None = None,
              baseline: bool | None = None, baseline_workers: int | None = None, eval_images: int | None = None,
              width: float = 1.0, num_classes: int = 10, seed: int = 0,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure ours (and, unless baseline is False, the tutorial baseline); return one flat dict.

    baseline: None = run it when torchvision is installed (else say how to install it);
    True = required (a UsageError when torchvision is missing); False = skip it.
    steps / warmup default to 100 / 20 on CUDA and 10 / 2 on the CPU (ResNet-18 takes seconds per
    step there). Timed steps are split into `windows` windows; each figure is their median.
    """
    from .config import resolve
    from .engine import setup

    say = log or (lambda m: None)
    dev = runtime.pick_device(device)
    on_cuda = dev.type == "cuda"
    steps, warmup, windows, per_window = _counts(steps, warmup, windows, batch_size, on_cuda)
    want_baseline, baseline_error = _baseline_wanted(baseline, say)
    data, data_desc = _bench_data(dataset, data_dir, batch_size * (warmup + steps + 1), batch_size, num_classes,
                                  seed, say)
    cfg = resolve(flag_values=dict(
        model=model, width=width, batch_size=batch_size, epochs=1, val_size=0, train_subset=0,
        scheduler="constant", swa=False, ema=0.0, device=device, amp=amp, compile=compile,
        channels_last=channels_last, dataset=dataset or "cifar10", data_dir=data_dir or "data",
        download=False, seed=seed), preset="tutorial")
    progress = _Collect(log)
    setup(cfg)   # the process-wide settings of a training run (seeds, backend flags), as train makes them
    ours = _Ours(cfg, data, dev, progress)
    base = None
    if want_baseline:
        workers = baseline_workers if baseline_workers is not None else min(4, os.cpu_count() or 1)
        base = Baseline(ours.parts.splits.train_x, ours.parts.splits.train_y, model_name=model,
                        num_classes=data.num_classes, width=width, batch_size=batch_size, mean=data.mean,
                        std=data.std, device=dev, workers=workers, seed=seed)
    load_before = _loadavg()
    host_memory_kept = runtime.keep_host_memory(True, dev)
    say(f"bench: {model} batch {batch_size} on {dev} ({device_name(dev)}), amp {ours.parts.amp}, "
        f"{warmup} warm-up + {steps} timed steps in {windows} windows, data: {data_desc}")
    train = _time_training(ours, base, warmup, per_window, batch_size, say)
    n_eval = min(len(data.train_y), eval_images if eval_images is not None else (10_000 if on_cuda else 1024))
    eval_w, base_eval_w = _time_evaluation(ours, base, n_eval, 3 if on_cuda else 2)
    facts = {"model": model, "width": width, "batch_size": batch_size, "eval_batch_size": cfg.eval_batch_size,
             "eval_images": n_eval, "amp": ours.parts.amp, "compile": _compile_state(ours),
             "channels_last": cfg.channels_last, "steps": steps, "warmup": warmup, "windows": windows,
             "baseline_workers": base.workers if base is not None else None, "baseline_error": baseline_error,
             "host_memory_kept": host_memory_kept, "data": data_desc, "loadavg_before": load_before,
             "loadavg_after": _loadavg(), "warnings": list(progress.lines)}
    return _result(dev, train, eval_w, base_eval_w, base is not None, facts)


def _compile_state(ours: _Ours) -> str:
    m = ours.parts.step.model
    if not isinstance(m, runtime.CompileFallback):
        return "off"
    return "on" if m.compiled_active else "failed (eager fallback)"


def _result(dev: torch.device, train: dict, eval_w: list, base_eval_w: list, has_base: bool, facts: dict) -> dict:
    med = statistics.median
    train_img_s, eval_img_s = med(train["ours"]), med(eval_w)
    base_img_s = med(train["base"]) if train["base"] else None
    base_eval = med(base_eval_w) if base_eval_w else None
    first, base_first = train["first"], train["base_first"]
    return {
        "train_img_s": round(train_img_s, 2),
        "baseline_train_img_s": round(base_img_s, 2) if base_img_s else None,
        "ratio": round(train_img_s / base_img_s, 3) if base_img_s else None,
        "eval_img_s": round(eval_img_s, 2),
        "baseline_eval_img_s": round(base_eval, 2) if base_eval else None,
        "eval_ratio": round(eval_img_s / base_eval, 3) if base_eval else None,
        "device": str(dev), "device_name": device_name(dev), "cpu_name": cpu_name(),
        "gpu_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "cpu_flags": cpu_flags(), "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
        "train_windows_img_s": [round(v, 2) for v in train["ours"]],
        "baseline_windows_img_s": [round(v, 2) for v in train["base"]],
        "first_step_seconds": round(first, 3) if first is not None else None,
        "baseline_first_step_seconds": round(base_first, 3) if base_first is not None else None,
        "baseline": "tutorial DataLoader (PIL, RandomCrop+Flip+ToTensor+Normalize), fp32, contiguous, eager"
                    if has_base else None,
        **facts,
    }


def format_table(r: dict[str, Any]) -> str:
    """The human-readable result (the CLI prints this unless --json)."""
    def rate(v):
        return "n/a" if v is None else f"{v:,.1f} img/s"

    def times(v):
        return "n/a" if v is None else f"{v:.2f}x"

    lines = [
        f"{r['model']} batch {r['batch_size']} on {r['device']} ({r['device_name']}), torch {r['torch_version']}, "
        f"amp {r['amp']}, compile {r['compile']}, channels_last {r['channels_last']}, {r['threads']} threads"
        + (", host memory kept (ours)" if r.get("host_memory_kept") else ""),
        f"{'':8}{'ours':>16}{'baseline':>16}{'ratio':>9}",
        f"{'train':8}{rate(r['train_img_s']):>16}{rate(r['baseline_train_img_s']):>16}{times(r['ratio']):>9}",
        f"{'eval':8}{rate(r['eval_img_s']):>16}{rate(r['baseline_eval_img_s']):>16}{times(r['eval_ratio']):>9}",
        f"median of {r['windows']} windows after {r['warmup']} warm-up steps (first step {r['first_step_seconds']}s); "
        f"data: {r['data']}; load average {r['loadavg_before']} -> {r['loadavg_after']}",
    ]
    if r.get("baseline_error"):
        lines.append(r["baseline_error"])
    lines.extend(r.get("warnings", []))
    return "\n".join(lines)
