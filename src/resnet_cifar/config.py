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

from . import bounds
from .constants import DATASETS, MUON_LR, MUON_MOMENTUM
from .errors import UsageError, first_line

MAX_CONFIG_BYTES = 1 << 20   # a config file is a few KB; this bounds the parser's work

OPTIMIZERS = ("sgd", "adamw", "sam", "muon")  # sam: SAM over SGD (sam.SAM); muon: Muon on conv filters (muon.py)
SCHEDULERS = ("plateau", "cosine", "onecycle", "multistep", "constant", "triangle", "linear")
AMP_MODES = ("auto", "off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")    # the one list (runtime.pick_device, every --device flag)
COMPILE_MODES = ("auto", "on", "off")
PAD_MODES = ("reflect", "zeros")
TTA_MODES = ("flip", "flip_translate")    # tta.py: 2 views (probabilities averaged) | airbench's 6 (logits)

MAX_LR = 100.0       # the tutorial's lr is 0.1; large-batch recipes stay below 10
LR_NOTE = " (a learning rate: the tutorial's is 0.1)"

# Flag groups of `train --help`, in this order.
GROUPS = ("data", "model", "optimisation", "averaging", "runtime", "run directory")


def option(default: Any, group: str, help: str, *, choices: tuple | None = None, metavar: str | None = None,
           flag: str | None = None, negated: bool = False, aliases: tuple[tuple[str, Any], ...] = (),
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           note: str = "") -> Any:
    """A Config field and everything its `train` flag needs, in one place.

    group: the --help section (one of GROUPS); help: one line (the presets' values are added to it);
    choices: the allowed values (checked by argparse and by `validate`); metavar: the value's name
    in --help; flag: the flag's name without "--" when it differs from the field's (dashes for
    underscores); negated: a bool field whose flag says the opposite (no_bn_decay <- --bn-decay /
    --no-bn-decay); aliases: (old spelling, the value it sets) pairs of bare flags, still accepted,
    not shown in --help. ge / gt / le / lt: bounds `validate` checks (every float must also be
    finite), with `note` added to the message of a failed le / lt.
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"group": group, "help": help, "choices": choices, "metavar": metavar, "flag": flag,
            "negated": negated, "aliases": aliases, "bounds": bounds, "note": note}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # --- data
    dataset: str = option("cifar10", "data", "cifar10 | cifar100 | folder (PATH/train/<class>/*.png|jpg); "
                          "left out, train recognises it from --data-dir's layout", choices=DATASETS)
    data_dir: str = option("data", "data", "where the dataset lives", metavar="PATH")
    download: bool = option(True, "data", "fetch the official CIFAR archive when it is missing")
    val_size: int = option(5000, "data", "validation images carved from train, stratified (0 = none)", metavar="N",
                           ge=0)
    train_subset: int = option(0, "data", "train on N images, stratified (0 = all)", metavar="N", ge=0)
    crop_padding: int = option(4, "data", "random 32x32 crop of the image padded by this many pixels", metavar="PX",
                               ge=0, le=16)
    pad_mode: str = option("reflect", "data", "how the crop's padding is filled", choices=PAD_MODES)
    flip: bool = option(True, "data", "random horizontal flips")
    alt_flip: bool = option(False, "data", "with --flip: alternating flips (each image mirrored in every other "
                                           "epoch, from a random start), as airbench")
    cutout: int = option(0, "data", "side of a zeroed square per image (0 = off)", metavar="SIZE", ge=0, le=32)
    auto_augment: str = option("off", "data", "torchvision's policy, per image",
                               choices=("off", "autoaugment", "randaugment", "trivialaugment"))
    ra_num_ops: int = option(2, "data", "randaugment: ops per image (N)", metavar="N", ge=1, le=8)
    ra_magnitude: int = option(9, "data", "randaugment: magnitude bin (M, of 0..30)", metavar="M", ge=0, le=30)
    random_erase: float = option(0.0, "data", "random erasing's probability per image", metavar="P", ge=0, le=1)
    mixup_alpha: float = option(0.0, "data", "mixup's Beta(alpha, alpha) (0 = off)", metavar="A", ge=0, le=100)
    cutmix_alpha: float = option(0.0, "data", "cutmix's Beta(alpha, alpha) (0 = off)", metavar="A", ge=0, le=100)
    # --- model
    model: str = option("resnet18", "model", "architecture; `resnet-cifar models` lists them (params, MACs)",
                        metavar="NAME")
    width: float = option(1.0, "model", "channel multiplier (1.0 = reference; tiny models for tests)", ge=0, gt=0,
                          le=64, note=" (a channel multiplier: 1.0 = reference, 10 = very wide)")
    zero_init_residual: bool = option(False, "model", "start each residual block's last BN at zero")
    dropout: float = option(0.0, "model", "wrn*: dropout between each block's convolutions", metavar="P", ge=0, lt=1)
    init_from: str = option("", "model", "start from these weights (ours, kuangliu's, a state_dict)", metavar="CKPT")
    whiten: bool = option(True, "model", "models with a whitening layer (the speedrun nets): set it from the "
                                         "training images' 2x2 patch covariance and freeze it (--no-whiten: "
                                         "learn it from torch's default init)")
    # --- optimisation
    epochs: int = option(250, "optimisation", "training epochs", ge=1)
    batch_size: int = option(128, "optimisation", "GLOBAL batch per optimizer step = per-device batch x devices "
                                                  "x --accum-steps (the lr is never rescaled silently)", ge=1)
    accum_steps: int = option(1, "optimisation", "split each batch into this many micro-batches", ge=1)
    drop_last: bool = option(False, "optimisation", "drop each epoch's last batch when it is smaller (another random "
                                                    "remainder every epoch, as airbench): every step a full batch")
    optimizer: str = option("sgd", "optimisation", "optimizer (sam: SAM over SGD, 2 passes a step; muon: Muon on the "
                                                   "conv filters, SGD on the rest, as airbench94_muon)", choices=OPTIMIZERS)
    # Upper bounds of rates (MAX_LR) and decays: far above any recipe, far below float32's 3.4e38,
    # where the optimizer's update overflowed with a traceback (`--lr 1e308`).
    lr: float = option(0.1, "optimisation", "peak learning rate (after warm-up)", ge=0, gt=0, le=MAX_LR,
                       note=LR_NOTE)
    momentum: float = option(0.9, "optimisation", "SGD momentum", ge=0, lt=1)
    nesterov: bool = option(False, "optimisation", "Nesterov momentum (SGD)")
    sam_rho: float = option(0.05, "optimisation", "sam: the ascent step's radius", metavar="R", gt=0, le=10)
    muon_lr: float = option(MUON_LR, "optimisation", "muon: the conv filters' lr (they follow the schedule's shape; "
                                                  "0.24 is airbench94_muon's)", metavar="LR", gt=0, le=MAX_LR)
    muon_momentum: float = option(MUON_MOMENTUM, "optimisation", "muon: the conv filters' Nesterov momentum", metavar="M",
                                  ge=0, lt=1)
    clip_grad_norm: float = option(0.0, "optimisation", "clip the gradient's norm (0 = off)", metavar="X", ge=0, le=1e6)
    weight_decay: float = option(5e-4, "optimisation", "L2 weight decay", ge=0, le=10,
                                 note=" (5e-4 is the tutorial's)")
    no_bn_decay: bool = option(False, "optimisation", "weight decay on BN parameters and biases too "
                                                      "(--no-bn-decay: not on them)",
                               flag="bn-decay", negated=True, aliases=(("--no-no-bn-decay", False),))
    label_smoothing: float = option(0.1, "optimisation", "label smoothing of the training loss", ge=0, lt=1)
    bias_lr_scale: float = option(1.0, "optimisation", "lr multiplier of the BN biases (their weight decay is "
                                                       "divided by it: the same decay per step); speedrun: 64", gt=0)
    whiten_bias_epochs: int = option(3, "optimisation", "epochs the whitening layer's bias learns before it "
                                                        "is frozen (models with a whitening layer)", ge=0)
    scheduler: str = option("plateau", "optimisation", "learning-rate schedule", choices=SCHEDULERS)
    warmup_epochs: float = option(0.0, "optimisation", "linear warm-up from 0, in epochs (fractions allowed)", ge=0)
    plateau_factor: float = option(0.1, "optimisation", "plateau: multiply the lr by this when validation "
                                                        "loss stalls", ge=0)
    plateau_patience: int = option(10, "optimisation", "plateau: epochs without improvement before a cut", ge=0)
    milestones: list = option([0.5, 0.75], "optimisation", "multistep: where the lr is cut, as fractions of "
                                                           "the epochs", metavar="F,F")
    gamma: float = option(0.1, "optimisation", "multistep: factor per milestone", ge=0, le=1,
                          note=" (the lr is multiplied by it at each milestone)")
    min_lr: float = option(0.0, "optimisation", "cosine/onecycle: the lr the schedule ends at", ge=0, le=MAX_LR,
                           note=LR_NOTE)
    # --- averaging
    swa: bool = option(False, "averaging", "stochastic weight averaging for the last part of training")
    swa_start: float = option(0.75, "averaging", "epoch (>= 1) or fraction of the epochs (< 1) where SWA starts",
                              ge=0, le=1e9)
    swa_lr: float = option(0.01, "averaging", "constant lr during SWA", ge=0, le=MAX_LR, note=LR_NOTE)
    ema: float = option(0.0, "averaging", "EMA decay of the weights per step (e.g. 0.999; 0 = off)",
                        metavar="DECAY", ge=0)
    lookahead: bool = option(False, "averaging", "airbench's lookahead: every 5 steps the weights move to a "
                                                 "slow copy that follows them with a decay rising to 0.77")
    # --- runtime
    amp: str = option("auto", "runtime", "mixed precision (auto: bf16 on CUDA, fp16 + GradScaler where bf16 "
                                         "is missing, off on the CPU)", choices=AMP_MODES)
    device: str = option("auto", "runtime", "where to train (auto: CUDA when available)", choices=DEVICES)
    compile: str = option("auto", "runtime", "torch.compile (auto: on for CUDA, off elsewhere)",
                          choices=COMPILE_MODES)
    channels_last: bool = option(True, "runtime", "channels-last memory format")
    seed: int = option(0, "runtime", "seed of the split, the shuffling, augmentation and initialisation", ge=0)
    deterministic: bool = option(False, "runtime", "bitwise-reproducible kernels (slower on CUDA)")
    eval_batch_size: int = option(1024, "runtime", "batch size of evaluation", ge=1)
    tta: bool = option(False, "runtime", "test-time augmentation for the final test evaluation")
    tta_mode: str = option("flip", "runtime", "views of --tta: flip (image + mirror) | flip_translate (+ two "
                                              "1-px shifts of each: 6 views, airbench's weights)",
                           choices=TTA_MODES)
    checkpoint_every: int = option(0, "runtime", "also checkpoint every N optimizer steps (0 = at epoch ends "
                                                 "only)", metavar="STEPS", ge=0)
    auto_batch: bool = option(False, "runtime", "on CUDA out-of-memory, halve the micro-batch and double "
                                                "--accum-steps (same global batch and results)")
    sync_bn: bool = option(False, "runtime", "SyncBatchNorm across processes under torchrun")
    max_skipped_steps: int = option(25, "runtime", "fp16: stop after this many consecutive non-finite steps", ge=0)
    report: bool = option(True, "runtime", "build RUN_DIR/report at the end")
    out: str = option("", "run directory", "run directory (default: runs/<date>-<time>-<model>-<dataset>)",
                      metavar="RUN_DIR")
    preset: str = option("tutorial", "", "the recipe the other values start from")  # its flag: cli/config_flags

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
    # airbench94's recipe (PyPI airbench 0.1.8) around speedrun_resnet, its hyperparameters converted to
    # a batch-mean loss by optim.sgd_hyperparameters(1024): lr 11.5 / (1 + 1/0.15) = 1.5, weight decay
    # 0.0153 / 11.5; BN biases at 64x lr; the triangle 0.2 -> 1 -> 0.07; lookahead; flip + shift TTA.
    # Width 0.75 for 18 epochs (69.1 M MACs an image x 18 x 45,000 = 0.336 PFLOP): 90.87% +- 0.08 val with TTA
    # (n=3, benchmarks/README.md S23), above airbench94's 10 epochs at width 1 (90.44% +- 0.11 in 0.319 PFLOP,
    # S1): at equal compute a narrower net for more epochs wins here. 11 epochs of width 1 with --drop-last
    # (0.343 PFLOP) measured no better than 10 (90.36% +- 0.11, S18). Compile off everywhere: on an H200 it
    # cost 36.6 s of the first epoch and bought ~1.0x steady speed (S37; eager trains in 8.6 s), on a CPU 0.99x (S32).
    "speedrun": dict(
        model="speedrun_resnet", width=0.75, whiten=True, zero_init_residual=False, epochs=18, batch_size=1024,
        optimizer="sgd", lr=1.5, momentum=0.85, nesterov=True, weight_decay=0.0153 / 11.5, no_bn_decay=False,
        bias_lr_scale=64.0, whiten_bias_epochs=3, label_smoothing=0.2, scheduler="triangle", warmup_epochs=0.0,
        crop_padding=2, pad_mode="reflect", flip=True, alt_flip=True, cutout=0, swa=False, ema=0.0,
        lookahead=True, amp="auto", compile="off", channels_last=True, tta=True, tta_mode="flip_translate",
    ),
}

FIELD_NAMES = tuple(f.name for f in fields(Config))
PRESETS = tuple(PRESET_VALUES)


def shown(value: Any) -> str:
    """A bounded repr for error messages: a few items, a few levels, short strings (a value
    from a file may be huge or reference itself)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 4, 60, 60
    return r.repr(value)


