"""The anchor, side by side on one CPU and one split: airbench94 (unchanged, mapped to the CPU in fp32), then ours.

    python benchmarks/airbench_cpu.py --data-dir PATH/cifar10-jpeg [--val-size 5000] [--seed 0]
        [--epochs E] [--limit N] [--batch-size 1024] [--ours-preset speedrun] [--ours-args "..."]
        [--skip-airbench] [--skip-ours] [--out-dir DIR] [--smoke]

Both halves train on the same images: our folder loader decodes PATH/train/<class>/*, our
`train_val_split(labels, --val-size, --seed)` carves the validation split (stratified), and
`--limit N` takes the same stratified N training images our `--train-subset N` takes. airbench
gets them as its CifarLoader files (`train.pt` / `test.pt`: uint8 NHWC images, int64 labels,
class names); its "test" set is our validation split, the one our run selects on and reports.

airbench 0.1.8 (PyPI, Keller Jordan, MIT) is CUDA-only as shipped. The harness changes no line of
its recipe; for the duration of the run it maps, at the torch level: `Module.cuda()` and
`Module.half()` to no-ops, `Tensor.half()` to `.float()` (fp32 throughout), `torch.cuda.Event`
to a wall-clock timer, `torch.cuda.synchronize` to a no-op, and its CifarLoader's default device
`gpu=0` to the CPU. Its hyperparameters (`hyp`, 9.9 epochs at batch 1024, TTA level 2) are kept;
`--epochs` and `--batch-size` are its own arguments (its lr and decay are per 1,024 examples, so a
smaller batch keeps the recipe). It is timed around `train94(verbose=False)`: data prep on the
device, whitening, training (its per-epoch evaluation is what verbose=False skips).

Ours: `python -m resnet_cifar train --preset speedrun` on the same split, in a subprocess (the
user's path), `results.json` read back. Both report validation accuracy without and with TTA,
training seconds, training PFLOPs (forward MACs x 2 x 3 x images seen, MACs from our `summary`).
Ours' seconds are results.json's `train_seconds`: training plus the per-epoch validation (5,000 images,
forward only: ~4% of an epoch), as the engine counts them; airbench's exclude its evaluation.

airbench is not a dependency of resnet-cifar: install it in a separate environment, or point
PYTHONPATH at its unpacked sdist (`pip download --no-deps airbench==0.1.8`; it also imports
torchvision). Results go to --out-dir (default $OUT or ./airbench_cpu_out): airbench_cpu.json and
the run directory of ours.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from resnet_cifar.compute import eval_flops, forward_macs, pflop, train_flops
from resnet_cifar.data import load_dataset
from resnet_cifar.data.split import stratified_subset, train_val_split

AIRBENCH_VERSION = "0.1.8"
SMOKE = dict(limit=500, val_size=200, epochs=1, batch_size=128)


def log(msg: str) -> None:
    print(f"[airbench_cpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------- data
def load_split(data_dir: str, val_size: int, seed: int, limit: int):
    """(train_x, train_y, val_x, val_y, classes): uint8 NCHW, as `train` builds them."""
    data = load_dataset("folder", data_dir, log=log)
    train_idx, val_idx = train_val_split(data.train_y, val_size, seed)
    if limit:
        train_idx = stratified_subset(train_idx, data.train_y, limit, seed)
    return (data.train_x[train_idx], data.train_y[train_idx], data.train_x[val_idx], data.train_y[val_idx],
            list(data.classes))


def airbench_dict(x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict:
    """airbench's CifarLoader file: {'images': uint8 (N, 32, 32, 3), 'labels': int64 (N,), 'classes': [...]}."""
    return {"images": x.permute(0, 2, 3, 1).contiguous(), "labels": y.to(torch.int64).clone(), "classes": classes}


# ------------------------------------------------------------------------------- CPU mapping
class _WallEvent:
    """torch.cuda.Event(enable_timing=True) on the CPU: record() takes the time, elapsed_time() is in ms."""

    def __init__(self, *args, **kwargs):
        self.t = None

    def record(self, *args):
        self.t = time.perf_counter()

    def elapsed_time(self, end: "_WallEvent") -> float:
        return (end.t - self.t) * 1e3


