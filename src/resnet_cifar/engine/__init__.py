"""Training and evaluation: `fit(cfg, data, run_dir) -> results`. No printing, no argparse.

The rooms (see docs/architecture.md):
  setup.py     the process-wide side effects, one call by the entry point (device, seeds, flags, group)
  parts.py     splits, loader, model, optimizer, schedule, scaler, autocast, SWA/EMA, DDP/compile
  step.py      the public step: micro-batches, autocast, scaler, no_sync, the loss -> Sums
  sums.py      Sums: (loss_sum, correct, count) on the device, with add / all_reduce / as_dict
  evaluate.py  evaluate() (+ flip TTA), Evaluator, evaluate_checkpoint()
  state.py     RunState (position, history, best, time to accuracy, ...) + the resume validation
  best.py      BestWeights: which of raw / EMA / SWA is best.pt and the result
  trainer.py   Trainer: the epoch loop over the parts
  results.py   metrics.csv, TensorBoard scalars, results.json, predictions.npz
  signals.py   StopFlag: SIGINT/SIGTERM/SIGHUP -> checkpoint, then stop

The test split is never used for any decision: the best checkpoint, the plateau schedule and the
SWA/EMA choice all look at the validation split only.
"""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint as ckpt
from .. import distributed as distm
from ..config import Config
from ..data import Dataset
from ..errors import UsageError
from .best import BestWeights
from .evaluate import Evaluator, evaluate, evaluate_checkpoint
from .parts import Parts, Splits, augment_from, build_parts, make_optimizer, make_splits, param_groups
from .results import METRIC_FIELDS, write_json, write_metrics
from .setup import setup
from .signals import StopFlag
from .state import THRESHOLDS, RunState, validate_resume
from .step import StepOutput, StepSetup, guarded_step, train_step
from .sums import Sums
from .trainer import Trainer

__all__ = ["BestWeights", "Evaluator", "METRIC_FIELDS", "Parts", "RunState", "Splits", "StepOutput", "StepSetup",
           "StopFlag", "Sums", "THRESHOLDS", "Trainer", "augment_from", "build_parts", "evaluate",
           "evaluate_checkpoint", "fit", "guarded_step", "load_resume_state", "make_optimizer", "make_splits",
           "param_groups", "prepare_run_dir", "setup", "train_step", "validate_resume", "write_json",
           "write_metrics"]


def prepare_run_dir(run_dir: Path, cfg: Config) -> None:
    from ..config import dump_yaml

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")


def fit(cfg: Config, data: Dataset, run_dir: str | Path, *, progress=None, resume_state: dict | None = None,
        world: distm.World | None = None) -> dict:
    """Train (or continue) one run into run_dir; returns the results dict also written to results.json.

    An entry point: it makes the process-wide settings (`setup`) before it builds the run.
    """
    from ..data.stats import check_trainable

    check_trainable(data)    # one class or a zero std: refused before anything is built or written
    run_dir = Path(run_dir)
    world = world or distm.World()
    setup(cfg, world)
    trainer = Trainer(cfg, data, run_dir, progress=progress, resume_state=resume_state, world=world)
    if world.is_main:  # after the Trainer's checks: a refused config leaves no run directory behind
        prepare_run_dir(run_dir, cfg)
        trainer.dir_made = True
    return trainer.run()


def load_resume_state(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UsageError(f"--resume {str(run_dir)!r}: no checkpoints/last.pt there; pass the run directory of "
                         "an earlier `resnet-cifar train`")
    return ckpt.load(path)
