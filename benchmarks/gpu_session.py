"""Every GPU measurement of the "Speed" issue, in one prepared script for a session that has a GPU.

What it does, in order (the essential parts first, extras only while the time budget lasts):
  1. unpack the shared CIFAR-10 JPEG archive (50,000 train images) and decode it once (timed);
  2. `resnet-cifar bench`: ResNet-18, batch 128, bf16, compile auto (= on), ours vs the tutorial
     baseline, on those images;
  3. `resnet-cifar train --preset fast` on them (validation: 5,000 stratified images): epochs and
     seconds until validation accuracy first reaches 95% (raw or EMA weights), best accuracy, img/s;
  4. a sync check: host-device synchronisations inside the loop body Trainer.loop_step between two
     reads of the finite watch (which happen every CHECK_EVERY_ASYNC steps) (fast preset: bf16,
     EMA, fused SGD; eager) counted with torch.cuda.set_sync_debug_mode("warn") - the goal is 0;
  5. extras: the same bench with --compile off (what compile buys), and with batch 512 (the fast
     preset's batch);
then prints one table and writes gpu_session.json, gpu_session.md and the run's metrics.csv and
results.json into --out-dir (default: $OUT, else ./gpu_session_out).

Run it from the repository root on the GPU machine (the project need not be installed; src/ is put
on the path). With the device tool of this workplace, from the checkout:

    mkdir -p local && cp ../shared/data/cifar10-jpeg-train.tar.gz local/     # once; local/ is git-ignored
    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu_session.py --archive local/cifar10-jpeg-train.tar.gz",
        carry=["local/cifar10-jpeg-train.tar.gz"], timeout_s=600)

It plans for about 8 minutes (--budget 480); the fast-preset run is stopped at --train-timeout seconds.
`--smoke` runs every step on the CPU with a tiny model (no GPU needed) to check the script itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ARCHIVE_CANDIDATES = ["local/cifar10-jpeg-train.tar.gz", "shared/data/cifar10-jpeg-train.tar.gz",
                      "../shared/data/cifar10-jpeg-train.tar.gz"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def find_data(args) -> Path:
    if args.data_dir:
        return Path(args.data_dir)
    if not args.archive and (ROOT / "data/cifar10-jpeg/train").is_dir():
        return ROOT / "data/cifar10-jpeg"
    archive = Path(args.archive) if args.archive else next(
        (ROOT / c for c in ARCHIVE_CANDIDATES if (ROOT / c).is_file()), None)
    if archive is None or not archive.is_file():
        raise SystemExit(f"no CIFAR-10 JPEG archive found (tried {ARCHIVE_CANDIDATES}); pass --archive or --data-dir")
    dest = Path(args.work) / "cifar10-jpeg"
    if not (dest / "train").is_dir():
        t0 = time.perf_counter()
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tf:
            try:
                tf.extractall(dest, filter="data")
            except TypeError:  # Python < 3.12 without extraction filters; the archive is the trusted shared one
                tf.extractall(dest)
        log(f"unpacked {archive} in {time.perf_counter() - t0:.1f}s")
    return dest


SMOKE_BENCH = dict(model="resnet20", width=0.25, steps=2, warmup=1, windows=1, eval_images=64, baseline_workers=1)
SMOKE_TRAIN = ["--model", "resnet20", "--width", "0.25", "--epochs", "2", "--warmup-epochs", "0", "--train-subset", "512",
               "--val-size", "256",
               "--batch-size", "128"]


def bench(name: str, data_dir: Path, device: str, smoke: bool, **kw) -> dict:
    from resnet_cifar.bench import run_bench

    kw = {"model": "resnet18", **kw, **(SMOKE_BENCH if smoke else {})}
    log(f"bench {name}: {kw}")
    t0 = time.perf_counter()
    r = run_bench(device=device, dataset="folder", data_dir=str(data_dir), log=log, **kw)
    r["wall_seconds"] = round(time.perf_counter() - t0, 1)
    r["name"] = name
    log(f"bench {name}: ours {r['train_img_s']} img/s, baseline {r['baseline_train_img_s']} img/s, "
        f"ratio {r['ratio']}, eval {r['eval_img_s']} img/s, first step {r['first_step_seconds']}s")
    return r


def train_fast(data_dir: Path, run_dir: Path, timeout: float, device: str, smoke: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RESNET_CIFAR_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "resnet_cifar", "train", "--preset", "fast", "--dataset", "folder",
           "--data-dir", str(data_dir), "--device", device, "--out", str(run_dir), "--overwrite", "--no-report"]
    cmd += SMOKE_TRAIN if smoke else []
    log("train: " + " ".join(cmd))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t0
    out: dict = {"rc": rc, "wall_seconds": round(wall, 1)}
    metrics = run_dir / "metrics.csv"
    rows = list(csv.DictReader(metrics.open())) if metrics.is_file() else []

    def f(v):
        return float(v) if v not in (None, "") else None

    hit = None
    for r in rows:
        accs = [a for a in (f(r["val_acc"]), f(r["ema_val_acc"])) if a is not None]
        if accs and max(accs) >= 0.95:
            hit = r
            break
    out.update({
        "epochs_run": len(rows),
        "epoch_to_95": int(hit["epoch"]) if hit else None,
        "seconds_to_95": round(f(hit["elapsed_seconds"]), 1) if hit else None,
        "best_val_acc": max((max(a for a in (f(r["val_acc"]), f(r["ema_val_acc"])) if a is not None) for r in rows),
                            default=None),
        "median_epoch_seconds": (sorted(f(r["epoch_seconds"]) for r in rows)[len(rows) // 2] if rows else None),
        "median_train_img_s": (sorted(f(r["images_per_s"]) for r in rows)[len(rows) // 2] if rows else None),
        "first_epoch_seconds": f(rows[0]["epoch_seconds"]) if rows else None,
        "elapsed_seconds": f(rows[-1]["elapsed_seconds"]) if rows else None,
    })
    results = run_dir / "results.json"
    if results.is_file():
        res = json.loads(results.read_text())
        out.update({"time_to_acc": res.get("time_to_acc"), "selected": res.get("selected"),
                    "eval_acc": res.get("eval_acc"), "eval_acc_tta": res.get("eval_acc_tta"),
                    "eval_split": res.get("eval_split"), "train_seconds": res.get("train_seconds")})
    log(f"train: {out}")
    return out


def sync_check(steps: int = 5, smoke: bool = False) -> dict:
    """Host-device syncs in the engine's loop body (Trainer.loop_step: step, EMA, fused SGD, the
    finite watch; fast preset, bf16), after warm-up, between two of the watch's reads.

    torch.cuda.set_sync_debug_mode("warn") warns on every synchronizing call. The watch is read
    (one sync) every CHECK_EVERY_ASYNC steps; the check sets check_every beyond its steps to count
    what happens in between.
    """
    import warnings

    import torch

    from resnet_cifar.bench import synthetic_dataset
    from resnet_cifar.config import resolve
    from resnet_cifar.engine import Trainer, setup

    # compile off: the compiled graph itself does not synchronise, and this keeps the check to seconds
    small = dict(model="resnet20", width=0.25, batch_size=64) if smoke else {}
    data = synthetic_dataset(512 * 12)
    cfg = resolve(flag_values=dict(epochs=1, val_size=0, scheduler="constant", device="cuda", compile="off", **small),
                  preset="fast")
    setup(cfg)
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(cfg, data, d)
    batches = t.train_loader.batches(1)
    t.check_every = 10**9
    for _ in range(3):
        _, x, y = next(batches)
        t.loop_step(x, y, len(y), False)
    torch.cuda.synchronize()
    caught = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                _, x, y = next(batches)
                t.loop_step(x, y, len(y), False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        caught = [str(m.message).splitlines()[0][:160] for m in w if "synchroniz" in str(m.message).lower()]
    out = {"steps": steps, "syncs": len(caught), "examples": sorted(set(caught))[:5]}
    log(f"sync check: {out}")
    return out


def markdown(env: dict, benches: list[dict], train: dict | None) -> str:
    lines = [f"GPU session {env['date']}: {env['gpu']}, torch {env['torch']}, CUDA {env['cuda']}", "",
             "| measurement | ours | baseline | ratio | eval ours | eval baseline | amp | compile | first step |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in benches:
        lines.append(f"| bench {b['name']} (batch {b['batch_size']}) | {b['train_img_s']} img/s | "
                     f"{b['baseline_train_img_s']} img/s | {b['ratio']}x | {b['eval_img_s']} img/s | "
                     f"{b['baseline_eval_img_s']} img/s | {b['amp']} | {b['compile']} | {b['first_step_seconds']} s |")
    if train:
        lines += ["", "| fast preset | value |", "| --- | --- |"]
        for k in ("epoch_to_95", "seconds_to_95", "best_val_acc", "epochs_run", "median_epoch_seconds",
                  "median_train_img_s", "first_epoch_seconds", "elapsed_seconds", "eval_acc_tta", "rc"):
            lines.append(f"| {k} | {train.get(k)} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archive", help="cifar10-jpeg-train.tar.gz (default: the first of %s found)" % ARCHIVE_CANDIDATES)
    p.add_argument("--data-dir", help="an already unpacked folder (PATH/train/<class>/*.jpg)")
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--out-dir", default=os.environ.get("OUT") or "gpu_session_out")
    p.add_argument("--budget", type=float, default=480, help="seconds; extras are skipped past it")
    p.add_argument("--train-timeout", type=float, default=300)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help="a minutes-long dry run of every step on the CPU (tiny model, few steps): checks the script")
    args = p.parse_args()
    t_start = time.perf_counter()

    import torch

    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_session.py: no CUDA device here; this script is for the GPU machine", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args.work = args.work or tempfile.mkdtemp(prefix="rc-gpu-")
    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "none (smoke run)",
           "cpu_cores": os.cpu_count(), "smoke": args.smoke}
    log(f"env: {env}")
    data_dir = find_data(args)

    from resnet_cifar.data import load_dataset

    t0 = time.perf_counter()
    data = load_dataset("folder", data_dir, log=log)
    env["decode_seconds"] = round(time.perf_counter() - t0, 1)
    env["train_images"] = len(data.train_y)
    del data
    log(f"decoded {env['train_images']} images in {env['decode_seconds']}s")

    results: dict = {"env": env, "bench": [], "train_fast": None}

    def save():
        (out_dir / "gpu_session.json").write_text(json.dumps(results, indent=1))
        (out_dir / "gpu_session.md").write_text(markdown(env, results["bench"], results["train_fast"]) + "\n")

    results["bench"].append(bench("bf16+compile", data_dir, device, args.smoke, batch_size=128, amp="bf16",
                                  compile="auto"))
    save()
    if not args.skip_train:
        run_dir = Path(args.work) / "fast"
        left = args.budget - (time.perf_counter() - t_start)
        results["train_fast"] = train_fast(data_dir, run_dir, timeout=max(60.0, min(args.train_timeout, left)),
                                           device=device, smoke=args.smoke)
        for name in ("metrics.csv", "results.json"):
            if (run_dir / name).is_file():
                shutil.copy(run_dir / name, out_dir / f"fast_{name}")
        save()
    extras = [("bf16 eager", dict(batch_size=128, amp="bf16", compile="off")),
              ("bf16+compile b512", dict(batch_size=512, amp="bf16", compile="auto", steps=50, warmup=15))]
    try:
        results["sync_check"] = sync_check(smoke=args.smoke) if device == "cuda" else {"skipped": "no CUDA"}
    except Exception as e:  # a diagnostic; the measurements stand without it
        results["sync_check"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    save()
    for name, kw in extras:
        if time.perf_counter() - t_start > args.budget - 60:
            log(f"skipping extra bench {name!r}: budget reached")
            continue
        results["bench"].append(bench(name, data_dir, device, args.smoke, **kw))
        save()
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    save()
    print(markdown(env, results["bench"], results["train_fast"]), flush=True)
    print(f"sync check: {results.get('sync_check')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