@contextlib.contextmanager
def cpu_fp32(utils_module):
    """Run airbench's CUDA/fp16 code on the CPU in fp32 without touching its recipe."""
    saved = [(torch.nn.Module, "cuda"), (torch.nn.Module, "half"), (torch.Tensor, "half"),
             (torch.cuda, "Event"), (torch.cuda, "synchronize"), (utils_module, "CifarLoader")]
    saved = [(obj, name, getattr(obj, name)) for obj, name in saved]
    base_loader = utils_module.CifarLoader

    class CpuCifarLoader(base_loader):
        def __init__(self, *args, gpu="cpu", **kwargs):
            super().__init__(*args, gpu=gpu, **kwargs)

    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.nn.Module.half = lambda self: self
    torch.Tensor.half = lambda self, *a, **k: self.float()
    torch.cuda.Event = _WallEvent
    torch.cuda.synchronize = lambda *a, **k: None
    utils_module.CifarLoader = CpuCifarLoader
    try:
        yield CpuCifarLoader
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def _import_airbench():
    try:
        import airbench
        from airbench import lib_airbench94, utils
    except ImportError as e:
        raise SystemExit(f"airbench_cpu: cannot import airbench ({e}); install airbench=={AIRBENCH_VERSION} "
                         "(and torchvision) in a separate environment, or put its unpacked sdist on PYTHONPATH") from None
    version = getattr(airbench, "__version__", None)
    return lib_airbench94, utils, version


def run_airbench(split, epochs: float | None, batch_size: int, workdir: Path, seed: int) -> dict:
    lib94, utils, version = _import_airbench()
    train_x, train_y, val_x, val_y, classes = split
    folder = workdir / "cifar10"     # train() opens CifarLoader('cifar10', train=False) itself
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(airbench_dict(train_x, train_y, classes), folder / "train.pt")
    torch.save(airbench_dict(val_x, val_y, classes), folder / "test.pt")
    epochs = lib94.hyp["opt"]["train_epochs"] if epochs is None else epochs
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with cpu_fp32(utils) as Loader:
            torch.manual_seed(seed)
            train_loader = Loader("cifar10", train=True, batch_size=batch_size, aug=lib94.hyp["aug"], altflip=True)
            steps = math.ceil(len(train_loader) * epochs)
            log(f"airbench94: {len(train_y)} train / {len(val_y)} val images, {epochs} epochs = {steps} steps "
                f"of {batch_size}, fp32 on {cpu_name()}")
            t0 = time.perf_counter()
            model = lib94.train94(train_loader, epochs=epochs, verbose=False)
            seconds = time.perf_counter() - t0
            test_loader = Loader("cifar10", train=False, batch_size=2000)
            acc = utils.evaluate(model, test_loader, tta_level=0)
            t1 = time.perf_counter()
            acc_tta = utils.evaluate(model, test_loader, tta_level=lib94.hyp["net"]["tta_level"])
            tta_seconds = time.perf_counter() - t1
            macs = forward_macs(model)
    finally:
        os.chdir(cwd)
    seen = steps * batch_size      # drop_last: every step sees a full batch
    return {"name": "airbench94", "version": version or AIRBENCH_VERSION, "val_acc": acc, "val_acc_tta": acc_tta,
            "train_seconds": seconds, "tta_seconds": tta_seconds, "epochs": epochs, "steps": steps,
            "batch_size": batch_size, "images_seen": seen, "macs_per_image": macs,
            "train_pflop": pflop(train_flops(macs, seen)), "tta_eval_pflop": pflop(eval_flops(macs, len(val_y), 6))}


# ------------------------------------------------------------------------------------- ours
def ours_command(args, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "resnet_cifar", "train", "--preset", args.ours_preset, "--dataset", "folder",
           "--data-dir", str(args.data_dir), "--val-size", str(args.val_size), "--seed", str(args.seed),
           "--device", "cpu", "--out", str(run_dir), "--no-report"]
    if args.limit:
        cmd += ["--train-subset", str(args.limit)]
    if args.epochs is not None:
        cmd += ["--epochs", str(int(math.ceil(args.epochs)))]
    return cmd + shlex.split(args.ours_args)


