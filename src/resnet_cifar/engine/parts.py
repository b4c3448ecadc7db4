"""The parts of a training run, built from a config: splits, loader, model, optimizer, schedule,
scaler, autocast, SWA/EMA, the DDP/compile wrapper. Building them has no global side effects
(those are `engine.setup`'s); it refuses a config the data or the world cannot run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel

from .. import checkpoint as ckpt
from .. import distributed as distm
from .. import runtime
from ..compute import forward_macs
from ..config import Config
from ..data import Dataset
from ..data.augment import StrongAugment
from ..data.loader import Augment, DeviceLoader, normalize
from ..data.policies import Policy
from ..data.split import stratified_subset, train_val_split
from ..ema import DeviceEMA
from ..errors import UsageError
from ..lookahead import Lookahead
from ..mixing import Mixing
from ..models import build_model, count_parameters
from ..models.speedrun import WHITEN_IMAGES, init_whitening
from ..muon import MuonSGD
from ..optim import speedrun_param_groups, split_filters
from ..sam import SAM
from ..schedule import LRSchedule, plan
from .evaluate import Evaluator
from .step import StepSetup


@dataclass
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    val_idx: torch.Tensor


def make_splits(cfg: Config, data: Dataset, device: torch.device) -> Splits:
    """Validation carved from train (stratified, seeded); optional stratified train subset."""
    train_idx, val_idx = train_val_split(data.train_y, cfg.val_size, cfg.seed)
    if cfg.train_subset:
        train_idx = stratified_subset(train_idx, data.train_y, cfg.train_subset, cfg.seed)

    def on(t):
        return None if t is None else t.to(device)

    has_val = len(val_idx) > 0
    return Splits(
        train_x=on(data.train_x[train_idx]), train_y=on(data.train_y[train_idx]),
        val_x=on(data.train_x[val_idx]) if has_val else None, val_y=on(data.train_y[val_idx]) if has_val else None,
        test_x=on(data.test_x), test_y=on(data.test_y), val_idx=val_idx,
    )


def augment_from(cfg: Config) -> Augment:
    return Augment(crop_padding=cfg.crop_padding, pad_mode=cfg.pad_mode, flip=cfg.flip, cutout=cfg.cutout,
                   alt_flip=cfg.alt_flip)


def strong_augment_from(cfg: Config) -> StrongAugment:
    """The policy (--auto-augment, --ra-*) and random erasing of a config; `.enabled` False when off."""
    policy = (None if cfg.auto_augment == "off"
              else Policy(cfg.auto_augment, num_ops=cfg.ra_num_ops, magnitude=cfg.ra_magnitude))
    return StrongAugment(policy, cfg.random_erase)


def mixing_from(cfg: Config) -> Mixing:
    return Mixing(cfg.mixup_alpha, cfg.cutmix_alpha)


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    if cfg.bias_lr_scale != 1.0 or getattr(model, "whiten", None) is not None:
        # the speedrun recipe's groups: BN biases at a scaled lr, the whitening bias for its first epochs
        # under muon the whitening bias learns at the BN biases' lr, as in airbench94_muon
        whiten_lr_scale = cfg.bias_lr_scale if cfg.optimizer == "muon" else 1.0
        groups = speedrun_param_groups(model, cfg.weight_decay, cfg.bias_lr_scale, cfg.whiten_bias_epochs,
                                       whiten_lr_scale)
        if cfg.no_bn_decay:  # BN biases and the whitening bias: the 1-D groups
            for g in groups:
                if all(p.ndim <= 1 for p in g["params"]):
                    g["weight_decay"] = 0.0
        return groups
    if not cfg.no_bn_decay:
        return [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
    # BN weights/biases and all biases are 1-D: decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    # fused kernels on CUDA: one launch for all parameters instead of one per tensor.
    extra = {"fused": True} if device.type == "cuda" else {}
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **extra)
    if cfg.optimizer == "muon":  # Muon on the conv filters, SGD on the rest (muon.py)
        return MuonSGD(split_filters(groups, cfg.muon_lr / cfg.lr), lr=cfg.lr, momentum=cfg.momentum,
                       nesterov=cfg.nesterov, muon_momentum=cfg.muon_momentum)
    if cfg.optimizer == "sam":
        return SAM(groups, torch.optim.SGD, rho=cfg.sam_rho, lr=cfg.lr, momentum=cfg.momentum,
                   nesterov=cfg.nesterov, **extra)
    return torch.optim.AdamW(groups, lr=cfg.lr, **extra)


def make_model(cfg: Config, num_classes: int, device: torch.device, world: distm.World,
               whiten_from: tuple[torch.Tensor, tuple, tuple] | None = None, init: bool = True) -> torch.nn.Module:
    """The registry's model on `device`. whiten_from (uint8 training images, mean, std): for a model with a
    whitening layer, its frozen weights from those images (--no-whiten: the layer learns instead).
    init: load --init-from's weights (last, over the whitening; a resume loads its own instead)."""
    extra = {"dropout": cfg.dropout} if cfg.dropout else {}  # only the wide nets take it
    model = build_model(cfg.model, num_classes, cfg.width, cfg.zero_init_residual, **extra)
    if cfg.sync_bn and world.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    if getattr(model, "whiten", None) is not None:
        if cfg.whiten and whiten_from is not None:
            x, mean, std = whiten_from
            init_whitening(model, normalize(x[:WHITEN_IMAGES], mean, std, channels_last=False))
        elif not cfg.whiten:
            model.whiten.weight.requires_grad_(True)
    if cfg.init_from and init:
        ckpt.init_weights_from(model, cfg.init_from, cfg.model)
    return model


