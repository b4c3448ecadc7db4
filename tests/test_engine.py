"""Training behaviour on tiny models and synthetic data with a learnable signal (CPU, seconds)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn as nn

from helpers import TINY, tiny_dataset
from resnet_cifar import checkpoint as ckpt
from resnet_cifar import engine
from resnet_cifar.config import resolve
from resnet_cifar.engine import Trainer, evaluate_checkpoint, fit, load_resume_state
from resnet_cifar.progress import Silent


def cfg_for(**kw):
    return resolve(flag_values={**TINY, **kw})


def final_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_loss_falls_and_accuracy_rises_far_above_chance(tmp_path):
    data = tiny_dataset()
    results = fit(cfg_for(epochs=4), data, tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert results["best_val_acc"] > 0.6           # chance is 0.25
    assert results["test_acc"] > 0.6
    assert results["eval_split"] == "test"


def test_run_directory_contract(tmp_path):
    run = tmp_path / "run"
    results = fit(cfg_for(epochs=1), tiny_dataset(), run)
    for name in ("config.yaml", "metrics.csv", "results.json", "predictions.npz",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "results.json").read_text())
    for key in ("test_acc", "test_loss", "best_val_acc", "epochs", "train_seconds", "model", "params",
                "device", "torch_version", "seed", "time_to_acc"):
        assert key in saved, key
    assert saved == json.loads(json.dumps(results))
    header = next(csv.reader(open(run / "metrics.csv")))
    assert header == engine.METRIC_FIELDS
    try:
        import tensorboard  # noqa: F401 - an optional extra; the test venv has it
    except ImportError:
        return
    assert list((run / "tensorboard").glob("events.out.tfevents.*")), "TensorBoard events missing"


def test_checkpoints_load_with_weights_only_and_carry_the_config(tmp_path):
    fit(cfg_for(epochs=1), tiny_dataset(), tmp_path / "run")
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "run" / "checkpoints" / name, weights_only=True)
        assert state["config"]["model"] == "resnet20"
        assert set(state["rng"]) >= {"torch", "numpy", "python"}


def test_evaluate_matches_the_accuracy_recorded_during_training(tmp_path):
    data = tiny_dataset()
    results = fit(cfg_for(epochs=2), data, tmp_path / "run")
    state = ckpt.load(tmp_path / "run" / "checkpoints" / "best.pt")
    val = evaluate_checkpoint(state, data, split="val", device="cpu")
    assert val["acc"] == pytest.approx(results["best_val_acc"])
    test = evaluate_checkpoint(state, data, split="test", device="cpu")
    assert test["acc"] == pytest.approx(results["test_acc"])
    assert test["loss"] == pytest.approx(results["test_loss"], rel=1e-5)


def test_bf16_autocast_runs_on_cpu(tmp_path):
    results = fit(cfg_for(epochs=1, amp="bf16"), tiny_dataset(), tmp_path / "run")
    assert results["amp"] == "bf16"
    assert results["test_loss"] == pytest.approx(results["test_loss"])  # finite


class _NoBN(nn.Module):
    """A model without batch norm: a larger batch and accumulated micro-batches must agree."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_gradient_accumulation_equals_the_large_batch(tmp_path, monkeypatch):
    def no_bn(name, num_classes=10, width=1.0, zero_init_residual=False):
        torch.manual_seed(0)
        return _NoBN(num_classes)

    import resnet_cifar.models

    monkeypatch.setattr(engine.parts, "build_model", no_bn)
    monkeypatch.setattr(resnet_cifar.models, "build_model", no_bn)  # the final test evaluation
    data = tiny_dataset(n_per_class=25)  # 100 images, 68 train: an uneven last batch of 4
    a = fit(cfg_for(epochs=2, batch_size=32, accum_steps=1, label_smoothing=0.1), data, tmp_path / "a")
    b = fit(cfg_for(epochs=2, batch_size=32, accum_steps=4, label_smoothing=0.1), data, tmp_path / "b")
    wa, wb = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    assert a["steps"] == b["steps"]


