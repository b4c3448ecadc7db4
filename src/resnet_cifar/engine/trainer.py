"""One training run: the epoch loop over the parts (`engine.parts`), the step (`engine.step`),
the run state (`engine.state`) and the best-weights decision (`engine.best`).

The loop, per epoch: train steps -> validate raw (and EMA) weights -> SWA update or plateau step
-> best.pt if better -> last.pt, metrics.csv. At the end: SWA's BN statistics and its validation,
then the test split, evaluated once on the chosen weights -> results.json.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import compute, finite, fsutil, runtime
from .. import distributed as distm
from ..config import Config
from ..data import Dataset, fingerprint
from ..errors import CheckpointError, Interrupted, WorkError, first_line
from ..progress import Silent
from ..rundir import check_alive
from . import results as out
from . import step as step_mod
from .best import BestWeights
from .parts import build_parts, wrap_for_training
from .signals import StopFlag, signal_name, signals_interrupt
from .state import RunState, validate_resume
from .sums import Sums

ESTIMATE_AFTER = 20    # steps of epoch 1 after which the total time is estimated
VALIDATION_SHARE = 1.08  # validation adds ~8% to the training time of an epoch


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def _load_lookahead(lookahead, state: dict) -> None:
    if lookahead is None:
        return
    if state.get("lookahead") is None:
        if state["step"] > 0:
            raise KeyError("it has no lookahead state, and this run uses --lookahead")
        return
    lookahead.load_state_dict(state["lookahead"])


class Trainer:
    """One run. `setup()` first (the entry point's job), then construct, then `run()`."""

    def __init__(self, cfg: Config, data: Dataset, run_dir: str | Path, *, progress=None,
                 resume_state: dict | None = None, world: distm.World | None = None):
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.progress = progress or Silent()
        self.world = world or distm.World()
        self.device = runtime.pick_device(cfg.device, self.world.local_rank if self.world.distributed else None)
        p = self.parts = build_parts(cfg, data, self.device, self.world, init=resume_state is None)
        self.model, self.swa, self.ema, self.amp = p.model, p.swa, p.ema, p.amp
        self.splits, self.train_loader, self.steps_per_epoch = p.splits, p.loader, len(p.loader)
        self.state = RunState(accum_steps=cfg.accum_steps)
        self.best = BestWeights(self.state, self.save)
        self.last_lr = cfg.lr
        self._peer_stop = False   # DDP: some rank caught SIGINT/SIGTERM (agreed via distm.agree_step)
        self.watch = finite.FiniteWatch(self.device)
        self.check_every = finite.check_every(self.device)
        # which images, labels and order the run trains on: in every checkpoint, for --resume and evaluate
        self.data_fingerprint = fingerprint.of_dataset(data) if (self.world.is_main or resume_state) else None
        if resume_state is not None:
            self._load_state(resume_state)
        p.step.accum_steps = self.state.accum_steps
        p.step.model = self.train_model = wrap_for_training(self.model, cfg, self.device, self.world, self.progress.log)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.dir_made = False    # set by `fit` (prepare_run_dir) or the first save; see check_dir
        if self.world.is_main and self.ckpt_dir.is_dir():
            for f in fsutil.remove_leftover_temps(self.ckpt_dir):
                self.progress.log(f"removed {f.name}, left by a save that was interrupted")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, model_state: dict | None = None, source: str = "raw") -> dict:
        p = self.parts
        return {
            "model": model_state if model_state is not None else self.model.state_dict(),
            "model_source": source,
            "model_args": {"name": self.cfg.model, "num_classes": self.data.num_classes, "width": self.cfg.width},
            "classes": list(self.data.classes), "mean": list(self.data.mean), "std": list(self.data.std),
            "dataset": self.data.name, "config": self.cfg.to_dict(), "data_fingerprint": self.data_fingerprint,
            "optimizer": p.optimizer.state_dict(), "schedule": p.schedule.state_dict(),
            "scaler": p.scaler.state_dict(),
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "lookahead": p.lookahead.state_dict() if p.lookahead is not None else None,
            **self.state.state_dict(), "rng": runtime.rng_state(), "world_size": self.world.size,
            "torch_version": str(torch.__version__),
        }

    def _load_state(self, state: dict) -> None:
        validate_resume(state, self.steps_per_epoch, self.cfg.epochs)
        p = self.parts
        try:
            self.model.load_state_dict(state["model"])
            p.optimizer.load_state_dict(state["optimizer"])
            p.schedule.load_state_dict(state["schedule"])
            p.scaler.load_state_dict(state["scaler"])
            if self.swa is not None and state.get("swa") is not None:
                self.swa.load_state_dict(state["swa"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            _load_lookahead(p.lookahead, state)
            runtime.set_rng_state(state["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"checkpoint {state.get('path', 'last.pt')!r} does not match this run: "
                                  f"{first_line(e, 200, type(e).__name__)}") from None
        fingerprint.check_same(state, self.data_fingerprint)   # on every rank: the same verdict everywhere
        self.state.load_state_dict(state)

    def save(self, name: str, model_state: dict | None = None, source: str = "raw") -> None:
        if not self.world.is_main:
            return
        self.check_dir()
        target = self.model.state_dict() if model_state is None else model_state  # EMA/SWA weights too
        if not _all_finite(target):
            raise WorkError(f"weights became non-finite at step {self.state.step}; not saving {name} "
                            "(the previous checkpoint is intact); lower --lr or use --amp off")
        try:
            ckpt.save(self.state_dict(model_state, source), self.ckpt_dir / name)
        except CheckpointError:
            self.check_dir()   # deleted while saving: say that, not "disk full"
            raise
        self.dir_made = True

    def check_dir(self) -> None:
        """Once the run directory exists, its disappearance stops the run (not a silent re-creation)."""
        if self.dir_made:
            check_alive(self.run_dir)

    # ------------------------------------------------------------------ the step
    def lr(self) -> float:
        if self.swa is not None and self.state.epoch + 1 >= self.parts.swa_start:
            return self.cfg.swa_lr
        return self.parts.schedule.lr(self.state.step)

    def guarded_step(self, x, y, n_global: int) -> step_mod.StepOutput:
        """The public step (`engine.step.guarded_step` -> `train_step`) at this run's lr and position."""
        lr = self.last_lr = self.lr()
        s = self.parts.step
        result = step_mod.guarded_step(s, x, y, n_global, lr, batch_size=self.cfg.batch_size,
                                       auto_batch=self.cfg.auto_batch, step_number=self.state.step,
                                       log=self.progress.log)
        self.state.step += 1
        self.state.accum_steps = s.accum_steps
        return result

    def loop_step(self, x, y, n_global: int, stopping: bool) -> Sums:
        """The loop body: the step, DDP's agreement, the finite watch (read every `check_every` steps)."""
        result = self.guarded_step(x, y, n_global)
        ok, stop_flags = result.finite, None
        if self.world.distributed:
            flags = distm.agree_step(ok, stopping, self.world)
            ok, stop_flags = flags[0] == 0, flags[1]
        self.watch.add(ok, self.state.step, stop_flags)
        if self.state.step % self.check_every == 0:
            self.check_finite()
        return result.sums

    def check_finite(self) -> None:
        """Read the finite watch (a sync point); fail the run if a loss went non-finite.

        Called every `check_every` steps, before every checkpoint and at each epoch's end, so a
        non-finite model is never saved. DDP: every rank reads at the same steps.
        """
        r = self.watch.read()
        self._peer_stop = self._peer_stop or r.stopping
        self.state.skipped_steps += finite.judge(r, amp=self.amp, max_skipped_steps=self.cfg.max_skipped_steps,
                                                 steps_per_epoch=self.steps_per_epoch)

    # ------------------------------------------------------------------ epochs
    def validate(self, model) -> dict | None:
        if self.splits.val_x is None:
            return None
        # DDP: rank 0 evaluates the weights it saves; every rank gets its numbers (same decisions).
        return distm.on_main(lambda: self.parts.evaluator(model, self.splits.val_x, self.splits.val_y), self.world)

    def stopping(self, stop: StopFlag) -> bool:
        """A stop signal, as every rank sees it at this step (DDP: agreed at the finite watch's reads)."""
        return self._peer_stop if self.world.distributed else stop.signum is not None

    def train_epoch(self, epoch: int, stop: StopFlag) -> dict:
        cfg, st = self.cfg, self.state
        self.train_model.train()
        sums = Sums.zeros(self.device)
        if self.world.is_main:  # a resumed epoch's partial sums are global (all-reduced): count them once
            sums.add(Sums.from_dict(st.partial, self.device))
        seconds_before, t0 = st.partial["seconds"], time.perf_counter()
        self.progress.epoch_start(epoch, cfg.epochs, self.steps_per_epoch, st.batch)
        self.parts.step.epoch = epoch - 1
        self.watch.reset()
        n, B = self.train_loader.images_per_epoch, cfg.batch_size
        for done, (b, x, y) in enumerate(self.train_loader.batches(epoch, start=st.batch), 1):
            n_global = min(B, n - b * B)
            sums.add(self.loop_step(x, y, n_global, stop.signum is not None))
            st.batch = b + 1
            self.progress.step(n_global, sums)
            if epoch == 1 and done == min(self.steps_per_epoch, ESTIMATE_AFTER):
                self.check_finite()  # a sync: the queued steps are done, so the time is real
                per_step = (time.perf_counter() - t0) / done
                self.progress.estimate(per_step * self.steps_per_epoch * cfg.epochs * VALIDATION_SHARE, cfg.epochs)
            due = cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0
            if st.batch < self.steps_per_epoch and (self.stopping(stop) or due):
                self.check_finite()
                st.partial = {**sums.all_reduce(self.world).as_dict(),
                              "seconds": seconds_before + time.perf_counter() - t0}
                st.epoch = epoch - 1
                self.save("last.pt")
                if self.stopping(stop):
                    raise self._interrupted(stop, f"at epoch {epoch} batch {st.batch}")
        self.check_finite()
        total = sums.all_reduce(self.world).as_dict()  # sync point
        seconds = seconds_before + time.perf_counter() - t0
        count = total["count"]
        return {"train_loss": total["loss_sum"] / max(count, 1), "train_acc": total["correct"] / max(count, 1),
                "epoch_seconds": seconds, "images_per_s": count / max(seconds, 1e-9),
                "train_flops": compute.train_flops(self.parts.macs, n * epoch)}    # forward MACs x 2 x 3 x images

    def _interrupted(self, stop: StopFlag, where: str) -> Interrupted:
        signum = stop.signum or signal.SIGTERM
        return Interrupted(signum, f"stopped by {signal_name(signum)} {where}: checkpoint written to "
                           f"{self.ckpt_dir / 'last.pt'}; resume with `resnet-cifar train --resume {self.run_dir}`")

    def run(self) -> dict:
        scalars = out.Scalars(self.run_dir, enabled=self.world.is_main)
        with StopFlag() as stop:
            for epoch in range(self.state.epoch + 1, self.cfg.epochs + 1):
                # training + validation, across resumes: a resumed epoch's seconds before its checkpoint count too
                t_epoch, before = time.perf_counter(), self.state.partial["seconds"]
                row = {"epoch": epoch, **self.train_epoch(epoch, stop), "lr": self.last_lr}
                self._validate_epoch(epoch, row)
                self.state.end_epoch(epoch)
                self.state.elapsed += before + time.perf_counter() - t_epoch
                row["elapsed_seconds"] = self.state.elapsed
                self.best.epoch_end(epoch, row, {"raw": self.model,
                                                 "ema": self.ema.module if self.ema is not None else None})
                self.state.history.append(row)
                self.save("last.pt")
                if self.world.is_main:
                    out.write_metrics(self.run_dir / "metrics.csv", self.state.history)
                    scalars.add(row)
                self.progress.epoch_end(row)
                stopped = stop.signum is not None
                if distm.any_true(stopped or self._peer_stop, self.world) if self.world.distributed else stopped:
                    raise self._interrupted(stop, f"after epoch {epoch}")
        scalars.close()
        return self.finish()

    def _validate_epoch(self, epoch: int, row: dict) -> None:
        """Validation of the raw and EMA weights; then SWA's update or the plateau schedule's step."""
        val = self.validate(self.model)
        row["val_loss"], row["val_acc"] = (val["loss"], val["acc"]) if val else (None, None)
        ema_val = self.validate(self.ema.module) if (self.ema is not None and val) else None
        row["ema_val_acc"] = ema_val["acc"] if ema_val else None
        row["swa_val_acc"] = None
        if self.swa is not None and epoch >= self.parts.swa_start:
            self.swa.update_parameters(self.model)
        elif val is not None and self.parts.schedule.epoch_end(val["loss"]):
            self.progress.log(f"epoch {epoch}: validation loss has not improved for "
                              f"{self.cfg.plateau_patience} epochs; lr x{self.cfg.plateau_factor}")

    # ------------------------------------------------------------------ the end
    @torch.no_grad()
    def update_swa_bn(self) -> None:
        """BN statistics of the averaged weights, recomputed over the training data (as update_bn)."""
        loader = ((x, y) for _, x, y in self.train_loader.batches(self.cfg.epochs + 1))
        torch.optim.swa_utils.update_bn(loader, self.swa, device=self.device)

    def finish(self) -> dict:
        swa = None
        if self.swa is not None:
            self.update_swa_bn()
            swa_val = self.validate(self.swa.module)
            swa = (swa_val["acc"] if swa_val else None, self.swa.module)
            if swa_val is not None:
                self.state.history[-1]["swa_val_acc"] = swa_val["acc"]
                if self.world.is_main:
                    self.check_dir()
                    out.write_metrics(self.run_dir / "metrics.csv", self.state.history)
        final = ("ema", self.ema.module) if self.ema is not None else ("raw", self.model)
        self.best.finish(self.cfg.epochs, has_val=self.splits.val_x is not None, swa=swa, final=final)
        self.save("last.pt")
        with signals_interrupt(lambda s: f"stopped by {signal_name(s)} during the final test: the checkpoints "
                                         f"are complete; --resume {self.run_dir} runs the test again"):
            return final_test(self)

    def best_model_on_device(self) -> torch.nn.Module:
        state = distm.on_main(lambda: ckpt.load(self.ckpt_dir / "best.pt", map_location="cpu"), self.world)
        return ckpt.build_from_checkpoint(state, self.device, channels_last=self.cfg.channels_last)


def run_facts(t: Trainer) -> dict:
    """What results.json records of the run itself (beside the evaluation and the best-weights choice)."""
    cfg, st, s = t.cfg, t.state, t.splits
    return {
        **out.compute_facts(t.parts.macs, cfg, s, st, t.train_loader.images_per_epoch),
        "epochs": st.epoch, "steps": st.step, "train_seconds": st.elapsed, "time_to_acc": st.time_to_acc,
        "skipped_steps": st.skipped_steps, "model": cfg.model, "params": t.parts.params,
        "dataset": t.data.name, "classes": list(t.data.classes), "num_train": len(s.train_y),
        "num_val": 0 if s.val_y is None else len(s.val_y), "num_test": 0 if s.test_y is None else len(s.test_y),
        "device": str(t.device), "device_name": runtime.device_name(t.device), "amp": t.amp,
        "torch_version": str(torch.__version__), "seed": cfg.seed, "world_size": t.world.size,
        "global_batch": cfg.batch_size, "accum_steps": st.accum_steps,
        # the schedule as run (schedule.plan: a short run's warm-up and SWA phase, and why)
        "warmup_epochs": t.parts.warmup_epochs, "swa_start_epoch": t.parts.swa_start,
        "schedule_notes": list(t.parts.schedule_notes),
    }


def final_test(t: Trainer) -> dict:
    """The test split, evaluated once, on the weights chosen on validation (rank 0 only writes it)."""
    best_model = t.best_model_on_device()
    ev = (out.final_evaluation(best_model, t.parts.evaluator, t.splits, tta=t.cfg.tta, classes=t.data.classes,
                               tta_mode=t.cfg.tta_mode) if t.world.is_main else out.empty_evaluation())
    results = {"format": ckpt.FORMAT, **ev["results"], **t.best.results(), **run_facts(t)}
    if t.world.is_main:
        t.check_dir()
        out.write_predictions(t.run_dir / "predictions.npz", ev["predictions"])
        out.write_json(t.run_dir / "results.json", results)
    return results