def wrap_for_training(model: torch.nn.Module, cfg: Config, device: torch.device, world: distm.World,
                      warn=None) -> torch.nn.Module:
    """DDP (under torchrun), then torch.compile with its eager fallback."""
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return runtime.maybe_compile(model, cfg.compile, device, warn=warn)


@dataclass
class Parts:
    """Everything a run trains with. `step` is what `engine.step.train_step` takes."""

    device: torch.device
    amp: str
    splits: Splits
    loader: DeviceLoader
    model: torch.nn.Module                  # the raw model (checkpoints, evaluation)
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    step: StepSetup
    evaluator: Evaluator
    swa: AveragedModel | None
    swa_start: int | None
    warmup_epochs: float                    # schedule.plan's: the run's warm-up, clipped for a short run
    schedule_notes: tuple[str, ...]         # what schedule.plan changed, one line each
    ema: AveragedModel | None
    lookahead: Lookahead | None
    params: int
    macs: int                               # forward MACs per image (compute.py: FLOPs of training/evaluation)


def build_parts(cfg: Config, data: Dataset, device: torch.device, world: distm.World | None = None,
                warn=None, init: bool = True) -> Parts:
    """The run's parts on `device`. The DDP/compile wrapper goes on last (`wrap` in the result's step)."""
    world = world or distm.World()
    amp = runtime.resolve_amp(cfg.amp, device)
    splits = make_splits(cfg, data, device)
    if cfg.optimizer == "sam" and amp == "fp16":  # its two passes and the loss scaler do not mix
        raise UsageError(f"--optimizer sam cannot run under fp16 (--amp {cfg.amp}"
                         f"{': this GPU has no bf16' if cfg.amp == 'auto' else ''}); pass --amp bf16 or off")
    if cfg.drop_last and len(splits.train_y) < cfg.batch_size:
        raise UsageError(f"--drop-last with {len(splits.train_y)} training images and --batch-size {cfg.batch_size} "
                         "leaves no batch: lower --batch-size or drop --drop-last")
    loader = DeviceLoader(splits.train_x, splits.train_y, batch_size=cfg.batch_size, mean=data.mean, std=data.std,
                          seed=cfg.seed, augment=augment_from(cfg), channels_last=cfg.channels_last,
                          rank=world.rank, world_size=world.size, strong=strong_augment_from(cfg),
                          mixing=mixing_from(cfg), drop_last=cfg.drop_last)
    distm.validate_last_batch(loader.images_per_epoch, cfg.batch_size, cfg.accum_steps, world)
    model = make_model(cfg, data.num_classes, device, world, whiten_from=(splits.train_x, data.mean, data.std),
                       init=init)
    optimizer = make_optimizer(model, cfg, device)
    scaler = runtime.grad_scaler(device, amp)
    amp_ctx = runtime.autocast(device, amp)
    ema = DeviceEMA(model, cfg.ema) if cfg.ema > 0 else None
    lookahead = Lookahead(model) if cfg.lookahead else None
    step = StepSetup(model=model, optimizer=optimizer, scaler=scaler, amp_ctx=amp_ctx,
                     label_smoothing=cfg.label_smoothing, accum_steps=cfg.accum_steps, world=world, ema=ema,
                     raw=model, lookahead=lookahead, total_steps=cfg.epochs * len(loader),
                     clip_grad_norm=cfg.clip_grad_norm)
    planned = plan(cfg)
    swa_start = planned.swa_start   # None for a run too short for SWA (planned.notes say why)
    evaluator = Evaluator(tuple(data.mean), tuple(data.std), cfg.eval_batch_size, amp_ctx, cfg.channels_last,
                          data.num_classes)
    return Parts(device=device, amp=amp, splits=splits, loader=loader, model=model, optimizer=optimizer,
                 schedule=LRSchedule(cfg, len(loader)), scaler=scaler, step=step, evaluator=evaluator,
                 swa=AveragedModel(model) if swa_start is not None else None, swa_start=swa_start,
                 ema=ema, lookahead=lookahead, params=count_parameters(model), macs=forward_macs(model),
                 warmup_epochs=planned.warmup_epochs, schedule_notes=planned.notes)
