"""What a training run is for a user: the run directory (claimed, replaced, marked for torchrun
restarts), the seed fan-out, the --resume and torchrun-restart rules, the report, the seeds' summary.

`train()` is what `resnet-cifar train` calls after parsing, so a Python user gets the same behaviour:

    from resnet_cifar.config import resolve
    from resnet_cifar.run import train
    outcome = train(resolve(flag_values={"model": "resnet20", "epochs": 30, "out": "runs/r20"}))
    outcome.runs[0].results["test_acc"]

Under torchrun every rank calls it; decisions about files are made on rank 0 and shared.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import checkpoint as ckpt
from . import data as data_mod
from . import distributed, engine, rundir, runtime
from .config import Config, from_dict
from .data.split import check_split_sizes
from .engine.signals import signal_name, signals_interrupt
from .errors import Interrupted, UsageError
from .estimate import bf16_hint, cpu_advice, device_description
from .progress import Silent, plural
from .schedule import plan as schedule_plan


@dataclass
class Planned:
    cfg: Config
    run_dir: Path
    state: dict | None = None       # what it continues from (--resume, a torchrun restart); None: a fresh start
    results: dict | None = None     # filled in by train(); set already for a finished seed of a resumed set


@dataclass
class Plan:
    out: Path                       # --out (the parent of seed-N under --seeds), or the resumed run
    runs: list[Planned] = field(default_factory=list)
    resume: bool = False            # continuing an earlier run (--resume)
    restarting: bool = False        # a torchrun restart of the job that created `out`
    overwrite: bool = False         # replace `out` (checked when it is claimed)
    summary: dict | None = None     # --seeds: mean and std over the runs (filled in by train())
    seeds: list[int] | None = None  # a --seeds set (new or resumed): `out` holds seeds.json and summary.json
    finished: str | None = None     # --resume of a finished run: what it found; nothing is done
    claim: rundir.Claim | None = field(default=None, repr=False)   # rank 0's hold on `out` (lock)

    def release(self, refused: bool = False) -> None:
        if self.claim is not None:
            self.claim.release(refused)
            self.claim = None


# --------------------------------------------------------------------------------- the rules
def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers like 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UsageError(f"--seeds must list distinct non-negative integers, got {text!r}")
    return seeds


def default_out(cfg: Config) -> str:
    return cfg.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}-{cfg.dataset}"


def take_run_dir(plan: Plan) -> None:
    """Rank 0, once the data is loaded: replace the directory under --overwrite, write a --seeds set's
    seeds.json, and mark it as this torchrun job's so that a restart may resume there."""
    if plan.claim is not None:
        plan.claim.replace_old()
    if plan.seeds and not plan.resume:
        engine.write_json(plan.out / rundir.SEEDS_FILE, {"format": ckpt.FORMAT, "seeds": plan.seeds,
                                                         "config": replace(plan.runs[0].cfg, seed=0).to_dict()})
    if not plan.resume:
        distributed.mark_run_dir(plan.out)


def restart_state(run_dir: Path, cfg: Config) -> dict | None:
    """Under a torchrun restart: the run's checkpoints/last.pt (None when it has none yet)."""
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return None
    state = engine.load_resume_state(run_dir)
    if state.get("config") != cfg.to_dict():
        raise UsageError(f"torchrun restart: {str(run_dir)!r} holds a run with another config; "
                         "not resuming it (choose another --out)")
    return state


def finished_results(run_dir: Path) -> dict | None:
    """results.json of a run that has ended (it is written last, atomically), else None."""
    try:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def _claimed(plan_fn: Callable[[], Plan], path: Path, world, **claim_args) -> Plan:
    """plan_fn() on rank 0 under a fresh claim of `path` (released again if planning fails); every rank
    gets the plan, rank 0's with the claim in it (the others' copies are sent without it)."""
    box = {}

    def on_rank_0() -> Plan:
        c = rundir.claim(path, **claim_args)
        try:
            plan = plan_fn()
        except BaseException:
            c.release(refused=True)
            raise
        box["claim"] = c
        return plan

    plan = distributed.on_main(on_rank_0, world)
    plan.claim = box.get("claim")
    return plan


