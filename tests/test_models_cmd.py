"""`models`: every registry model listed with the parameter count and MACs `summary` reports."""

from __future__ import annotations

import json

from resnet_cifar.cli import main
from resnet_cifar.models import build_model, count_parameters, list_models
from resnet_cifar.summary import summarize


def test_json_lists_every_model_with_the_numbers_of_a_real_build(capsys):
    assert main(["models", "--json", "--num-classes", "7"]) == 0
    got = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in got["models"]}
    assert list(rows) == list_models() and got["num_classes"] == 7
    # Built on the meta device, yet the same numbers as a real CPU build and `summary`.
    real = summarize("resnet20", num_classes=7)
    assert rows["resnet20"]["params"] == count_parameters(build_model("resnet20", 7)) == real["total_params"]
    assert rows["resnet20"]["macs_per_image"] == real["macs_per_image"]
    assert rows["resnet18"]["params"] == 11_172_423  # 11,173,962 at 10 classes, minus 3 x 513 head weights
    assert rows["resnet20"]["family"].startswith("CIFAR ResNet")
    assert rows["resnet50"]["family"].startswith("ResNet, bottleneck")
    assert rows["preact_resnet18"]["family"].startswith("pre-activation")


def test_text_table_is_aligned_and_points_to_summary(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "params", "MACs/image", "family"]
    table = lines[1:1 + len(list_models())]
    assert [ln.split()[0] for ln in table] == list_models()
    # right-aligned numeric columns: every "M" of the params column at the same offset
    assert len({ln.index("M ") for ln in table}) == 1
    assert "0.27M" in table[list_models().index("resnet20")]
    assert "summary --model NAME" in lines[-1]


def test_bad_num_classes_is_a_usage_error(capsys):
    assert main(["models", "--num-classes", "0"]) == 2
    assert "--num-classes must be >= 1" in capsys.readouterr().err
