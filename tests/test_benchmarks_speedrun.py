"""benchmarks/airbench_cpu.py (the harness pieces that need no airbench) and benchmarks/plot_compute.py."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch

from resnet_cifar.cli import main as cli_main
from resnet_cifar.compute import forward_macs, train_flops
from resnet_cifar.models import build_model

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def airbench_cpu():
    return _load("airbench_cpu")


@pytest.fixture(scope="module")
def plot_compute():
    return _load("plot_compute")


def test_airbench_dict_is_its_cifarloader_format(airbench_cpu):
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    d = airbench_cpu.airbench_dict(x, torch.tensor([0, 1, 2, 1, 0]), ["a", "b", "c"])
    assert d["images"].shape == (5, 32, 32, 3) and d["images"].dtype == torch.uint8
    assert torch.equal(d["images"][2, 4, 7], x[2, :, 4, 7])            # pixel (4, 7) of image 2, all channels
    assert d["labels"].dtype == torch.int64 and d["classes"] == ["a", "b", "c"]


def test_split_is_the_one_train_uses(airbench_cpu, png_folder):
    from resnet_cifar.config import resolve
    from resnet_cifar.data import load_dataset
    from resnet_cifar.engine import make_splits

    train_x, train_y, val_x, val_y, classes = airbench_cpu.load_split(str(png_folder), 6, 3, 12)
    cfg = resolve(flag_values=dict(dataset="folder", data_dir=str(png_folder), val_size=6, seed=3, train_subset=12,
                                   scheduler="cosine"))
    s = make_splits(cfg, load_dataset("folder", png_folder), torch.device("cpu"))
    assert torch.equal(train_x, s.train_x) and torch.equal(train_y, s.train_y)
    assert torch.equal(val_x, s.val_x) and torch.equal(val_y, s.val_y) and len(train_y) == 12


def test_cpu_mapping_patches_and_restores(airbench_cpu):
    class Loader:
        def __init__(self, path, gpu=0, **kw):
            self.device = torch.device(gpu)

    utils = types.SimpleNamespace(CifarLoader=Loader)
    originals = (torch.nn.Module.cuda, torch.nn.Module.half, torch.Tensor.half, torch.cuda.Event)
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="inside"):
        with airbench_cpu.cpu_fp32(utils) as CpuLoader:
            assert lin.half().cuda() is lin and lin.weight.dtype == torch.float32
            assert torch.arange(3, dtype=torch.uint8).half().dtype == torch.float32
            assert utils.CifarLoader("x").device == torch.device("cpu") and CpuLoader is utils.CifarLoader
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            end.record()
            torch.cuda.synchronize()
            assert start.elapsed_time(end) >= 0
            raise RuntimeError("inside")
    assert (torch.nn.Module.cuda, torch.nn.Module.half, torch.Tensor.half, torch.cuda.Event) == originals
    assert utils.CifarLoader is Loader


def test_ours_command_uses_the_same_split(airbench_cpu, tmp_path):
    args = airbench_cpu.parse_args(["--data-dir", "D", "--smoke", "--seed", "4", "--ours-args", "--width 0.5"])
    assert (args.limit, args.val_size, args.epochs, args.batch_size) == (500, 200, 1, 128)
    cmd = airbench_cpu.ours_command(args, tmp_path / "run")
    joined = " ".join(cmd)
    for part in ("--preset speedrun", "--val-size 200", "--seed 4", "--train-subset 500", "--epochs 1",
                 "--data-dir D", "--width 0.5"):
        assert part in joined


def test_plot_compute_on_a_tiny_run(plot_compute, png_folder, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["train", "--dataset", "folder", "--data-dir", str(png_folder), "--model", "resnet20", "--width", "0.25",
             "--epochs", "2", "--batch-size", "16", "--val-size", "6", "--scheduler", "cosine", "--device", "cpu",
             "--no-swa", "--compile", "off", "--no-report", "--tta", "--cutout", "4", "--out", str(run)]
    assert cli_main(flags) == 0
    curve = plot_compute.run_curve(run)
    assert curve["label"].endswith("resnet20 x0.25, 2 epochs, cutout 4")    # what sets the run apart, in its label
    macs = forward_macs(build_model("resnet20", 3, 0.25))
    assert curve["pflop"] == pytest.approx([train_flops(macs, 30 * e) / 1e15 for e in (1, 2)])
    results = json.loads((run / "results.json").read_text())
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    val_col = (run / "metrics.csv").read_text().splitlines()[0].split(",").index("val_acc")
    assert curve["acc"] == pytest.approx([100 * float(r.split(",")[val_col]) for r in rows])   # no EMA/SWA here
    assert curve["final_tta"][1] == pytest.approx(100 * results["eval_acc_tta"])
    ab = tmp_path / "airbench_cpu.json"
    ab.write_text(json.dumps({"runs": [{"name": "airbench94", "train_pflop": 1e-9, "val_acc_tta": 0.5}]}))
    png = tmp_path / "plot.png"
    capsys.readouterr()
    assert plot_compute.main([str(run), "--airbench", str(ab), "--budget", "1e-9", "--budget", "2e-9",
                              "--point", "by hand", "1.5e-9", "40", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "2 points" in capsys.readouterr().out
    assert plot_compute.main([str(run), "--point", "x", "one", "40", "--out", str(tmp_path / "y.png")]) == 2
    assert not (tmp_path / "y.png").exists()
    assert plot_compute.main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()
