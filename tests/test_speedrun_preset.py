"""The `speedrun` preset: it resolves to airbench94's recipe, trains on tiny data, counts its compute
by hand, resumes bitwise; and the CPU-aware start (device line, long-run advice, progress lines)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from helpers import CrashAfter, tiny_dataset
from resnet_cifar.cli import main
from resnet_cifar.config import resolve
from resnet_cifar.data.loader import Augment, normalize, plan_epoch
from resnet_cifar.engine import build_parts, fit, load_resume_state
from resnet_cifar.models.speedrun import whitening_weights
from resnet_cifar.optim import sgd_hyperparameters
from resnet_cifar.progress import Console

# speedrun_resnet at width 0.125 (widths 8 / 32 / 32, 3 classes), MACs by hand (as in test_speedrun_parts)
TINY_MACS = (31 * 31 * 24 * 3 * 2 * 2 + 31 * 31 * 8 * 24 * 9 + 15 * 15 * 8 * 8 * 9 + 15 * 15 * 32 * 8 * 9
             + 7 * 7 * 32 * 32 * 9 + 7 * 7 * 32 * 32 * 9 + 3 * 3 * 32 * 32 * 9 + 32 * 3)
TINY = dict(width=0.125, dataset="folder", device="cpu", epochs=2, batch_size=32, val_size=32, report=False,
            compile="off")


def speedrun(**kw):
    return resolve(flag_values={**TINY, **kw}, preset="speedrun")


def test_preset_is_airbench94s_recipe():
    cfg = resolve(preset="speedrun")
    lr, wd = sgd_hyperparameters(1024)
    # airbench94's recipe, its net narrowed to 0.75 and run for 18 epochs (benchmarks/README.md S23)
    assert (cfg.model, cfg.width, cfg.epochs, cfg.batch_size, cfg.drop_last) == ("speedrun_resnet", 0.75, 18, 1024,
                                                                               False)
    assert cfg.lr == pytest.approx(lr) and cfg.weight_decay == pytest.approx(wd)
    assert (cfg.momentum, cfg.nesterov, cfg.label_smoothing, cfg.scheduler) == (0.85, True, 0.2, "triangle")
    assert (cfg.bias_lr_scale, cfg.whiten, cfg.whiten_bias_epochs, cfg.lookahead) == (64.0, True, 3, True)
    assert (cfg.crop_padding, cfg.pad_mode, cfg.flip, cfg.alt_flip) == (2, "reflect", True, True)
    assert (cfg.tta, cfg.tta_mode, cfg.channels_last, cfg.amp, cfg.compile) == (True, "flip_translate", True,
                                                                                 "auto", "off")
    assert cfg.ema == 0 and not cfg.swa


def test_parts_whiten_from_the_training_images_and_group_the_biases():
    data = tiny_dataset(num_classes=3)
    cfg = speedrun()
    parts = build_parts(cfg, data, torch.device("cpu"))
    m = parts.model
    expected = whitening_weights(normalize(parts.splits.train_x, data.mean, data.std, channels_last=False))
    assert torch.allclose(m.whiten.weight, expected) and not m.whiten.weight.requires_grad
    scales = sorted((g["lr_scale"], g.get("until_epoch", -1)) for g in parts.optimizer.param_groups)
    assert scales == [(1.0, -1), (1.0, 3), (64.0, -1)]
    assert parts.lookahead is not None and parts.macs == TINY_MACS
    learnt = build_parts(speedrun(whiten=False), data, torch.device("cpu")).model
    assert learnt.whiten.weight.requires_grad and not torch.allclose(learnt.whiten.weight, expected)


def test_alternating_flips_in_the_loader_plan():
    aug = Augment(crop_padding=2, flip=True, alt_flip=True)
    per_image = []
    for epoch in (1, 2, 3):
        plan = plan_epoch(50, 7, epoch, aug)
        img = torch.empty(50, dtype=torch.bool)
        img[plan.order] = plan.flip
        per_image.append(img)
        indep = plan_epoch(50, 7, epoch, Augment(crop_padding=2, flip=True))
        assert torch.equal(plan.dx, indep.dx) and torch.equal(plan.order, indep.order)   # only flips change
    assert torch.equal(per_image[1], ~per_image[0]) and torch.equal(per_image[2], per_image[0])


def test_speedrun_trains_reports_compute_and_tta(png_folder, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["train", "--preset", "speedrun", "--dataset", "folder", "--data-dir", str(png_folder), "--width",
             "0.125", "--epochs", "2", "--batch-size", "16", "--val-size", "6", "--drop-last", "--device", "cpu",
             "--no-report", "--out", str(out)]
    assert main(flags) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("device: CPU ")
    r = json.loads((out / "results.json").read_text())
    assert r["model"] == "speedrun_resnet" and r["num_train"] == 30 and r["eval_split"] == "test"
    assert r["macs_per_image"] == TINY_MACS
    # MACs x 2 x 3 x images seen: --drop-last leaves out the last, smaller batch, so one batch of 16 an epoch
    assert r["train_flops"] == TINY_MACS * 2 * 3 * 16 * 2
    # validation (6 images, 2 epochs) + the test split once (12 images) + its 6 TTA views
    assert r["eval_flops"] == TINY_MACS * 2 * (6 * 2 + 12 * (1 + 6))
    assert set(r["flops_to_acc"]) == set(r["time_to_acc"]) == {"0.90", "0.93", "0.94", "0.95"}
    assert all((r["flops_to_acc"][k] is None) == (r["time_to_acc"][k] is None) for k in r["time_to_acc"])
    assert r["test_acc_tta"] is not None and r["steps"] == 2
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(row["train_flops"]) for row in rows] == [TINY_MACS * 6 * 16 * e for e in (1, 2)]


def test_speedrun_resumes_bitwise(tmp_path):
    """Mid-epoch, across a lookahead update (every 5 steps) and the whitening bias' last epoch."""
    data = tiny_dataset(num_classes=3)
    cfg = speedrun(epochs=4, whiten_bias_epochs=1, deterministic=True, checkpoint_every=3, batch_size=24)
    fit(cfg, data, tmp_path / "full")
    with pytest.raises(RuntimeError, match="crash"):
        fit(cfg, data, tmp_path / "cut", progress=CrashAfter(steps=7))       # last.pt at step 6
    state = load_resume_state(tmp_path / "cut")
    assert state["step"] == 6 and state["lookahead"] is not None
    fit(cfg, data, tmp_path / "cut", resume_state=state)
    load = lambda d: torch.load(d / "checkpoints" / "last.pt", weights_only=True)
    a, b = load(tmp_path / "full"), load(tmp_path / "cut")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["lookahead"]["slow"][k], b["lookahead"]["slow"][k]) for k in a["lookahead"]["slow"])
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "full", tmp_path / "cut"))
    assert (ra["test_acc"], ra["train_flops"], ra["eval_flops"]) == (rb["test_acc"], rb["train_flops"],
                                                                      rb["eval_flops"])


