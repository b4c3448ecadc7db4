"""`resnet-cifar train`: parse flags, resolve the config, call `resnet_cifar.run.train`, print."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import PRESET_VALUES, PRESETS
from ..errors import UsageError
from .config_flags import add_config_flags, config_flag_values


def add_parser(sub) -> None:
    presets = "; ".join(f"{name}: {PRESET_VALUES[name].get('epochs')} epochs" for name in PRESETS)
    p = sub.add_parser(
        "train", help="train a model (default: the tutorial preset, ResNet-18 on CIFAR-10)",
        description="Train a ResNet. Precedence: preset < --config file < flags. Each flag's help shows "
                    "the value it takes from each preset when not given.", argument_default=None)
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file of config keys (flags win over it)")
    p.add_argument("--preset", choices=PRESETS, help=f"the recipe the other values start from ({presets}; "
                                                     "default: tutorial, the classic recipe)")
    p.add_argument("--print-config", action="store_true", default=False,
                   help="print the resolved config (YAML, as config.yaml) and exit")
    groups = add_config_flags(p)
    groups["runtime"].add_argument("--seeds", metavar="LIST", help="comma-separated seeds: one run each under "
                                                                   "--out/seed-N, plus summary.json with mean ± std")
    out = groups["run directory"]
    out.add_argument("--overwrite", action="store_true", default=False, help="replace an existing run directory")
    out.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last.pt")
    p.set_defaults(run=run)


def _resume_conflicts(args) -> set[str]:
    """What --resume cannot take: any config value but the device, a config file, a preset, seeds."""
    extra = {k for k in config_flag_values(args) if k != "device"}
    return extra | {name for name in ("config", "preset", "seeds") if getattr(args, name)}


def run(args) -> int:
    from .. import run as runs
    from ..config import load_config_file, resolve
    from ..distributed import world_from_env
    from ..progress import Console, Silent

    cfg = None
    if args.resume:
        extra = _resume_conflicts(args)
        if extra:
            raise UsageError(f"--resume continues a run with its saved config; drop {', '.join(sorted(extra))} "
                             "(only --device may change)")
    else:
        file_values = load_config_file(args.config) if args.config else {}
        flags = config_flag_values(args)
        _recognise_dataset(flags, file_values)
        cfg = resolve(file_values, flags, args.preset)
    seeds = runs.parse_seeds(args.seeds) if args.seeds else None
    if args.print_config:
        return _print_config(cfg if cfg is not None else runs.resumed_config(args.resume, args.device))
    world = world_from_env()
    plan = runs.train(cfg, resume=args.resume, device=args.device if args.resume else None, seeds=seeds,
                      overwrite=args.overwrite, world=world, progress=Console() if world.is_main else Silent(),
                      on_result=_print_results)
    if plan.summary is not None:
        s = plan.summary
        print(f"{len(plan.runs)} seeds: {s['metric']} {100 * s['mean']:.2f} ± {100 * s['std']:.2f}%"
              if s["mean"] is not None else "no metric to summarise", flush=True)
    return 0


def _recognise_dataset(flags: dict, file_values: dict) -> None:
    """No --dataset (flag or config file): the data dir's layout decides, so an image folder is read as
    one instead of getting CIFAR download advice. The header's `MODEL on DATASET` shows the choice."""
    from ..config import Config
    from ..data import detect_dataset

    if "dataset" in flags or "dataset" in file_values:
        return
    data_dir = flags.get("data_dir") or file_values.get("data_dir") or Config.data_dir
    found = detect_dataset(data_dir) if isinstance(data_dir, str) else None  # a bad value: resolve names it
    if found:
        flags["dataset"] = found


def _print_config(cfg) -> int:
    import yaml

    sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    sys.stdout.flush()
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
