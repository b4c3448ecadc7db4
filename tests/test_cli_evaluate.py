"""`evaluate` on folder datasets: the val fallback without a test split, a moved data dir."""

from __future__ import annotations

import json
import os

import pytest

from helpers import TINY, write_png_folder
from resnet_cifar.cli import main
from resnet_cifar.config import resolve
from resnet_cifar.data import load_dataset
from resnet_cifar.engine import fit


@pytest.fixture
def run_without_test_split(tmp_path):
    """A finished tiny run on an image folder that has train/ only."""
    data = write_png_folder(tmp_path / "data", n_per_class=8, num_classes=2)
    cfg = resolve(flag_values={**TINY, "epochs": 1, "batch_size": 8, "val_size": 4, "data_dir": str(data)})
    results = fit(cfg, load_dataset("folder", data), tmp_path / "run")
    return tmp_path / "run", data, results


def test_no_test_split_falls_back_to_the_validation_split_and_says_so(run_without_test_split, capsys):
    run, _, results = run_without_test_split
    capsys.readouterr()
    assert main(["evaluate", str(run), "--tta", "--device", "cpu"]) == 0
    cap = capsys.readouterr()
    assert "has no test split: evaluating on the run's validation split" in cap.err
    assert " val (4 images, flip TTA)" in cap.out                  # the run's own --tta-mode (TINY: flip)
    # --tta-mode picks other views (and implies --tta): airbench's 6 views give another result record
    assert main(["evaluate", str(run), "--tta-mode", "flip_translate", "--json", "--device", "cpu"]) == 0
    six = json.loads(capsys.readouterr().out)
    assert six["tta"] and six["tta_mode"] == "flip_translate"
    assert main(["evaluate", str(run), "--tta", "--tta-mode", "flip", "--json", "--device", "cpu"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert two["tta_mode"] == "flip" and two["loss"] != six["loss"]
    with pytest.raises(SystemExit) as bad:                         # argparse names the choices, exit 2
        main(["evaluate", str(run), "--tta-mode", "mirror", "--device", "cpu"])
    assert bad.value.code == 2 and "invalid choice: 'mirror'" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--json", "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["split"] == "val" and ev["acc"] == pytest.approx(results["eval_acc"])
    # asking for the test split explicitly is still refused, with the fix named
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 2
    assert "use --split val" in capsys.readouterr().err


def test_a_moved_data_dir_names_the_flag_that_fixes_it(run_without_test_split, tmp_path, capsys):
    run, data, _ = run_without_test_split
    moved = tmp_path / "elsewhere"
    os.rename(data, moved)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist here" in err and "pass --data-dir PATH" in err
    assert main(["evaluate", str(run), "--data-dir", str(moved), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "val"