def test_long_cpu_recipe_is_told_within_the_first_lines(png_folder, tmp_path, capsys, monkeypatch):
    import resnet_cifar.estimate as est

    monkeypatch.setattr(est, "probe_flops_per_second", lambda *a, **k: 1e3)   # a very slow CPU: days for this run
    flags = ["train", "--dataset", "folder", "--data-dir", str(png_folder), "--model", "resnet20", "--width", "0.25",
             "--epochs", "1", "--batch-size", "16", "--val-size", "6", "--scheduler", "cosine", "--device", "cpu",
             "--no-swa", "--no-report", "--out", str(tmp_path / "run")]
    assert main(flags) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("device: CPU ")
    advice = next(i for i, line in enumerate(lines) if "this recipe needs about" in line)
    described = next(i for i, line in enumerate(lines) if line.startswith("resnet20 on folder: "))
    assert advice == described + 1 and f"--preset speedrun --dataset folder --data-dir {png_folder}" in lines[advice]
    assert est.SPEEDRUN_MEASURED in lines[advice]   # the measured time and accuracy


def test_native_bf16_cpu_is_told_after_the_header(png_folder, tmp_path, capsys, monkeypatch):
    import resnet_cifar.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_bf16_instructions", lambda: ["AVX512_BF16", "AMX"])
    flags = ["train", "--dataset", "folder", "--data-dir", str(png_folder), "--model", "resnet20", "--width", "0.25",
             "--epochs", "1", "--batch-size", "16", "--val-size", "6", "--scheduler", "cosine", "--device", "cpu",
             "--no-swa", "--no-report"]
    assert main(flags + ["--out", str(tmp_path / "auto")]) == 0
    lines = capsys.readouterr().err.splitlines()
    hint = [i for i, line in enumerate(lines) if "native bf16 (AVX512_BF16, AMX): --amp bf16" in line]
    described = next(i for i, line in enumerate(lines) if line.startswith("resnet20 on folder: "))
    assert len(hint) == 1 and hint[0] > described
    assert main(flags + ["--amp", "off", "--out", str(tmp_path / "off")]) == 0   # a chosen fp32: not repeated
    assert "native bf16" not in capsys.readouterr().err


