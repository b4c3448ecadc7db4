"""`resnet-cifar train`: parse flags, resolve the config, load data, call engine.fit, report."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from ..config import (AMP_MODES, COMPILE_MODES, DEVICES, OPTIMIZERS, PAD_MODES, PRESETS, SCHEDULERS,
                      load_config_file, resolve)
from ..constants import DATASETS
from ..errors import UsageError

B = argparse.BooleanOptionalAction


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (default: the tutorial preset, ResNet-18 on CIFAR-10)",
        description="Train a ResNet. Precedence: preset < --config file < flags. Every flag below "
                    "defaults to the preset's value.", argument_default=None)
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of config keys (flags win over it)")
    p.add_argument("--preset", choices=PRESETS, help="tutorial (default: the classic recipe, 250 epochs) "
                                                     "or fast (few epochs, one-cycle-like)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASETS)
    d.add_argument("--data-dir", metavar="PATH")
    d.add_argument("--download", action=B, help="fetch the official CIFAR archive when missing (default: on)")
    d.add_argument("--val-size", type=int, help="validation images carved from train (default 5000; 0 = none)")
    d.add_argument("--train-subset", type=int, metavar="N", help="train on N images (stratified); 0 = all")
    d.add_argument("--crop-padding", type=int)
    d.add_argument("--pad-mode", choices=PAD_MODES)
    d.add_argument("--flip", action=B)
    d.add_argument("--cutout", type=int, metavar="SIZE")
    m = p.add_argument_group("model")
    m.add_argument("--model", metavar="NAME", help="see `resnet-cifar summary --help` for the list")
    m.add_argument("--width", type=float, help="channel multiplier (1.0 = reference)")
    m.add_argument("--zero-init-residual", action=B)
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", type=int, help="GLOBAL batch per optimizer step = per-device batch x devices "
                                                   "x --accum-steps (the lr is never rescaled silently)")
    o.add_argument("--accum-steps", type=int, help="split each batch into this many micro-batches")
    o.add_argument("--optimizer", choices=OPTIMIZERS)
    o.add_argument("--lr", type=float)
    o.add_argument("--momentum", type=float)
    o.add_argument("--nesterov", action=B)
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--no-bn-decay", action=B, help="no weight decay on BN parameters and biases")
    o.add_argument("--label-smoothing", type=float)
    o.add_argument("--scheduler", choices=SCHEDULERS)
    o.add_argument("--warmup-epochs", type=float)
    o.add_argument("--plateau-patience", type=int)
    o.add_argument("--plateau-factor", type=float)
    a = p.add_argument_group("averaging")
    a.add_argument("--swa", action=B, help="stochastic weight averaging for the last part of training")
    a.add_argument("--swa-start", type=float, help="epoch, or fraction of the epochs (< 1)")
    a.add_argument("--swa-lr", type=float)
    a.add_argument("--ema", type=float, metavar="DECAY", help="EMA of the weights per step (e.g. 0.999); 0 = off")
    r = p.add_argument_group("runtime")
    r.add_argument("--amp", choices=AMP_MODES)
    r.add_argument("--device", choices=DEVICES)
    r.add_argument("--compile", choices=COMPILE_MODES)
    r.add_argument("--channels-last", action=B)
    r.add_argument("--seed", type=int)
    r.add_argument("--seeds", metavar="LIST", help="comma-separated seeds: one run each under --out/seed-N, "
                                                   "plus summary.json with mean ± std")
    r.add_argument("--deterministic", action=B, help="bitwise-reproducible kernels (slower on CUDA)")
    r.add_argument("--eval-batch-size", type=int)
    r.add_argument("--tta", action=B, help="flip test-time augmentation for the final test evaluation")
    r.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="also checkpoint every N steps")
    r.add_argument("--auto-batch", action=B, help="on CUDA out-of-memory, halve the micro-batch and "
                                                  "double --accum-steps (same global batch and results)")
    r.add_argument("--sync-bn", action=B, help="SyncBatchNorm across processes under torchrun")
    r.add_argument("--report", action=B, help="build RUN_DIR/report at the end (default: on)")
    out = p.add_argument_group("run directory")
    out.add_argument("--out", metavar="RUN_DIR", help="default: runs/<date>-<time>-<model>-<dataset>")
    out.add_argument("--overwrite", action="store_true", default=False,
                     help="replace an existing run directory")
    out.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last.pt")
    p.set_defaults(run=run)


NON_CONFIG = {"command", "run", "config", "preset", "seeds", "overwrite", "resume"}


def _flag_values(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in NON_CONFIG and v is not None}


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers like 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UsageError(f"--seeds must list distinct non-negative integers, got {text!r}")
    return seeds


def _check_out(out: Path, overwrite: bool) -> None:
    from ..distributed import RESTART_MARKER

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; choose a directory path")
    if out.is_dir() and any(p.name != RESTART_MARKER for p in out.iterdir()):
        if not overwrite:
            raise UsageError(f"--out {str(out)!r} exists and is not empty; pass --overwrite to replace it, "
                             f"--resume {out} to continue it, or choose another --out")
        if not ((out / "config.yaml").is_file() or (out / "summary.json").is_file()):
            raise UsageError(f"--overwrite refuses to delete {str(out)!r}: it is not a resnet-cifar run directory")


def _claim_out(out: Path, overwrite: bool) -> bool:
    """Rank 0's verdict on --out: True for a torchrun restart of the job that created it."""
    from .. import distributed

    if distributed.is_restart_of(out):
        return True
    _check_out(out, overwrite)
    return False