def _our_train_flops(results: dict, run_dir: Path) -> tuple[int, int]:
    """(train FLOPs, MACs per image): from results.json when it has them, else from the run's config."""
    import yaml

    from resnet_cifar.models import build_model

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    macs = forward_macs(build_model(cfg["model"], len(results["classes"]), cfg["width"]))
    flops = results.get("train_flops") or train_flops(macs, results["num_train"] * results["epochs"])
    return int(flops), macs


def run_ours(args, out_dir: Path) -> dict:
    run_dir = out_dir / f"ours-{args.ours_preset}-seed{args.seed}"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = ours_command(args, run_dir)
    log("ours: " + " ".join(shlex.quote(c) for c in cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"name": f"resnet-cifar {args.ours_preset}", "error": f"train exited with {proc.returncode}",
                "command": cmd}
    results = json.loads((run_dir / "results.json").read_text())
    flops, macs = _our_train_flops(results, run_dir)
    return {"name": f"resnet-cifar {args.ours_preset}", "model": results["model"],
            "val_acc": results["eval_acc"], "val_acc_tta": results.get("eval_acc_tta"),
            "best_val_acc": results["best_val_acc"], "eval_split": results["eval_split"],
            "train_seconds": results["train_seconds"], "wall_seconds": wall, "epochs": results["epochs"],
            "steps": results["steps"], "batch_size": results["global_batch"],
            "images_seen": results["num_train"] * results["epochs"], "macs_per_image": macs,
            "train_pflop": pflop(flops), "time_to_acc": results.get("time_to_acc"),
            "flops_to_acc": results.get("flops_to_acc"), "run_dir": str(run_dir), "command": cmd}


# ------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="image folder with train/<class>/* (the JPEG copy)")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=None, help="both halves (default: each recipe's own; "
                   "ours rounds up to whole epochs)")
    p.add_argument("--limit", type=int, default=0, help="train on N stratified images (our --train-subset)")
    p.add_argument("--batch-size", type=int, default=1024, help="airbench's batch (its default 1024)")
    p.add_argument("--ours-preset", default="speedrun")
    p.add_argument("--ours-args", default="", help="extra flags for our train, e.g. \"--width 0.5\"")
    p.add_argument("--skip-airbench", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--out-dir", default=os.environ.get("OUT") or "airbench_cpu_out")
    p.add_argument("--smoke", action="store_true", help=f"a check of the script in < 1 minute: {SMOKE}")
    args = p.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            if getattr(args, k) in (None, 0, p.get_default(k)):
                setattr(args, k, v)
    return args


def summary_lines(rows: list[dict]) -> list[str]:
    out = [f"{'run':<26}{'val acc':>9}{'+TTA':>9}{'train s':>10}{'train PFLOP':>13}{'images seen':>13}"]
    for r in rows:
        if "error" in r:
            out.append(f"{r['name']:<26} {r['error']}")
            continue
        tta = "-" if r.get("val_acc_tta") is None else f"{100 * r['val_acc_tta']:.2f}%"
        out.append(f"{r['name']:<26}{100 * r['val_acc']:>8.2f}%{tta:>9}{r['train_seconds']:>10.1f}"
                   f"{r['train_pflop']:>13.4f}{r['images_seen']:>13,}")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "loadavg_before": os.getloadavg(), "args": vars(args), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                           time.gmtime())}
    rows = []
    if not args.skip_airbench:
        split = load_split(args.data_dir, args.val_size, args.seed, args.limit)
        with tempfile.TemporaryDirectory(prefix="airbench-cpu-") as tmp:
            rows.append(run_airbench(split, args.epochs, args.batch_size, Path(tmp), args.seed))
        del split
    if not args.skip_ours:
        rows.append(run_ours(args, out_dir))
    env["loadavg_after"] = os.getloadavg()
    (out_dir / "airbench_cpu.json").write_text(json.dumps({"env": env, "runs": rows}, indent=2))
    print(f"CPU: {env['cpu']} ({env['cores']} cores), torch {env['torch']}, load {env['loadavg_before'][0]:.1f}"
          f" -> {env['loadavg_after'][0]:.1f}")
    print("\n".join(summary_lines(rows)))
    print(f"written: {out_dir / 'airbench_cpu.json'}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