# --------------------------------------------------------------------------------- the plan
def plan_resume(run_dir: str | Path, *, device: str | None = None, world=None) -> Plan:
    """Continue the run in run_dir with its saved config (only the device may change); a --seeds set's
    parent continues its unfinished seeds. A finished run or set is left as it is (`Plan.finished`)."""
    world = world or distributed.World()
    out = Path(run_dir)
    finished = distributed.on_main(lambda: _finished(out), world)
    if finished:
        return Plan(out=out, resume=True, finished=finished)

    def plan() -> Plan:
        seeds_file = _seeds_file(out)
        if seeds_file is not None:
            return _plan_seeds_resume(out, seeds_file, device)
        state = engine.load_resume_state(out)
        rundir.check_config_unedited(out, state["config"])
        return Plan(out=out, runs=[Planned(_resumed_config(state, device), out, state)], resume=True)

    return _claimed(plan, out, world, command=f"train --resume {out}", resume=True)


def resumed_config(run_dir: str | Path, device: str | None = None) -> Config:
    """The config a --resume of run_dir would continue with (read only: nothing is claimed)."""
    seeds_file = _seeds_file(Path(run_dir))
    if seeds_file is not None:
        return _resumed_config({"config": seeds_file["config"]}, device)
    return _resumed_config(engine.load_resume_state(run_dir), device)


def _finished(out: Path) -> str | None:
    """What a finished run (or --seeds set) in `out` says of itself, None when it is not finished."""
    seeds_file = _seeds_file(out)
    if seeds_file is not None:
        done = (out / "summary.json").is_file() and all(finished_results(out / f"seed-{s}") is not None
                                                       for s in seeds_file["seeds"])
        return f"all {len(seeds_file['seeds'])} seeds are finished (summary.json)" if done else None
    results = finished_results(out)
    return None if results is None else f"it ended after {results.get('epochs')} epochs (results.json)"