def _restart_state(run_dir: Path, cfg) -> dict | None:
    """Under a torchrun restart: the run's checkpoints/last.pt (None when it has none yet)."""
    from ..engine import load_resume_state

    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return None
    state = load_resume_state(run_dir)
    if state.get("config") != cfg.to_dict():
        raise UsageError(f"torchrun restart: {str(run_dir)!r} holds a run with another config; "
                         "not resuming it (choose another --out)")
    return state


def run(args) -> int:
    from .. import distributed

    world = distributed.world_from_env()
    distributed.init(world)  # first: every decision below is made once, on rank 0, and shared
    try:
        return _run(args, world)
    finally:
        distributed.shutdown(world)


def _run(args, world) -> int:
    from .. import distributed, runtime
    from ..data import load_dataset
    from ..engine import fit, load_resume_state
    from ..progress import Console, Silent

    console = Console() if world.is_main else Silent()
    restarting = False

    if args.resume:
        extra = {k for k, v in _flag_values(args).items() if k != "device"} | (
            {"config"} if args.config else set()) | ({"preset"} if args.preset else set()) | (
            {"seeds"} if args.seeds else set())
        if extra:
            raise UsageError(f"--resume continues a run with its saved config; drop {', '.join(sorted(extra))} "
                             "(only --device may change)")
        state = distributed.on_main(lambda: load_resume_state(args.resume), world)
        from ..config import from_dict

        saved = dict(state["config"])
        if args.device:
            saved["device"] = args.device
        cfg = from_dict(saved)
        out = Path(args.resume)
        runs = [(cfg, out, state)]
    else:
        file_values = load_config_file(args.config) if args.config else {}
        cfg = resolve(file_values, _flag_values(args), args.preset)
        seeds = _parse_seeds(args.seeds) if args.seeds else None
        out = Path(distributed.on_main(
            lambda: cfg.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}-{cfg.dataset}", world))
        restarting = distributed.on_main(lambda: _claim_out(out, args.overwrite), world)
        if seeds:
            from dataclasses import replace

            runs = [(replace(cfg, seed=s, out=str(out / f"seed-{s}")), out / f"seed-{s}", None) for s in seeds]
        else:
            runs = [(cfg, out, None)]
        if restarting:  # torchrun --max-restarts brought us back: continue from the last checkpoints
            runs = [(c, d, distributed.on_main(lambda c=c, d=d: _restart_state(d, c), world)) for c, d, _ in runs]
            for c, d, st in runs:
                console.log(f"torchrun restart {distributed.restart_count()}: " + (
                    f"resuming {d} from epoch {st['epoch']} batch {st['batch']} (checkpoints/last.pt)" if st
                    else f"no checkpoint in {d} yet; starting it again"))
        elif distributed.max_restarts() > 0 and not cfg.out:
            console.log("warning: torchrun --max-restarts without --out: the default run directory is named "
                        "after the start time, so a restart cannot find it; pass --out to resume on restarts")
        cfg = runs[0][0]

    runtime.configure_threads()
    device = runtime.pick_device(cfg.device, world.local_rank if world.distributed else None)  # before any data
    runtime.keep_host_memory(device=device)
    distributed.validate(cfg.batch_size, cfg.accum_steps, cfg.sync_bn, world, device)
    data = distributed.main_first(lambda: load_dataset(
        cfg.dataset, cfg.data_dir, download=cfg.download and cfg.dataset != "folder", log=console.log), world)
    if not args.resume and args.overwrite and out.exists() and world.is_main and not restarting:
        shutil.rmtree(out)
    if not args.resume and world.is_main:
        distributed.mark_run_dir(out)  # lets a torchrun restart of this job resume here
    if world.is_main:
        n_train = cfg.train_subset or len(data.train_y) - cfg.val_size
        console.log(f"{cfg.model} on {cfg.dataset}: {n_train} train / {cfg.val_size} val images, "
                    f"{cfg.epochs} epochs, global batch {cfg.batch_size} "
                    f"= {cfg.batch_size // cfg.accum_steps // max(world.size, 1)} per device x {world.size} "
                    f"device(s) x {cfg.accum_steps} accumulation step(s), preset {cfg.preset} -> {out}")
    all_results = []
    for run_cfg, run_dir, state in runs:
        results = fit(run_cfg, data, run_dir, progress=console, resume_state=state, world=world)
        all_results.append((run_cfg.seed, run_dir, results))
        if world.is_main:
            _print_results(results, run_dir)
            if run_cfg.report:
                _build_report(run_dir, console, data)
    if len(runs) > 1 and world.is_main:
        _write_summary(out, all_results)
        if cfg.report:
            _build_report(out, console)
    return 0


def _print_results(results: dict, run_dir: Path) -> None:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    line = (f"done: best val acc {pct(results['best_val_acc'])} ({results['selected']} weights), "
            f"test acc {pct(results['test_acc'])}")
    if results.get("test_acc_tta") is not None:
        line += f" (flip TTA {pct(results['test_acc_tta'])})"
    line += f", {results['train_seconds']:.0f}s -> {run_dir}"
    print(line, file=sys.stdout, flush=True)


def _build_report(run_dir: Path, console, data=None) -> None:
    try:
        from ..report import build_report
    except ImportError:
        return
    try:
        path = build_report(run_dir, images=data, log=console.log)  # the images in memory: no reload
        console.log(f"report: {path}")
    except Exception as e:  # noqa: BLE001 - the training result stands even if the report fails
        console.log(f"warning: the report could not be built ({type(e).__name__}: {e}); "
                    f"retry with `resnet-cifar report {run_dir}`")


def _write_summary(out: Path, all_results) -> None:
    from ..engine import write_json

    metric = "test_acc" if all(r["test_acc"] is not None for _, _, r in all_results) else "best_val_acc"
    values = [r[metric] for _, _, r in all_results if r[metric] is not None]
    summary = {
        "metric": metric, "seeds": [s for s, _, _ in all_results],
        "runs": [{"seed": s, "dir": d.name, "test_acc": r["test_acc"], "best_val_acc": r["best_val_acc"]}
                 for s, d, r in all_results],
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }
    write_json(out / "summary.json", summary)
    print(f"{len(values)} seeds: {metric} {100 * summary['mean']:.2f} ± {100 * summary['std']:.2f}%"
          if values else "no metric to summarise", flush=True)
