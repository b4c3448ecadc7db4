"""Training and evaluation: `fit(cfg, data, run_dir) -> results`. No printing, no argparse.

One run, start to end:
  splits (train / stratified val / test) on the device -> model, optimizer, schedule, SWA/EMA
  -> per epoch: train steps, validate, choose best, checkpoint (atomic), metrics.csv
  -> SWA BN update and selection on validation -> the test split, evaluated once -> results.json.

The test split is never used for any decision: the best checkpoint, the plateau schedule and the
SWA/EMA choice all look at the validation split only.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import checkpoint as ckpt
from . import distributed as distm
from . import runtime
from .config import Config, swa_start_epoch
from .data import Dataset
from .data.loader import Augment, DeviceLoader
from .data.split import stratified_subset, train_val_split
from .errors import CheckpointError, Interrupted, UsageError, WorkError, first_line
from .finite import FiniteWatch, check_every
from .models import build_model, count_parameters
from .progress import Silent
from .schedule import LRSchedule

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "swa_val_acc",
                 "ema_val_acc", "epoch_seconds", "images_per_s", "elapsed_seconds"]
THRESHOLDS = (0.90, 0.93, 0.94, 0.95)
RESUME_KEYS = {"optimizer": dict, "schedule": dict, "scaler": dict, "epoch": int, "batch": int, "step": int,
               "rng": dict, "partial": dict, "history": list, "best": dict, "time_to_acc": dict,
               "elapsed": float, "accum_steps": int, "config": dict}


# ----------------------------------------------------------------------------------------- data
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
    on = lambda t: None if t is None else t.to(device)  # noqa: E731
    has_val = len(val_idx) > 0
    return Splits(
        train_x=on(data.train_x[train_idx]), train_y=on(data.train_y[train_idx]),
        val_x=on(data.train_x[val_idx]) if has_val else None, val_y=on(data.train_y[val_idx]) if has_val else None,
        test_x=on(data.test_x), test_y=on(data.test_y), val_idx=val_idx,
    )


def augment_from(cfg: Config) -> Augment:
    return Augment(crop_padding=cfg.crop_padding, pad_mode=cfg.pad_mode, flip=cfg.flip, cutout=cfg.cutout)


# ----------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, mean, std,
             batch_size: int = 1024, tta: bool = False, amp_ctx=None, channels_last: bool = True,
             num_classes: int | None = None, return_probs: bool = False) -> dict[str, Any]:
    """Loss (plain cross entropy), top-1, top-5 and per-class accuracy on uint8 images x.

    With tta, the class probabilities of the image and its mirror are averaged (flip TTA).
    Sums stay on the device; they are read once at the end.
    """
    model.eval()
    device = x.device
    num_classes = num_classes or int(y.max().item()) + 1
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    per_class = torch.zeros(num_classes, dtype=torch.int64, device=device)
    probs = []
    ctx = amp_ctx if amp_ctx is not None else contextlib.nullcontext()
    loader = DeviceLoader(x, y, batch_size=batch_size, mean=mean, std=std, shuffle=False,
                          channels_last=channels_last)
    for xb, yb in loader:
        with ctx:
            views = [model(xb)] + ([model(xb.flip(3))] if tta else [])
        logp = torch.stack([F.log_softmax(v.float(), dim=1) for v in views])
        logp = torch.logsumexp(logp, dim=0) - math.log(len(views))  # log of the mean probability
        loss_sum += F.nll_loss(logp, yb, reduction="sum").double()
        k = min(5, logp.shape[1])
        top = logp.topk(k, dim=1).indices
        hit1 = top[:, 0] == yb
        top1 += hit1.sum()
        top5 += (top == yb[:, None]).any(1).sum()
        per_class += torch.bincount(yb[hit1], minlength=num_classes)
        if return_probs:
            probs.append(logp.exp().float().cpu())
    n = len(y)
    counts = torch.bincount(y, minlength=num_classes).cpu()
    correct = per_class.cpu()
    out = {
        "loss": loss_sum.item() / max(n, 1), "acc": top1.item() / max(n, 1), "top5": top5.item() / max(n, 1),
        "n": n, "per_class_acc": [(c / k) if k else None for c, k in zip(correct.tolist(), counts.tolist())],
    }
    if return_probs:
        out["probs"] = torch.cat(probs).numpy() if probs else np.zeros((0, num_classes), np.float32)
    return out


# ------------------------------------------------------------------------------------ training
class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes the current step, checkpoints, then stops."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
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
    return torch.optim.AdamW(groups, lr=cfg.lr, **extra)


def _tb_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})
    ckpt.atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def write_json(path: Path, data: dict) -> None:
    ckpt.atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


class Trainer:
    """One training run. Construct, then `run()`; all state needed to resume is in `state_dict()`."""

    def __init__(self, cfg: Config, data: Dataset, run_dir: str | Path, *, progress=None,
                 resume_state: dict | None = None, world: distm.World | None = None):
        self.cfg = cfg
        self.data = data
        self.run_dir = Path(run_dir)
        self.progress = progress or Silent()
        self.world = world or distm.World()
        self.device = runtime.pick_device(cfg.device, self.world.local_rank if self.world.distributed else None)
        distm.init(self.world, self.device)
        self.amp = runtime.resolve_amp(cfg.amp, self.device)
        runtime.set_deterministic(cfg.deterministic)
        runtime.seed_everything(cfg.seed)
        if self.device.type == "cuda" and not cfg.deterministic:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        self.splits = make_splits(cfg, data, self.device)
        self.num_classes = data.num_classes
        self.train_loader = DeviceLoader(
            self.splits.train_x, self.splits.train_y, batch_size=cfg.batch_size, mean=data.mean, std=data.std,
            seed=cfg.seed, augment=augment_from(cfg), channels_last=cfg.channels_last,
            rank=self.world.rank, world_size=self.world.size)
        self.steps_per_epoch = len(self.train_loader)
        distm.validate(cfg.batch_size, cfg.accum_steps, cfg.sync_bn, self.world, self.device)
        distm.validate_last_batch(self.train_loader.num_images, cfg.batch_size, cfg.accum_steps, self.world)

        model = build_model(cfg.model, self.num_classes, cfg.width, cfg.zero_init_residual)
        if cfg.sync_bn and self.world.distributed:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=fmt)
        self.params = count_parameters(self.model)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.schedule = LRSchedule(cfg, self.steps_per_epoch)
        self.scaler = runtime.grad_scaler(self.device, self.amp)
        self.amp_ctx = runtime.autocast(self.device, self.amp)
        self.swa = AveragedModel(self.model) if cfg.swa else None
        self.swa_start = swa_start_epoch(cfg) if cfg.swa else None
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
                    if cfg.ema > 0 else None)

        # position and bookkeeping (everything here goes into checkpoints)
        self.epoch = 0            # completed epochs
        self.batch = 0            # batches done in the current (epoch + 1)
        self.step = 0             # optimizer steps done
        self.accum_steps = cfg.accum_steps
        self.partial = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
        self.history: list[dict] = []
        self.best = {"val_acc": None, "epoch": None, "source": "raw"}
        self.time_to_acc = {f"{t:.2f}": None for t in THRESHOLDS}
        self.elapsed = 0.0
        self.skipped_steps = 0
        self.last_lr = cfg.lr
        self._peer_stop = False   # DDP: some rank caught SIGINT/SIGTERM (agreed via distm.agree_step)
        self.watch = FiniteWatch(self.device)
        self.check_every = check_every(self.device)
        if resume_state is not None:
            self._load_state(resume_state)

        self.train_model = self.model
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.train_model = runtime.maybe_compile(self.train_model, cfg.compile, self.device, warn=self.progress.log)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if self.world.is_main and self.ckpt_dir.is_dir():
            for p in ckpt.remove_leftover_temps(self.ckpt_dir):
                self.progress.log(f"removed {p.name}, left by a save that was interrupted")

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self, model_state: dict | None = None, source: str = "raw") -> dict:
        return {
            "model": model_state if model_state is not None else self.model.state_dict(),
            "model_source": source,
            "model_args": {"name": self.cfg.model, "num_classes": self.num_classes, "width": self.cfg.width},
            "classes": list(self.data.classes), "mean": list(self.data.mean), "std": list(self.data.std),
            "dataset": self.data.name,
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "accum_steps": self.accum_steps,
            "rng": runtime.rng_state(), "partial": dict(self.partial), "history": list(self.history),
            "best": dict(self.best), "time_to_acc": dict(self.time_to_acc), "elapsed": float(self.elapsed),
            "skipped_steps": self.skipped_steps, "world_size": self.world.size,
            "torch_version": str(torch.__version__),
        }

    def _load_state(self, state: dict) -> None:
        where = state.get("path", "last.pt")
        for key, kind in RESUME_KEYS.items():
            if not isinstance(state.get(key), kind):
                raise CheckpointError(f"checkpoint {where!r} has no valid {key!r} state; it cannot resume the same "
                                      "trajectory (start a new run, or resume from another checkpoint)")
        rng = state["rng"]
        if (not isinstance(rng.get("torch"), torch.Tensor) or not isinstance(rng.get("numpy"), dict)
                or not isinstance(rng.get("python"), dict)):
            raise CheckpointError(f"checkpoint {where!r} has corrupt RNG state; refusing to resume on a different trajectory")
        partial = state["partial"]
        if not (all(isinstance(partial.get(k), (int, float)) for k in ("loss_sum", "correct", "count", "seconds"))
                and state["step"] >= 0 and state["accum_steps"] >= 1):
            raise CheckpointError(f"checkpoint {where!r} has corrupt position state (step {state['step']}, "
                                  f"accum_steps {state['accum_steps']}, partial sums {list(partial)}); refusing to resume")
        if not (0 <= state["batch"] < self.steps_per_epoch and 0 <= state["epoch"] <= self.cfg.epochs):
            raise CheckpointError(f"checkpoint {where!r} has an invalid data position (epoch {state['epoch']}, "
                                  f"batch {state['batch']}) for this dataset; refusing to resume")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.scaler.load_state_dict(state["scaler"])
            if self.swa is not None and state.get("swa") is not None:
                self.swa.load_state_dict(state["swa"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            runtime.set_rng_state(rng)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"checkpoint {where!r} does not match this run: "
                                  f"{first_line(e, 200, type(e).__name__)}") from None
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.accum_steps = state["accum_steps"]
        self.partial = {k: float(v) for k, v in state["partial"].items()}
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.time_to_acc = dict(state["time_to_acc"])
        self.elapsed = float(state["elapsed"])
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def save(self, name: str, model_state: dict | None = None, source: str = "raw") -> None:
        if not self.world.is_main:
            return
        target = self.model.state_dict() if model_state is None else model_state  # EMA/SWA weights too
        if not _all_finite(target):
            raise WorkError(f"weights became non-finite at step {self.step}; not saving {name} "
                            "(the previous checkpoint is intact); lower --lr or use --amp off")
        ckpt.save(self.state_dict(model_state, source), self.ckpt_dir / name)

    # ------------------------------------------------------------------ the step
    def _lr(self) -> float:
        if self.swa is not None and self.epoch + 1 >= self.swa_start:
            return self.cfg.swa_lr
        return self.schedule.lr(self.step)

    def _train_step(self, x, y, n_global: int, sums: torch.Tensor) -> torch.Tensor:
        """One optimizer step over a (rank's share of a) global batch, in accum_steps micro-batches.

        The loss of each micro-batch is its *sum* divided by the global batch size, so the
        accumulated gradient equals that of one big batch exactly (also for an uneven last batch).
        DDP averages gradients over ranks, hence the factor world.size.
        """
        lr = self.last_lr = self._lr()
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        scale = self.world.size / n_global
        chunks = [(xm, ym) for xm, ym in zip(x.tensor_split(self.accum_steps), y.tensor_split(self.accum_steps))
                  if len(ym)]
        loss_total = torch.zeros((), device=self.device)
        for i, (xm, ym) in enumerate(chunks):
            sync = (self.train_model.no_sync() if self.world.distributed and i < len(chunks) - 1
                    else contextlib.nullcontext())
            with sync:
                with self.amp_ctx:
                    out = self.train_model(xm)
                loss = F.cross_entropy(out.float(), ym, label_smoothing=self.cfg.label_smoothing, reduction="sum")
                self.scaler.scale(loss * scale).backward()
            loss_total += loss.detach()
            sums[1] += (out.detach().argmax(1) == ym).sum()
            sums[2] += len(ym)
        sums[0] += loss_total
        self._updating = True  # from here on the step cannot be redone (see _guarded_step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return torch.isfinite(loss_total)

    def _guarded_step(self, x, y, n_global: int, sums: torch.Tensor) -> torch.Tensor:
        """`_train_step`, with CUDA out-of-memory turned into advice or, with --auto-batch, a retry.

        The retry redoes the step from a clean slate with the micro-batch halved (accum_steps
        doubled): gradients dropped, the metric sums and the BN statistics of the failed attempt
        restored. So the run equals one that used that accumulation from the start; accum_steps
        is in every checkpoint, so a resume keeps it.
        """
        auto = self.cfg.auto_batch and not self.world.distributed  # ranks would disagree on accum_steps
        if auto:
            saved_sums = sums.clone()
            buffers = list(self.model.buffers())
            saved_buffers = [b.clone() for b in buffers]
        while True:
            self._updating = False
            try:
                return self._train_step(x, y, n_global, sums)
            except torch.cuda.OutOfMemoryError:
                pass  # handled below, once the failed attempt's tensors are released
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            micro = -(-len(y) // self.accum_steps)
            if not auto or self._updating or micro <= 1:
                raise WorkError(self._oom_message(micro))
            sums.copy_(saved_sums)
            with torch.no_grad():
                for b, s in zip(buffers, saved_buffers):
                    b.copy_(s)
            self.accum_steps *= 2
            self.progress.log(f"out of memory with a micro-batch of {micro}: --auto-batch continues with "
                              f"{-(-len(y) // self.accum_steps)} x {self.accum_steps} accumulation steps (same "
                              f"global batch {self.cfg.batch_size}; kept in checkpoints)")

    def _oom_message(self, micro: int) -> str:
        B, a = self.cfg.batch_size, self.accum_steps
        more = next((k for k in range(2 * a, B + 1) if B % k == 0), None)
        fix = (f"keep the global batch with --accum-steps {more} (micro-batches of {B // more}"
               f"{' per device' if self.world.distributed else ''})" if more else "lower --batch-size")
        return (f"CUDA out of memory in training step {self.step + 1} with a micro-batch of {micro} images "
                f"(--batch-size {B} / --accum-steps {a}{f' / {self.world.size} devices' if self.world.distributed else ''}); "
                f"{fix}, or pass --auto-batch to halve it automatically")

    def _loop_step(self, x, y, n_global: int, sums: torch.Tensor, stopping: bool) -> None:
        """The loop body that `run` and `bench` share: the step, DDP's agreement, the finite watch.

        No host-device sync, except every `check_every` steps where the watch is read.
        """
        finite = self._guarded_step(x, y, n_global, sums)
        stop_flags = None
        if self.world.distributed:
            flags = distm.agree_step(finite, stopping, self.world)
            finite, stop_flags = flags[0] == 0, flags[1]
        self.watch.add(finite, self.step, stop_flags)
        if self.step % self.check_every == 0:
            self._check_finite()

    def _check_finite(self) -> None:
        """Read the finite watch (a sync point): fail the run if a loss went non-finite.

        Called every `check_every` steps, before every checkpoint and at each epoch's end, so a
        non-finite model is never saved. DDP: every rank reads at the same steps, so all of them
        fail, or see a peer's stop signal, together.
        """
        r = self.watch.read()
        self._peer_stop = self._peer_stop or r.stopping
        if not r.bad_steps:
            return
        spe = max(self.steps_per_epoch, 1)
        where = f"step {r.first_bad_step} (epoch {(r.first_bad_step - 1) // spe + 1}, batch {(r.first_bad_step - 1) % spe + 1})"
        if self.amp == "fp16":
            # GradScaler skipped those steps; only a long run of them means the run is broken.
            self.skipped_steps += r.bad_steps
            if r.longest_run <= self.cfg.max_skipped_steps:
                return
            raise WorkError(f"{r.longest_run} consecutive fp16 steps had a non-finite loss (the first of this "
                            f"stretch's at {where}); stopping. Try --amp bf16 or off, or a lower --lr")
        raise WorkError(f"loss became non-finite at {where}; stopped without saving it. Lower --lr, check the "
                        "data's normalisation, or resume from the last checkpoint")

    # ------------------------------------------------------------------ epochs
    def _validate(self, model) -> dict | None:
        if self.splits.val_x is None:
            return None
        # DDP: rank 0 evaluates the weights and BN statistics it saves; every rank gets its numbers,
        # so the plateau, best-checkpoint and SWA decisions are the same everywhere.
        return distm.on_main(lambda: evaluate(
            model, self.splits.val_x, self.splits.val_y, mean=self.data.mean, std=self.data.std,
            batch_size=self.cfg.eval_batch_size, amp_ctx=self.amp_ctx, channels_last=self.cfg.channels_last,
            num_classes=self.num_classes), self.world)

    def _stopping(self, stop: _StopFlag) -> bool:
        """A stop signal, as every rank sees it at this step (DDP: agreed at the finite watch's reads)."""
        return self._peer_stop if self.world.distributed else stop.signum is not None

    def _train_epoch(self, epoch: int, stop: _StopFlag) -> dict:
        cfg = self.cfg
        self.train_model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        if self.world.is_main:  # a resumed epoch's partial sums are global (all-reduced): count them once
            sums += torch.tensor([self.partial["loss_sum"], self.partial["correct"], self.partial["count"]],
                                 dtype=torch.float64, device=self.device)
        seconds_before = self.partial["seconds"]
        t0 = time.perf_counter()
        self.progress.epoch_start(epoch, cfg.epochs, self.steps_per_epoch, self.batch)
        self.watch.reset()
        done_here = 0
        n = self.train_loader.num_images
        B = cfg.batch_size
        for b, x, y in self.train_loader.batches(epoch, start=self.batch):
            n_global = min(B, n - b * B)
            self._loop_step(x, y, n_global, sums, stop.signum is not None)
            self.batch = b + 1
            self.progress.step(n_global, sums)
            done_here += 1
            if epoch == 1 and done_here == min(self.steps_per_epoch, 20):
                # Early, so nobody starts a 250-epoch CPU run unknowingly (+8% for validation).
                self._check_finite()  # a sync: the queued steps are done, so the time is real
                per_step = (time.perf_counter() - t0) / done_here
                self.progress.estimate(per_step * self.steps_per_epoch * cfg.epochs * 1.08, cfg.epochs)
            mid_epoch = self.batch < self.steps_per_epoch
            if mid_epoch and (self._stopping(stop)
                              or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)):
                self._check_finite()
                values = distm.all_reduce_sum(sums.clone(), self.world).tolist()
                self.partial = {"loss_sum": values[0], "correct": values[1], "count": values[2],
                                "seconds": seconds_before + time.perf_counter() - t0}
                self.epoch = epoch - 1
                self.save("last.pt")
                if self._stopping(stop):
                    raise Interrupted(stop.signum or signal.SIGTERM, f"stopped by signal {stop.signum} at epoch {epoch} batch {self.batch}; "
                                      f"checkpoint written to {self.ckpt_dir / 'last.pt'}; continue with --resume {self.run_dir}")
        self._check_finite()
        loss_sum, correct, count = distm.all_reduce_sum(sums.clone(), self.world).tolist()  # sync point
        seconds = seconds_before + time.perf_counter() - t0
        return {"train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
                "epoch_seconds": seconds, "images_per_s": count / max(seconds, 1e-9)}

    def run(self) -> dict:
        cfg = self.cfg
        writer = _tb_writer(self.run_dir) if self.world.is_main else None
        with _StopFlag() as stop:
            for epoch in range(self.epoch + 1, cfg.epochs + 1):
                t_epoch = time.perf_counter()
                row = {"epoch": epoch, **self._train_epoch(epoch, stop)}
                row["lr"] = self.last_lr  # the lr of the epoch's last step
                val = self._validate(self.model)
                row["val_loss"], row["val_acc"] = (val["loss"], val["acc"]) if val else (None, None)
                ema_val = self._validate(self.ema.module) if (self.ema is not None and val) else None
                row["ema_val_acc"] = ema_val["acc"] if ema_val else None
                row["swa_val_acc"] = None
                if self.swa is not None and epoch >= self.swa_start:
                    self.swa.update_parameters(self.model)
                elif val is not None:
                    if self.schedule.epoch_end(val["loss"]):
                        self.progress.log(f"epoch {epoch}: validation loss has not improved for "
                                          f"{cfg.plateau_patience} epochs; lr x{cfg.plateau_factor}")
                self.epoch, self.batch = epoch, 0
                self.partial = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
                self._account_time(row, t_epoch)
                self._track_best(epoch, row)
                self.history.append(row)
                self.save("last.pt")
                if self.world.is_main:
                    write_metrics(self.run_dir / "metrics.csv", self.history)
                    if writer is not None:
                        for k in METRIC_FIELDS[1:]:
                            if row.get(k) is not None:
                                writer.add_scalar(k, row[k], epoch)
                        writer.flush()
                self.progress.epoch_end(row)
                if (distm.any_true(stop.signum is not None or self._peer_stop, self.world)
                        if self.world.distributed else stop.signum is not None):
                    raise Interrupted(stop.signum or signal.SIGTERM, f"stopped by signal {stop.signum} after epoch {epoch}; checkpoint "
                                      f"written to {self.ckpt_dir / 'last.pt'}; continue with --resume {self.run_dir}")
        if writer is not None:
            writer.close()
        return self._finish()

    def _account_time(self, row: dict, t_epoch: float) -> None:
        # Wall time of training + validation so far (across resumes): what "time to 94%" means.
        self.elapsed += time.perf_counter() - t_epoch
        row["elapsed_seconds"] = self.elapsed

    def _track_best(self, epoch: int, row: dict) -> None:
        candidates = [(row.get("val_acc"), "raw", self.model), (row.get("ema_val_acc"), "ema",
                                                                 self.ema.module if self.ema is not None else None)]
        for acc, source, module in candidates:
            if acc is None:
                continue
            for t in THRESHOLDS:
                key = f"{t:.2f}"
                if acc >= t and self.time_to_acc[key] is None:
                    self.time_to_acc[key] = row["elapsed_seconds"]
            if self.best["val_acc"] is None or acc > self.best["val_acc"]:
                self.best = {"val_acc": acc, "epoch": epoch, "source": source}
                self.save("best.pt", module.state_dict(), source)

    # ------------------------------------------------------------------ the end
    @torch.no_grad()
    def _update_swa_bn(self) -> None:
        """BN statistics of the averaged weights, recomputed over the training data (as update_bn)."""
        loader = ((x, y) for _, x, y in self.train_loader.batches(self.cfg.epochs + 1))
        torch.optim.swa_utils.update_bn(loader, self.swa, device=self.device)

    def _finish(self) -> dict:
        cfg = self.cfg
        candidates = {"raw": max((r["val_acc"] for r in self.history if r.get("val_acc") is not None), default=None),
                      "swa": None,
                      "ema": max((r["ema_val_acc"] for r in self.history if r.get("ema_val_acc") is not None),
                                 default=None)}
        has_val = self.splits.val_x is not None
        if self.swa is not None:
            self._update_swa_bn()
            swa_val = self._validate(self.swa.module)
            if swa_val is not None:
                candidates["swa"] = swa_val["acc"]
                self.history[-1]["swa_val_acc"] = swa_val["acc"]
                if self.world.is_main:
                    write_metrics(self.run_dir / "metrics.csv", self.history)
            if swa_val is None or swa_val["acc"] > (self.best["val_acc"] or -1):
                self.best = {"val_acc": swa_val["acc"] if swa_val else None, "epoch": cfg.epochs, "source": "swa"}
                self.save("best.pt", self.swa.module.state_dict(), "swa")
        if not has_val and self.swa is None:
            # No validation split: nothing to choose on; the final weights (EMA when kept) are the result.
            source, module = ("ema", self.ema.module) if self.ema is not None else ("raw", self.model)
            self.best = {"val_acc": None, "epoch": cfg.epochs, "source": source}
            self.save("best.pt", module.state_dict(), source)
        self.save("last.pt")

        # The test split, evaluated once, on the weights chosen on validation.
        results: dict[str, Any] = {}
        best_model = self._best_model()
        eval_split, x, y = ("test", self.splits.test_x, self.splits.test_y)
        if x is None:
            eval_split, x, y = ("val", self.splits.val_x, self.splits.val_y)
        test = tta = None
        if x is not None and self.world.is_main:  # only rank 0 writes results; the others would repeat it
            test = evaluate(best_model, x, y, mean=self.data.mean, std=self.data.std, batch_size=cfg.eval_batch_size,
                            amp_ctx=self.amp_ctx, channels_last=cfg.channels_last, num_classes=self.num_classes,
                            return_probs=True)
            if cfg.tta:
                tta = evaluate(best_model, x, y, mean=self.data.mean, std=self.data.std,
                               batch_size=cfg.eval_batch_size, amp_ctx=self.amp_ctx, tta=True,
                               channels_last=cfg.channels_last, num_classes=self.num_classes)
        is_test = eval_split == "test" and test is not None
        results.update({
            "test_acc": test["acc"] if is_test else None,
            "test_loss": test["loss"] if is_test else None,
            "test_top5": test["top5"] if is_test else None,
            "test_acc_tta": tta["acc"] if (is_test and tta) else None,
            "eval_split": eval_split if test is not None else None,
            "eval_acc": test["acc"] if test else None, "eval_loss": test["loss"] if test else None,
            "eval_acc_tta": tta["acc"] if tta else None,
            "per_class_acc": dict(zip(self.data.classes, test["per_class_acc"])) if test else None,
            "best_val_acc": self.best["val_acc"], "best_epoch": self.best["epoch"], "selected": self.best["source"],
            "candidates": candidates, "epochs": self.epoch, "steps": self.step,
            "train_seconds": self.elapsed, "time_to_acc": self.time_to_acc, "skipped_steps": self.skipped_steps,
            "model": cfg.model, "params": self.params, "dataset": self.data.name, "classes": list(self.data.classes),
            "num_train": len(self.splits.train_y), "num_val": 0 if self.splits.val_y is None else len(self.splits.val_y),
            "num_test": 0 if self.splits.test_y is None else len(self.splits.test_y),
            "device": str(self.device), "device_name": _device_name(self.device), "amp": self.amp,
            "torch_version": str(torch.__version__), "seed": cfg.seed, "world_size": self.world.size,
            "global_batch": cfg.batch_size, "accum_steps": self.accum_steps,
        })
        if self.world.is_main:
            if test is not None:
                idx = torch.arange(len(y)) if eval_split == "test" else self.splits.val_idx
                np.savez(self.run_dir / "predictions.npz", probs=test["probs"], labels=y.cpu().numpy(),
                         indices=idx.cpu().numpy().astype(np.int64), split=np.array(eval_split))
            write_json(self.run_dir / "results.json", results)
        return results

    def _best_model(self) -> torch.nn.Module:
        state = distm.on_main(lambda: ckpt.load(self.ckpt_dir / "best.pt", map_location="cpu"), self.world)
        return ckpt.build_from_checkpoint(state, self.device, channels_last=self.cfg.channels_last)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def prepare_run_dir(run_dir: Path, cfg: Config) -> None:
    from .config import dump_yaml

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")


def fit(cfg: Config, data: Dataset, run_dir: str | Path, *, progress=None, resume_state: dict | None = None,
        world: distm.World | None = None) -> dict:
    """Train (or continue) one run into run_dir; returns the results dict also written to results.json."""
    run_dir = Path(run_dir)
    world = world or distm.World()
    trainer = Trainer(cfg, data, run_dir, progress=progress, resume_state=resume_state, world=world)
    if world.is_main:  # after the Trainer's checks: a refused config leaves no run directory behind
        prepare_run_dir(run_dir, cfg)
    return trainer.run()


def load_resume_state(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UsageError(f"--resume {str(run_dir)!r}: no checkpoints/last.pt there; pass the run directory of "
                         "an earlier `resnet-cifar train`")
    return ckpt.load(path)


def evaluate_checkpoint(state: dict, data: Dataset, *, split: str = "test", tta: bool = False,
                        device: str = "auto", batch_size: int | None = None) -> dict:
    """Evaluate a loaded checkpoint on the test split, or on the validation split it was chosen on
    (rebuilt from the run's own val_size and seed, so it is the very same images)."""
    from .config import from_dict

    cfg = from_dict(state["config"])
    dev = runtime.pick_device(device)
    if split == "test":
        if data.test_x is None:
            raise UsageError(f"dataset {data.name!r} at {cfg.data_dir!r} has no test split; "
                             "use --split val (or add DIR/test/<class>/ images)")
        x, y = data.test_x, data.test_y
    else:
        if cfg.val_size == 0:
            raise UsageError("this run had no validation split (--val-size 0); use --split test")
        _, val_idx = train_val_split(data.train_y, cfg.val_size, cfg.seed)
        x, y = data.train_x[val_idx], data.train_y[val_idx]
    if list(state["classes"]) != list(data.classes):
        raise UsageError(f"the classes of checkpoint {state.get('path', '')!r} {list(state['classes'])[:5]}... differ from the dataset's "
                         f"{list(data.classes)[:5]}...; evaluate on the dataset the model was trained on")
    model = ckpt.build_from_checkpoint(state, dev, num_classes=data.num_classes, channels_last=cfg.channels_last)
    amp = runtime.resolve_amp(cfg.amp, dev)
    result = evaluate(model, x.to(dev), y.to(dev), mean=tuple(state["mean"]), std=tuple(state["std"]),
                      batch_size=batch_size or cfg.eval_batch_size, tta=tta, amp_ctx=runtime.autocast(dev, amp),
                      channels_last=cfg.channels_last, num_classes=data.num_classes)
    result["per_class_acc"] = dict(zip(data.classes, result["per_class_acc"]))
    result.update({"split": split, "tta": tta, "checkpoint": state.get("path"), "model": state["model_args"]["name"],
                   "dataset": data.name, "device": str(dev)})
    return result