def check_plain(values: Any, where: str) -> None:
    """UsageError unless `values` is small plain data (bounds.check_plain): runs before any value
    is printed, compared or converted."""
    try:
        bounds.check_plain(values, where, tensors=False)
    except bounds.TooLarge as e:
        raise UsageError(f"{e}; a config holds plain keys and short values (no aliases that nest)") from None


def _closest(name: str, options) -> str:
    match = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (keys may use - or _)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {str(p)!r} not found; pass an existing YAML or JSON file to --config")
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UsageError(f"config file {str(p)!r} is {size:,} bytes; a config is a few KB (at most "
                         f"{MAX_CONFIG_BYTES:,}): pass the right file")
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # parse errors of either format
        raise UsageError(f"config file {str(p)!r} does not parse: {_parse_error(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {str(p)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    check_plain(data, f"config file {str(p)!r}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _parse_error(e: Exception) -> str:
    """A YAML/JSON parse error as `line L, column C: problem` (1-based, where the parser stopped)."""
    mark = getattr(e, "problem_mark", None)          # yaml.MarkedYAMLError
    if mark is not None:
        problem = getattr(e, "problem", None) or first_line(e, empty=type(e).__name__)
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno}, column {e.colno}: {e.msg}"
    return first_line(e, empty=type(e).__name__)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check one value against the type of its default; return it converted."""
    kind = type(default)
    bad = UsageError(f"config value {name}={shown(value)} must be {kind.__name__}")
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
    check_plain(file_values, "the config")   # before anything below prints or converts a value
    flag_values = {k: v for k, v in (flag_values or {}).items() if v is not None}
    for source, values in (("config file", file_values), ("flag", flag_values)):
        for key in values:
            if key not in FIELD_NAMES:
                raise UsageError(f"unknown {source} key {shown(key)}{_closest(str(key)[:100], FIELD_NAMES)}")
    name = flag_values.get("preset") or preset or file_values.get("preset") or "tutorial"
    if not isinstance(name, str) or name not in PRESET_VALUES:
        raise UsageError(f"unknown preset {shown(name)}; choose one of: {', '.join(PRESETS)}")
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
        need(v in options, f"unknown {name.replace('_', '-')} {shown(v)}{_closest(str(v)[:100], options)}; "
                           f"choose one of: {', '.join(options)}")

    choice("dataset", DATASETS)
    choice("model", tuple(list_models()))
    for f in fields(Config):
        if f.metadata.get("choices") and f.name != "dataset":
            choice(f.name, f.metadata["choices"])
    for f in fields(Config):
        _check_bounds(f, getattr(cfg, f.name))
    need(cfg.ema < 1, f"--ema is a decay in [0, 1), got {cfg.ema}")
    need(0 < cfg.plateau_factor < 1, f"--plateau-factor must be in (0, 1), got {cfg.plateau_factor}")
    need(cfg.seed < 2**63, f"--seed must be below 2**63 (torch's generator range), got {cfg.seed}")
    need(cfg.batch_size % cfg.accum_steps == 0,
         f"--batch-size {cfg.batch_size} is not divisible by --accum-steps {cfg.accum_steps}; "
         "the global batch must split into equal micro-batches")
    # warm-up longer than the run: not an error, schedule.plan clips it to a quarter of the run (and says so)
    need(not (cfg.scheduler == "plateau" and cfg.val_size == 0),
         "--scheduler plateau steps on validation loss, but --val-size is 0; "
         "keep a validation split or choose --scheduler cosine|onecycle|multistep|constant")
    need(all(0 < m < 1 for m in cfg.milestones),
         f"milestones are fractions of the epochs in (0, 1), got {cfg.milestones}")
    need(cfg.optimizer != "adamw" or not cfg.nesterov, "--nesterov applies to --optimizer sgd|sam|muon only")
    if cfg.swa:
        start = swa_start_epoch(cfg)
        need(1 <= start <= cfg.epochs,
             f"--swa-start {cfg.swa_start} falls outside the {cfg.epochs} epochs; use a fraction "
             "(e.g. 0.75) or an epoch number <= --epochs")


def _check_bounds(f, v) -> None:
    """A field's own range (option's ge/gt/le/lt; bounds.check_range); every float must be finite."""
    bounds.check_range("--" + (f.metadata.get("flag") or f.name).replace("_", "-"), v,
                       f.metadata.get("bounds", {}), f.metadata.get("note", ""))


def swa_start_epoch(cfg: Config) -> int:
    """First epoch (1-based) whose end is averaged into the SWA model."""
    s = cfg.swa_start
    return max(1, int(math.floor(s * cfg.epochs)) + 1) if s < 1 else int(s)


def dump_yaml(cfg: Config, path: Path) -> None:
    import yaml

    from .fsutil import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False), what="config.yaml")
