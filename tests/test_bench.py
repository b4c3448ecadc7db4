"""`resnet-cifar bench` end to end on a tiny model: keys and positive numbers, no timing targets
(those belong to benchmarks/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from resnet_cifar import bench, runtime
from resnet_cifar.cli import main
from resnet_cifar.engine import step as engine_step
from resnet_cifar.errors import UsageError

TINY = dict(model="resnet20", width=0.125, batch_size=8, steps=2, warmup=1, windows=2, eval_images=16,
            device="cpu")
KEYS = ("train_img_s", "baseline_train_img_s", "ratio", "eval_img_s", "baseline_eval_img_s", "device",
        "model", "batch_size", "torch_version", "cpu_name", "amp", "compile")


@pytest.fixture(autouse=True)
def _keep_one_thread(monkeypatch):
    # The CLI sets torch threads to all cores; tests share one process and run with one thread.
    monkeypatch.setattr(runtime, "configure_threads", lambda: torch.get_num_threads())


def _check(result: dict, baseline: bool = True) -> None:
    for key in KEYS:
        assert key in result, key
    assert result["train_img_s"] > 0 and result["eval_img_s"] > 0
    assert result["device"] == "cpu" and result["amp"] == "off" and result["compile"] == "off"
    assert result["torch_version"] == torch.__version__
    assert len(result["train_windows_img_s"]) == 2
    if baseline:
        assert result["baseline_train_img_s"] > 0 and result["baseline_eval_img_s"] > 0 and result["ratio"] > 0
        assert result["baseline_error"] is None


def test_bench_runs_ours_and_the_baseline():
    result = bench.run_bench(**TINY, baseline_workers=0)
    _check(result)
    assert result["baseline_workers"] == 0
    text = bench.format_table(result)
    assert "ours" in text and "baseline" in text and "x" in text


def test_bench_times_the_real_engine_step(monkeypatch):
    calls = []
    real = engine_step.train_step

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(engine_step, "train_step", counting)
    bench.run_bench(**TINY, baseline=False)
    assert len(calls) == TINY["warmup"] + TINY["steps"]


def test_on_the_cpu_ours_runs_with_host_memory_kept_and_the_baseline_with_glibcs_defaults(monkeypatch):
    state = {"keep": None}
    seen = {"ours": set(), "baseline": set()}
    real_keep = runtime.keep_host_memory

    def keep(keep=True, device=None):
        if device is None or device.type == "cpu":
            state["keep"] = keep
        return real_keep(keep, device)

    monkeypatch.setattr(runtime, "keep_host_memory", keep)
    real_ours, real_loss = engine_step.train_step, torch.nn.CrossEntropyLoss.forward

    def ours_step(*a, **k):
        seen["ours"].add(state["keep"])
        return real_ours(*a, **k)

    def baseline_loss(self, *a, **k):  # the tutorial loop's criterion; ours calls F.cross_entropy
        seen["baseline"].add(state["keep"])
        return real_loss(self, *a, **k)

    monkeypatch.setattr(engine_step, "train_step", ours_step)
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", baseline_loss)
    result = bench.run_bench(**TINY, baseline_workers=0)
    assert seen == {"ours": {True}, "baseline": {False}}
    assert result["host_memory_kept"] is True
    assert "host memory kept (ours)" in bench.format_table(result)


def test_cli_json_prints_one_object_with_positive_numbers(capsys):
    argv = ["bench", "--model", "resnet20", "--width", "0.125", "--batch-size", "8", "--steps", "2",
            "--warmup", "1", "--windows", "2", "--eval-images", "16", "--device", "cpu", "--workers", "1", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip()
    result = json.loads(out)
    assert "\n" not in out
    _check(result)
    assert result["baseline_workers"] == 1


def test_cli_table_without_baseline(capsys):
    argv = ["bench", "--model", "resnet20", "--width", "0.125", "--batch-size", "8", "--steps", "1",
            "--warmup", "0", "--windows", "1", "--eval-images", "8", "--device", "cpu", "--no-baseline"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train" in out and "n/a" in out


def test_missing_torchvision_still_reports_ours_and_says_how_to_install(monkeypatch):
    monkeypatch.setattr(bench, "_have_torchvision", lambda: False)
    result = bench.run_bench(**TINY)
    _check(result, baseline=False)
    assert result["baseline_train_img_s"] is None and result["ratio"] is None
    assert "resnet-cifar[vision]" in result["baseline_error"]


def test_missing_torchvision_with_baseline_required_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(bench, "_have_torchvision", lambda: False)
    with pytest.raises(UsageError, match=r"resnet-cifar\[vision\]"):
        bench.run_bench(**TINY, baseline=True)
    assert main(["bench", "--device", "cpu", "--baseline", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "resnet-cifar[vision]" in err and err.count("\n") == 1


def test_usage_errors_are_one_line(capsys):
    assert main(["bench", "--data-dir", "somewhere"]) == 2
    assert main(["bench", "--device", "cpu", "--steps", "0"]) == 2
    assert main(["bench", "--device", "cpu", "--model", "nope", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err


def test_bench_on_a_real_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "train" / c / f"{i}.png")
    result = bench.run_bench(**TINY, dataset="folder", data_dir=str(tmp_path), baseline_workers=0)
    _check(result)
    assert result["data"].startswith("folder:")
    assert result["eval_images"] == 16
