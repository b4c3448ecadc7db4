"""evaluate / predict / export / train --init-from with other tools' checkpoints, from the command line."""

from __future__ import annotations

import json

import pytest
import torch

from resnet_cifar.cli import main
from resnet_cifar.data import load_dataset
from resnet_cifar.engine import evaluate
from resnet_cifar.foreign import TOOLS
from resnet_cifar.models import build_model

KUANGLIU = TOOLS["kuangliu/pytorch-cifar"]


def _net(name="resnet18", classes=3):
    torch.manual_seed(0)
    m = build_model(name, num_classes=classes, width=0.125).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture
def kuangliu_file(tmp_path):
    net = _net()
    path = tmp_path / "ckpt.pth"
    torch.save({"net": {f"module.{k}": v for k, v in net.state_dict().items()}, "acc": 91.5, "epoch": 7}, path)
    return path, net


def test_evaluate_a_kuangliu_file_with_its_normalisation(kuangliu_file, png_folder, capsys):
    path, net = kuangliu_file
    assert main(["evaluate", str(path), "--dataset", "folder", "--data-dir", str(png_folder), "--json",
                 "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    data = load_dataset("folder", str(png_folder))
    expected = evaluate(net, data.test_x, data.test_y, mean=KUANGLIU["mean"], std=KUANGLIU["std"])
    assert r["model"] == "resnet18" and r["n"] == len(data.test_y)
    assert r["acc"] == pytest.approx(expected["acc"]) and r["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert list(r["per_class_acc"]) == list(data.classes)
    assert main(["evaluate", str(path), "--dataset", "folder", "--data-dir", str(png_folder), "--split", "val"]) == 2
    assert "no run config" in capsys.readouterr().err


def test_plain_state_dict_needs_mean_and_std_on_the_command_line(tmp_path, png_folder, capsys):
    path = tmp_path / "weights.pt"
    torch.save(_net("resnet20").state_dict(), path)
    base = ["evaluate", str(path), "--dataset", "folder", "--data-dir", str(png_folder)]
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert "normalisation is unknown; pass --mean" in err and len(err.splitlines()) == 1
    assert main(base + ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--model", "resnet20"]) == 0
    capsys.readouterr()
    assert main(base + ["--model", "resnet32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit --model resnet32: 'layer1.3.conv1.weight' is missing" in err[0]
    assert "Traceback" not in "".join(err)


def test_predict_and_export_a_kuangliu_file(kuangliu_file, png_folder, tmp_path, capsys):
    path, net = kuangliu_file
    image = next((png_folder / "test").rglob("*.png"))
    assert main(["predict", str(path), str(image), "--json", "--topk", "1", "--device", "cpu"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"][0]
    from resnet_cifar.data.folder import load_image
    from resnet_cifar.predict import classify

    arr, _ = load_image(image)
    probs = classify(net, arr[None].copy(), KUANGLIU["mean"], KUANGLIU["std"])[0]
    assert top["index"] == int(probs.argmax()) and top["prob"] == pytest.approx(float(probs.max()), rel=1e-5)
    out = tmp_path / "model.ts"
    assert main(["export", str(path), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean"] == list(KUANGLIU["mean"]) and out.is_file()


def test_our_checkpoint_refuses_foreign_flags(kuangliu_file, png_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--data-dir", str(png_folder), "--model", "resnet18",
                 "--width", "0.125", "--epochs", "1", "--batch-size", "12", "--val-size", "6", "--device", "cpu",
                 "--scheduler", "cosine", "--no-swa", "--no-report", "--compile", "off", "--out", str(run),
                 "--init-from", str(kuangliu_file[0])]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--mean", "0.5,0.5,0.5"]) == 2
    assert "carries its own mean/std" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--model", "resnet34"]) == 2
    assert "drop --model" in capsys.readouterr().err