def test_non_tty_progress_line_every_minute():
    now = [0.0]
    stream = io.StringIO()
    c = Console(stream=stream, bar=False, line_every=60, clock=lambda: now[0])
    c.epoch_start(1, 3, 100)
    sums = torch.tensor([5.0, 3.0, 10.0])
    for t in (10.0, 59.0, 61.0, 100.0, 122.0):
        now[0] = t
        c.step(10, sums)
    lines = stream.getvalue().splitlines()
    assert lines == [lines[0], lines[1]] and "epoch 1/3 step 3/100: loss 0.5000 acc 0.3000" in lines[0]
    assert "step 5/100" in lines[1]


def test_step_scales_bias_lr_and_stops_the_whitening_bias_after_its_epochs():
    from resnet_cifar.engine import train_step

    data = tiny_dataset(num_classes=3)
    parts = build_parts(speedrun(whiten_bias_epochs=3), data, torch.device("cpu"))
    x, y = next(iter(parts.loader))
    bias = parts.model.whiten.bias
    for epoch, moves in ((2, True), (3, False)):
        parts.step.epoch = epoch
        before = bias.detach().clone()
        train_step(parts.step, x, y, len(y), lr=0.1)
        assert (not torch.equal(bias, before)) == moves, epoch
        lrs = sorted(g["lr"] for g in parts.optimizer.param_groups)
        assert lrs == pytest.approx([0.0, 0.1, 6.4] if not moves else [0.1, 0.1, 6.4])


def test_eval_images_count_every_evaluation_pass():
    from types import SimpleNamespace as NS

    from resnet_cifar.engine.results import eval_images

    splits = NS(train_y=torch.zeros(100), val_y=torch.zeros(10), test_y=torch.zeros(20))
    plain = NS(tta=False, tta_mode="flip", ema=0.0, swa=False)
    assert eval_images(plain, splits, 3) == 10 * 3 + 20
    both = NS(tta=True, tta_mode="flip_translate", ema=0.99, swa=True)
    assert eval_images(both, splits, 3) == 10 * 3 * 2 + (100 + 10) + 20 * (1 + 6)
    no_test = NS(train_y=torch.zeros(100), val_y=torch.zeros(10), test_y=None)
    assert eval_images(NS(tta=True, tta_mode="flip", ema=0.0, swa=False), no_test, 2) == 10 * 2 + 10 * 3


def _ddp_worker(rank, world_size, port, tmp):
    import os

    from resnet_cifar import distributed as distm
    from resnet_cifar import engine

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = distm.World(rank=rank, local_rank=rank, size=world_size, local_size=world_size)
    cfg = speedrun(epochs=3, batch_size=16, val_size=8, whiten_bias_epochs=1, drop_last=True)
    engine.setup(cfg, world)
    trainer = engine.Trainer(cfg, tiny_dataset(n_per_class=12, num_classes=4, test_per_class=0), f"{tmp}/ddp",
                             world=world)
    stop = engine.StopFlag()
    # 40 images, batch 16, --drop-last: 2 full steps per epoch (8 images per rank), 6 in all: a lookahead
    # update at step 5, the bias frozen from epoch 2
    for e in (1, 2, 3):
        trainer.train_epoch(e, stop)
        trainer.state.end_epoch(e)
    torch.save({"model": trainer.model.state_dict(), "step": trainer.state.step}, f"{tmp}/rank{rank}.pt")
    distm.barrier(world)
    distm.shutdown(world)


@pytest.mark.slow
def test_speedrun_under_ddp_keeps_the_replicas_identical(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 6
    # the weights: whitening from the same images, the same groups and lookahead on every rank (BN running
    # statistics are each rank's own after its last forward, as in any DDP run; rank 0 saves them)
    weights = [k for k in r0["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(weights) == 21          # whiten (2) + 3 groups x (conv, BN w+b, conv, BN w+b) + linear
    for k in weights:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
