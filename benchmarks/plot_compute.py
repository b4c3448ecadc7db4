"""Accuracy against training compute, one curve per run directory, as a PNG.

    python benchmarks/plot_compute.py RUN_DIR [RUN_DIR ...] [--airbench airbench_cpu.json] [--out FILE.png]
        [--budget PFLOP] [--point LABEL PFLOP ACC] [--title TEXT]

Meant for `speedrun` against ResNet-18 `fast` cut short at the same compute (`--budget` draws the
speedrun's budget as a vertical line), with airbench94's end point from `airbench_cpu.py`.
Each run's curve is its validation accuracy per epoch (metrics.csv; the best of raw/EMA/SWA where
the run kept them) at the training compute spent by the end of that epoch: the `train_flops` column
when metrics.csv has one, else forward MACs (our `summary` counter, model and width from the run's
config.yaml) x 2 x 3 x training images seen (num_train from results.json, x epochs). The final TTA
accuracy (results.json `eval_acc_tta`) is drawn as a marker at the run's total compute. `--point`
adds a measured end point by hand (e.g. airbench94's from benchmarks/README.md when its
airbench_cpu.json is on another machine); say where it comes from in its label.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from resnet_cifar.compute import forward_macs, pflop, train_flops

ACC_COLUMNS = ("val_acc", "ema_val_acc", "swa_val_acc")


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def run_curve(run_dir: Path) -> dict:
    """{'label', 'pflop': [...], 'acc': [...], 'final_tta': (pflop, acc) | None} of one run directory."""
    import yaml

    from resnet_cifar.models import build_model

    results = json.loads((run_dir / "results.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    macs = forward_macs(build_model(cfg["model"], len(results["classes"]), float(cfg["width"])))
    xs, ys = [], []
    for row in rows:
        accs = [a for a in (_float(row.get(c)) for c in ACC_COLUMNS) if a is not None]
        if not accs:
            continue
        flops = _float(row.get("train_flops")) or train_flops(macs, results["num_train"] * int(row["epoch"]))
        xs.append(pflop(flops))
        ys.append(100 * max(accs))
    tta = results.get("eval_acc_tta")
    total = results.get("train_flops") or train_flops(macs, results["num_train"] * results["epochs"])
    label = (f"{cfg.get('preset', '?')}: {cfg['model']}" + (f" x{cfg['width']:g}" if cfg["width"] != 1 else "")
             + f", {cfg['epochs']} epochs" + (", drop-last" if cfg.get("drop_last") else "")
             + (f", cutout {cfg['cutout']}" if cfg.get("cutout") else "")
             + (f", seed {cfg['seed']}" if cfg.get("seed") else ""))
    return {"label": label, "pflop": xs, "acc": ys,
            "final_tta": (pflop(total), 100 * tta) if tta is not None else None}


def airbench_points(path: Path) -> list[tuple[str, float, float]]:
    data = json.loads(path.read_text())
    return [(f"{r['name']} (+TTA)", r["train_pflop"], 100 * r["val_acc_tta"]) for r in data["runs"]
            if r.get("name") == "airbench94" and r.get("val_acc_tta") is not None]


def plot(curves: list[dict], points, out: Path, budgets: list[float] | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=120)
    for c in curves:
        line, = ax.plot(c["pflop"], c["acc"], marker="o", ms=3, label=c["label"])
        if c["final_tta"]:  # one legend entry for all the stars (below), not one per run
            ax.plot(*c["final_tta"], marker="*", ms=10, color=line.get_color(), linestyle="none")
    if any(c["final_tta"] for c in curves):
        ax.plot([], [], marker="*", ms=10, color="grey", linestyle="none",
                label="star: the run's final accuracy with TTA")
    for label, x, y in points:
        ax.plot(x, y, marker="D", ms=7, color="black", linestyle="none", label=label)
    for budget in budgets or ():
        ax.axvline(budget, color="grey", linestyle="--", linewidth=1, label=f"budget {budget:g} PFLOP")
    ax.set_xlabel("training compute (PFLOP: forward MACs x 2 x 3 x images seen)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the axes
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (metrics.csv, results.json, config.yaml)")
    p.add_argument("--airbench", type=Path, help="airbench_cpu.json of benchmarks/airbench_cpu.py")
    p.add_argument("--budget", type=float, action="append", help="draw this compute (PFLOP) as a vertical line "
                   "(repeatable)")
    p.add_argument("--point", nargs=3, action="append", default=[], metavar=("LABEL", "PFLOP", "ACC"),
                   help="a measured end point: its label, training PFLOP and accuracy in %% (repeatable)")
    p.add_argument("--out", type=Path, default=Path("accuracy_vs_compute.png"))
    p.add_argument("--title", default="CIFAR-10 (JPEG copy), 45,000 train / 5,000 val")
    args = p.parse_args(argv)
    for d in args.runs:
        missing = [n for n in ("metrics.csv", "results.json", "config.yaml") if not (d / n).is_file()]
        if missing:
            print(f"plot_compute: {d} is not a finished run directory (no {', '.join(missing)})", file=sys.stderr)
            return 2
    curves = [run_curve(d) for d in args.runs]
    points = airbench_points(args.airbench) if args.airbench else []
    try:
        points += [(label, float(x), float(y)) for label, x, y in args.point]
    except ValueError:
        print(f"plot_compute: --point takes LABEL PFLOP ACC with numbers, got {args.point}", file=sys.stderr)
        return 2
    plot(curves, points, args.out, args.budget, args.title)
    for c in curves:
        end = f"{c['acc'][-1]:.2f}% at {c['pflop'][-1]:.4f} PFLOP" if c["acc"] else "no validation accuracy"
        print(f"{c['label']}: {len(c['acc'])} points, last {end}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