def _seeds_file(out: Path) -> dict | None:
    try:
        data = json.loads((out / rundir.SEEDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(data, dict) and data.get("format") == ckpt.FORMAT and isinstance(data.get("config"), dict)
          and isinstance(data.get("seeds"), list) and all(type(s) is int and s >= 0 for s in data["seeds"]))
    return data if ok else None


def _resumed_config(state: dict, device: str | None) -> Config:
    saved = dict(state["config"])
    if device:
        saved["device"] = device
    return from_dict(saved)


def _plan_seeds_resume(out: Path, seeds_file: dict, device: str | None) -> Plan:
    """Finished seeds are kept as they are, an interrupted one resumes, the rest start."""
    base = _resumed_config({"config": seeds_file["config"]}, device)
    runs = []
    for s in seeds_file["seeds"]:
        d = out / f"seed-{s}"
        r = Planned(replace(base, seed=s, out=str(d)), d, results=finished_results(d))
        if r.results is None and (d / "checkpoints" / "last.pt").is_file():
            r.state = engine.load_resume_state(d)
            rundir.check_config_unedited(d, r.state["config"])
            r.cfg = _resumed_config(r.state, device)
        runs.append(r)
    return Plan(out=out, runs=runs, resume=True, seeds=list(seeds_file["seeds"]))


def _absolute(path: str) -> str:
    """`path` made absolute (against the working directory, ~ expanded); as given when ~user is unknown."""
    try:
        return str(Path(path).expanduser().absolute())
    except RuntimeError:
        return str(Path(path).absolute())


def plan_new(cfg: Config, *, seeds: list[int] | None = None, overwrite: bool = False, world=None,
             log: Callable[[str], None] = lambda m: None) -> Plan:
    """A new run (or one per seed under out/seed-N), or a torchrun restart's continuation of one."""
    world = world or distributed.World()
    # The run records where its data is as an absolute path: `evaluate RUN` works from any directory.
    cfg = replace(cfg, data_dir=_absolute(cfg.data_dir))
    out = Path(distributed.on_main(lambda: default_out(cfg), world))
    restarting = distributed.on_main(lambda: distributed.is_restart_of(out), world)
    if seeds:
        runs = [Planned(replace(cfg, seed=s, out=str(out / f"seed-{s}")), out / f"seed-{s}") for s in seeds]
    else:
        runs = [Planned(cfg, out)]
    plan = _claimed(lambda: Plan(out=out, runs=runs, restarting=restarting, overwrite=overwrite, seeds=seeds),
                    out, world, command=f"train --out {out}", overwrite=overwrite, resume=restarting)
    try:
        if restarting:  # torchrun --max-restarts brought us back: continue from the last checkpoints
            for r in plan.runs:
                r.state = distributed.on_main(lambda r=r: restart_state(r.run_dir, r.cfg), world)
                log(f"torchrun restart {distributed.restart_count()}: " + (
                    f"resuming {r.run_dir} from epoch {r.state['epoch']} batch {r.state['batch']} "
                    "(checkpoints/last.pt)" if r.state else f"no checkpoint in {r.run_dir} yet; starting it again"))
        elif distributed.max_restarts() > 0 and not cfg.out:
            log("warning: torchrun --max-restarts without --out: the default run directory is named "
                "after the start time, so a restart cannot find it; pass --out to resume on restarts")
    except BaseException:
        plan.release(refused=True)
        raise
    return plan


# --------------------------------------------------------------------------------- the runs
def train(cfg: Config | None = None, *, resume: str | Path | None = None, device: str | None = None,
          seeds: list[int] | None = None, overwrite: bool = False, world=None, progress=None,
          on_result: Callable[[dict, Path], None] | None = None) -> Plan:
    """Train `cfg` (one run per seed with seeds), or continue the run in `resume`; returns the plan with
    every run's results (and the seeds' summary). on_result(results, run_dir): after each run, rank 0.

    The run directory is claimed first (checked, created, locked) and held to the end; only then is
    the data loaded. A --resume of a finished run changes nothing and returns with `finished` set."""
    world = world or distributed.world_from_env()
    progress = progress or Silent()
    with distributed.process_group(world):  # first: every decision below is made once, on rank 0, and shared
        if resume is not None:
            plan = plan_resume(resume, device=device, world=world)
        else:
            plan = plan_new(cfg, seeds=seeds, overwrite=overwrite, world=world, log=progress.log)
        if plan.finished:
            progress.log(f"{plan.out} is finished: {plan.finished}; nothing to resume, nothing changed "
                         "(to train longer, start a new run with more --epochs)")
            return plan
        try:
            _train_plan(plan, world, progress, on_result)
        except BaseException:
            plan.release()
            raise
        finally:
            progress.close()  # a stop mid-epoch: the bar is cleared, so the stop message starts its own line
        plan.release()
    return plan


def _train_plan(plan: Plan, world, progress, on_result) -> None:
    for note in plan.claim.notes() if plan.claim is not None else []:
        progress.log(note)
    first = plan.runs[0].cfg
    runtime.configure_threads()
    device = engine.setup(first, world)  # the device, flags and the world's refusals, before any data is loaded
    first_line = _FirstLine(progress.log, f"device: {device_description(device)}")
    data = _load_data(first, world, first_line.log)
    n_train = check_split_sizes(len(data.train_y), first.val_size, first.train_subset)  # before the header
    if world.is_main:
        take_run_dir(plan)
        first_line.flush()
        _announce(plan, n_train, world, progress, cpu_advice(first, data.num_classes, n_train, device),
                  bf16_hint(first.amp, device))
    for r in plan.runs:
        if r.results is None:
            if plan.claim is not None:
                plan.claim.check_alive()
            _train_one(r, data, world, progress, on_result)
    if plan.seeds and world.is_main:
        plan.claim.check_alive()
        plan.summary = write_seed_summary(plan.out, [(r.cfg.seed, r.run_dir, r.results) for r in plan.runs])
        if first.report:
            build_report(plan.out, progress.log)


class _FirstLine:
    """The device line comes first: before the first line data loading prints, else (`flush`) before the
    header, once the sizes are checked; so a refused --val-size is the only line of its run."""

    def __init__(self, log: Callable[[str], None], line: str):
        self._log, self._line = log, line

    def flush(self) -> None:
        if self._line is not None:
            line, self._line = self._line, None
            self._log(line)

    def log(self, message: str) -> None:
        self.flush()
        self._log(message)


def _announce(plan: Plan, n_train: int, world, progress, advice: str | None, hint: str | None) -> None:
    """The run's header, the CPU advice and bf16 hint, where a resume continues, what the schedule changed for a
    short run (stderr: the run's record on stdout is its epochs and result)."""
    first = plan.runs[0]
    progress.log(_describe(first.cfg, n_train, world, plan.out))
    resuming = next((_resuming(r) for r in plan.runs if r.state is not None), None) if plan.resume else None
    for line in (advice, hint, resuming, *schedule_plan(first.cfg).notes):
        if line:
            progress.log(line)


def _resuming(r: Planned) -> str | None:
    """`resuming RUN at epoch E, batch B (...)`; None for a damaged checkpoint (the trainer names its fault)."""
    try:
        st = r.state
        epoch, batch, step = int(st["epoch"]), int(st["batch"]), int(st["step"])
        seconds = float(st["elapsed"]) + float(st["partial"]["seconds"])
    except (KeyError, TypeError, ValueError):
        return None
    if epoch >= r.cfg.epochs:
        return f"resuming {r.run_dir}: all {plural(r.cfg.epochs, 'epoch')} are trained; finishing the run"
    return (f"resuming {r.run_dir} at epoch {epoch + 1}, batch {batch + 1} "
            f"(after step {step}, {seconds:.0f}s trained so far)")


def _train_one(r: Planned, data, world, progress, on_result) -> None:
    r.results = engine.fit(r.cfg, data, r.run_dir, progress=progress, resume_state=r.state, world=world)
    if world.is_main:
        if on_result is not None:
            on_result(r.results, r.run_dir)
        if r.cfg.report:
            build_report(r.run_dir, progress.log, data)


def _load_data(cfg: Config, world, log):
    return distributed.main_first(lambda: data_mod.load_dataset(
        cfg.dataset, cfg.data_dir, download=cfg.download and cfg.dataset != "folder", log=log), world)


def _describe(cfg: Config, n_train: int, world, out: Path) -> str:
    return (f"{cfg.model} on {cfg.dataset}: {n_train} train / {cfg.val_size} val images, "
            f"{plural(cfg.epochs, 'epoch')}, global batch {cfg.batch_size} "
            f"= {cfg.batch_size // cfg.accum_steps // max(world.size, 1)} per device x {world.size} "
            f"device(s) x {cfg.accum_steps} accumulation step(s), preset {cfg.preset} -> {out}")


def build_report(run_dir: Path, log: Callable[[str], None], data=None) -> None:
    """RUN_DIR/report; a failure is a warning: the training result stands."""
    try:
        from .report import build_report as build
    except ImportError:
        return
    stopped = (lambda s: f"stopped by {signal_name(s)} during the report: results.json and the checkpoints are "
               f"complete; `resnet-cifar report {run_dir}` builds it again")
    try:
        with signals_interrupt(stopped):
            build(run_dir, images=data, log=log)  # the images in memory: no reload; it names its index.html
    except Interrupted:
        raise
    except Exception as e:  # the training result stands even if the report fails
        log(f"warning: the report could not be built ({type(e).__name__}: {e}); "
            f"retry with `resnet-cifar report {run_dir}`")


def write_seed_summary(out: Path, all_results) -> dict:
    """summary.json over (seed, run_dir, results): test accuracy (else best validation) mean and std."""
    metric = "test_acc" if all(r["test_acc"] is not None for _, _, r in all_results) else "best_val_acc"
    values = [r[metric] for _, _, r in all_results if r[metric] is not None]
    summary = {
        "format": ckpt.FORMAT, "metric": metric, "seeds": [s for s, _, _ in all_results],
        "runs": [{"seed": s, "dir": d.name, "test_acc": r["test_acc"], "best_val_acc": r["best_val_acc"]}
                 for s, d, r in all_results],
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }
    engine.write_json(out / "summary.json", summary)
    return summary
