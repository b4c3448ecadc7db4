"""Training configuration: one dataclass, presets, config files, validation.

Precedence (as in timm): built-in defaults < preset < config file (YAML or JSON) < command-line flags.
The resolved config is plain data (`to_dict`) and is written to the run directory and into every
checkpoint, so a run can always be reproduced from what it left behind.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .constants import DATASETS
from .errors import UsageError, first_line

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("plateau", "cosine", "onecycle", "multistep", "constant")
AMP_MODES = ("auto", "off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
COMPILE_MODES = ("auto", "on", "off")
PAD_MODES = ("reflect", "zeros")
PRESETS = ("tutorial", "fast")


@dataclass
class Config:
    # --- data
    dataset: str = "cifar10"
    data_dir: str = "data"
    download: bool = True          # fetch the official CIFAR archive when it is missing
    val_size: int = 5000           # carved from train, stratified; 0 = no validation split
    train_subset: int = 0          # use only N training images (stratified); 0 = all
    crop_padding: int = 4          # random crop 32x32 from the image padded by this many pixels
    pad_mode: str = "reflect"
    flip: bool = True
    cutout: int = 0                # side of a zeroed square per image; 0 = off
    # --- model
    model: str = "resnet18"
    width: float = 1.0             # channel multiplier (tiny models for tests)
    zero_init_residual: bool = False
    # --- optimisation
    epochs: int = 250
    batch_size: int = 128          # global batch: per-device batch x devices x accumulation steps
    accum_steps: int = 1
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    no_bn_decay: bool = False      # no weight decay on BN parameters and biases
    label_smoothing: float = 0.1
    scheduler: str = "plateau"
    warmup_epochs: float = 0.0
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    milestones: list = field(default_factory=lambda: [0.5, 0.75])  # fractions of the epochs
    gamma: float = 0.1
    min_lr: float = 0.0
    # --- averaging
    swa: bool = False
    swa_start: float = 0.75        # epoch (>= 1) or fraction of the epochs (< 1) where SWA starts
    swa_lr: float = 0.01
    ema: float = 0.0               # EMA decay per optimizer step (e.g. 0.999); 0 = off
    # --- runtime
    amp: str = "auto"              # auto: bf16 on CUDA (fp16 + GradScaler where bf16 is missing), off on CPU
    device: str = "auto"
    compile: str = "auto"          # auto: on for CUDA, off elsewhere
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False
    eval_batch_size: int = 1024
    tta: bool = False              # flip test-time augmentation for the final test evaluation
    checkpoint_every: int = 0      # also checkpoint every N optimizer steps (0 = at epoch ends only)
    auto_batch: bool = False       # on CUDA OOM: halve the micro-batch, double accumulation
    sync_bn: bool = False
    max_skipped_steps: int = 25    # fp16: stop after this many consecutive non-finite steps
    report: bool = True            # build RUN_DIR/report at the end
    out: str = ""                  # run directory ("" = runs/<time>-<model>-<dataset>)
    preset: str = "tutorial"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A preset is a partial config. `tutorial` is the recipe of the classic ResNet-18/CIFAR-10 tutorial,
# done correctly; `fast` trades the 250 epochs for a schedule built to converge in few epochs.
PRESET_VALUES: dict[str, dict[str, Any]] = {
    "tutorial": dict(
        model="resnet18", epochs=250, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
        weight_decay=5e-4, nesterov=False, scheduler="plateau", plateau_factor=0.1,
        plateau_patience=10, label_smoothing=0.1, amp="auto", swa=True, swa_start=0.75,
        swa_lr=0.01, ema=0.0, warmup_epochs=0.0, tta=False,
    ),
    # One-cycle-like: short linear warm-up then cosine to zero, nesterov, batch 512 with the lr
    # scaled linearly from 0.1 @ 128, no weight decay on BN/bias, label smoothing, EMA of weights,
    # flip TTA at test time. Not yet measured on a GPU (see README's results table).
    "fast": dict(
        model="resnet18", epochs=30, batch_size=512, optimizer="sgd", lr=0.4, momentum=0.9,
        nesterov=True, weight_decay=5e-4, no_bn_decay=True, scheduler="cosine",
        warmup_epochs=2.0, label_smoothing=0.1, amp="auto", swa=False, ema=0.999, tta=True,
        zero_init_residual=True,
    ),
}

FIELD_NAMES = tuple(f.name for f in fields(Config))


def _closest(name: str, options) -> str:
    match = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (keys may use - or _)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {str(p)!r} not found; pass an existing YAML or JSON file to --config")
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # parse errors of either format
        first = first_line(e, empty=type(e).__name__)
        raise UsageError(f"config file {str(p)!r} does not parse: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {str(p)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check one value against the type of its default; return it converted."""
    kind = type(default)
    bad = UsageError(f"config value {name}={value!r} must be {kind.__name__}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        if isinstance(value, int):
            return value  # exact (a float round trip would change seeds above 2**53)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        try:
            f = float(value)
        except ValueError:
            raise bad from None
        if not math.isfinite(f) or f != int(f):
            raise bad
        return int(f)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            return float(value)
        except ValueError:
            raise bad from None
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad
        return str(value)
    if kind is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        try:
            return [float(v) for v in value]
        except (TypeError, ValueError):
            raise bad from None
    return value


def resolve(file_values: dict[str, Any] | None = None, flag_values: dict[str, Any] | None = None,
            preset: str | None = None) -> Config:
    """defaults < preset < config file < flags. Unknown keys are errors, not silently ignored."""
    file_values = dict(file_values or {})
    flag_values = {k: v for k, v in (flag_values or {}).items() if v is not None}
    for source, values in (("config file", file_values), ("flag", flag_values)):
        for key in values:
            if key not in FIELD_NAMES:
                raise UsageError(f"unknown {source} key {key!r}{_closest(key, FIELD_NAMES)}")
    name = flag_values.get("preset") or preset or file_values.get("preset") or "tutorial"
    if name not in PRESET_VALUES:
        raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    merged: dict[str, Any] = {**PRESET_VALUES[name], **file_values, **flag_values, "preset": name}
    defaults = Config()
    values = {k: _coerce(k, v, getattr(defaults, k)) for k, v in merged.items()}
    cfg = Config(**values)
    validate(cfg)
    return cfg


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config saved by `to_dict` (checkpoints, config.yaml); unknown keys are refused."""
    return resolve(file_values={k: v for k, v in values.items() if k != "preset"},
                   preset=values.get("preset", "tutorial"))


def validate(cfg: Config) -> None:
    """Every value checked before any work starts; one line per problem, naming the fix."""
    from .models import list_models

    def need(ok: bool, message: str):
        if not ok:
            raise UsageError(message)

    def choice(name, options):
        v = getattr(cfg, name)
        need(v in options, f"unknown {name.replace('_', '-')} {v!r}{_closest(str(v), options)}; "
                           f"choose one of: {', '.join(options)}")

    choice("dataset", DATASETS)
    choice("model", tuple(list_models()))
    choice("optimizer", OPTIMIZERS)
    choice("scheduler", SCHEDULERS)
    choice("amp", AMP_MODES)
    choice("device", DEVICES)
    choice("compile", COMPILE_MODES)
    choice("pad_mode", PAD_MODES)
    for name in ("lr", "momentum", "weight_decay", "label_smoothing", "warmup_epochs", "swa_lr",
                 "ema", "width", "swa_start", "plateau_factor", "gamma", "min_lr"):
        v = getattr(cfg, name)
        need(math.isfinite(v), f"--{name.replace('_', '-')} must be a finite number, got {v}")
        need(v >= 0, f"--{name.replace('_', '-')} must be >= 0, got {v}")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(cfg.width > 0, f"--width must be > 0, got {cfg.width}")
    need(cfg.width <= 64, f"--width must be <= 64 (a channel multiplier: 1.0 = reference, 10 = very wide), got {cfg.width}")
    need(cfg.momentum < 1, f"--momentum must be < 1, got {cfg.momentum}")
    need(cfg.label_smoothing < 1, f"--label-smoothing must be < 1, got {cfg.label_smoothing}")
    need(cfg.ema < 1, f"--ema is a decay in [0, 1), got {cfg.ema}")
    need(0 < cfg.plateau_factor < 1, f"--plateau-factor must be in (0, 1), got {cfg.plateau_factor}")
    for name in ("epochs", "batch_size", "accum_steps", "eval_batch_size"):
        v = getattr(cfg, name)
        need(v >= 1, f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for name in ("val_size", "train_subset", "crop_padding", "cutout", "plateau_patience",
                 "checkpoint_every", "max_skipped_steps", "seed"):
        v = getattr(cfg, name)
        need(v >= 0, f"--{name.replace('_', '-')} must be >= 0, got {v}")
    need(cfg.seed < 2**63, f"--seed must be below 2**63 (torch's generator range), got {cfg.seed}")
    need(cfg.crop_padding <= 16, f"--crop-padding must be <= 16, got {cfg.crop_padding}")
    need(cfg.cutout <= 32, f"--cutout must be <= 32, got {cfg.cutout}")
    need(cfg.batch_size % cfg.accum_steps == 0,
         f"--batch-size {cfg.batch_size} is not divisible by --accum-steps {cfg.accum_steps}; "
         "the global batch must split into equal micro-batches")
    need(cfg.warmup_epochs < cfg.epochs or cfg.warmup_epochs == 0,
         f"--warmup-epochs {cfg.warmup_epochs} must be below --epochs {cfg.epochs}")
    need(not (cfg.scheduler == "plateau" and cfg.val_size == 0),
         "--scheduler plateau steps on validation loss, but --val-size is 0; "
         "keep a validation split or choose --scheduler cosine|onecycle|multistep|constant")
    need(all(0 < m < 1 for m in cfg.milestones),
         f"milestones are fractions of the epochs in (0, 1), got {cfg.milestones}")
    need(cfg.optimizer != "adamw" or not cfg.nesterov, "--nesterov applies to --optimizer sgd only")
    if cfg.swa:
        start = swa_start_epoch(cfg)
        need(1 <= start <= cfg.epochs,
             f"--swa-start {cfg.swa_start} falls outside the {cfg.epochs} epochs; use a fraction "
             "(e.g. 0.75) or an epoch number <= --epochs")


def swa_start_epoch(cfg: Config) -> int:
    """First epoch (1-based) whose end is averaged into the SWA model."""
    s = cfg.swa_start
    return max(1, int(math.floor(s * cfg.epochs)) + 1) if s < 1 else int(s)


def dump_yaml(cfg: Config, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