def test_swa_bn_update_changes_running_stats_and_is_a_candidate(tmp_path):
    cfg = cfg_for(epochs=3, swa=True, swa_start=2, swa_lr=0.02)
    trainer = Trainer(cfg, tiny_dataset(), tmp_path / "run")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    bn = next(m for m in trainer.swa.module.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    trainer.update_swa_bn()
    assert not torch.equal(before, bn.running_mean)
    results = fit(cfg, tiny_dataset(), tmp_path / "run2")
    assert results["candidates"]["swa"] is not None
    rows = list(csv.DictReader(open(tmp_path / "run2" / "metrics.csv")))
    assert rows[-1]["swa_val_acc"] != "" and rows[0]["swa_val_acc"] == ""
    assert float(rows[-1]["lr"]) == pytest.approx(0.02)  # the SWA phase runs at swa_lr


def test_ema_is_evaluated_every_epoch(tmp_path):
    results = fit(cfg_for(epochs=2, ema=0.9), tiny_dataset(), tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert all(r["ema_val_acc"] != "" for r in rows)
    assert results["candidates"]["ema"] is not None


class _CrashAfter(Silent):
    """Simulates a crash: raises after the given epoch has been checkpointed, or after N steps."""

    def __init__(self, epoch=None, steps=None):
        self.epoch, self.steps, self.seen = epoch, steps, 0

    def step(self, images, sums):
        self.seen += 1
        if self.steps is not None and self.seen == self.steps:
            raise RuntimeError("crash")

    def epoch_end(self, row):
        if row["epoch"] == self.epoch:
            raise RuntimeError("crash")


@pytest.mark.parametrize("where", ["epoch_boundary", "mid_epoch"])
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, where):
    data = tiny_dataset()
    # plateau + EMA + label smoothing: every piece of state must survive the resume.
    cfg = cfg_for(epochs=3, deterministic=True, scheduler="plateau", plateau_patience=0, ema=0.9,
                  checkpoint_every=2 if where == "mid_epoch" else 0)
    fit(cfg, data, tmp_path / "full")
    crash = _CrashAfter(epoch=1) if where == "epoch_boundary" else _CrashAfter(steps=7)  # ckpt at step 6
    with pytest.raises(RuntimeError, match="crash"):
        fit(cfg, data, tmp_path / "cut", progress=crash)
    state = load_resume_state(tmp_path / "cut")
    assert (state["epoch"], state["batch"]) == ((1, 0) if where == "epoch_boundary" else (1, 2))
    fit(cfg, data, tmp_path / "cut", resume_state=state)
    wa, wb = final_weights(tmp_path / "full"), final_weights(tmp_path / "cut")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra = list(csv.DictReader(open(tmp_path / "full" / "metrics.csv")))
    rb = list(csv.DictReader(open(tmp_path / "cut" / "metrics.csv")))
    keys = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc")
    assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb]


def test_resume_refuses_a_checkpoint_without_rng_state(tmp_path):
    data = tiny_dataset()
    cfg = cfg_for(epochs=2)
    with pytest.raises(RuntimeError):
        fit(cfg, data, tmp_path / "run", progress=_CrashAfter(epoch=1))
    state = load_resume_state(tmp_path / "run")
    del state["rng"]
    from resnet_cifar.errors import CheckpointError

    with pytest.raises(CheckpointError, match="rng"):
        fit(cfg, data, tmp_path / "run", resume_state=state)


def test_time_to_accuracy_is_recorded(tmp_path):
    results = fit(cfg_for(epochs=3), tiny_dataset(), tmp_path / "run")
    t = results["time_to_acc"]
    assert set(t) == {"0.90", "0.93", "0.94", "0.95"}
    if results["best_val_acc"] >= 0.9:
        assert 0 < t["0.90"] <= results["train_seconds"]
