"""`summary`: the layer table's totals agree with the registry, for every model."""

from __future__ import annotations

import json

import pytest

from resnet_cifar.cli import main
from resnet_cifar.models import build_model, count_parameters, list_models
from resnet_cifar.summary import format_table, summarize

HEAVY = {"resnet50", "resnet101", "resnet152", "resnet110"}


@pytest.mark.parametrize("name", list_models())
def test_total_matches_registry(name):
    width = 0.125 if name in HEAVY else 0.25
    s = summarize(name, num_classes=7, width=width)
    model = build_model(name, num_classes=7, width=width)
    expected = count_parameters(model)
    trainable = count_parameters(model, trainable_only=True)
    assert s["total_params"] == expected and s["trainable_params"] == trainable
    # only the speedrun nets freeze parameters (their whitening weights and BN scales)
    frozen = name.startswith("speedrun_resnet")
    assert s["non_trainable_params"] == expected - trainable and (trainable == expected) == (not frozen)
    # Per-layer own parameters add up to the total, and the root row's subtree is everything.
    assert sum(r["params"] for r in s["layers"]) == expected
    assert s["layers"][0]["total_params"] == expected and s["layers"][0]["depth"] == 0
    assert s["layers"][0]["output_shape"] == [1, 7]
    assert s["macs_per_image"] > 0


def test_resnet18_reference_numbers():
    s = summarize("resnet18")
    assert s["total_params"] == 11_173_962
    # 3x3 stride-1 stem, no max-pool: the first stage runs at full 32x32 resolution.
    stem = s["layers"][1]
    assert stem["type"] == "Conv2d" and stem["output_shape"] == [1, 64, 32, 32] and stem["params"] == 1728
    shapes = {r["name"]: r["output_shape"] for r in s["layers"]}
    assert shapes["layer1"] == [1, 64, 32, 32] and shapes["layer4"] == [1, 512, 4, 4]
    # The 1x1 projection shortcut of the first block of layer2: conv 64->128 stride 2 + BN.
    assert shapes["layer2.0.shortcut.0"] == [1, 128, 16, 16]
    assert s["layers"][[r["name"] for r in s["layers"]].index("layer2.0.shortcut.0")]["params"] == 64 * 128
    # MACs of the convolutions and the classifier of CIFAR ResNet-18: about 0.56 G per image.
    assert s["macs_per_image"] == 555_422_720


def test_resnet20_macs_and_params():
    s = summarize("resnet20")
    assert s["total_params"] == 269_722          # "0.27M" in the paper
    assert 40e6 < s["macs_per_image"] < 42e6


def test_table_format(capsys):
    assert main(["summary", "--model", "resnet20", "--width", "0.5", "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "Layer (type:depth-idx)" in out and "Output Shape" in out and "Param #" in out
    assert "├─Conv2d: 1-1" in out and "└─Linear: 1-6" in out
    s = summarize("resnet20", num_classes=3, width=0.5)
    assert f"Total params: {s['total_params']:,}" in out
    assert "MACs per 32x32 image" in out
    # Folding deeper levels keeps the totals: a depth-1 table lists each stage's whole subtree.
    table = format_table(s, max_depth=1)
    rows = [line for line in table.splitlines() if line.startswith(("├─", "└─"))]
    total = sum(int(line.split()[-1].replace(",", "")) for line in rows if line.split()[-1] != "--")
    assert total == s["total_params"]


def test_json_and_errors(capsys):
    assert main(["summary", "--model", "resnet20", "--width", "0.25", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "resnet20" and data["total_params"] > 0 and data["layers"]
    assert main(["summary", "--model", "resnet19"]) == 2
    assert "resnet18" in capsys.readouterr().err
    assert main(["summary", "--model", "resnet20", "--width", "0"]) == 2
