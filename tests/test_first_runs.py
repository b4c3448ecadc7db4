"""A new user's first runs through `resnet-cifar train`: short runs are honest, sizes are checked
before the header, an image folder is recognised, the run records an absolute data path, config
file errors name their line, --help points to the model list, the report path is printed once."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from helpers import write_png_folder
from resnet_cifar.cli import main

TINY = ["--model", "resnet20", "--width", "0.25", "--batch-size", "8", "--val-size", "4", "--device", "cpu",
        "--compile", "off", "--amp", "off"]


@pytest.fixture
def folder(tmp_path):
    return write_png_folder(tmp_path / "imgs", n_per_class=6, num_classes=2)


def _metrics(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_one_epoch_of_the_tutorial_preset_trains_at_the_given_lr_not_at_swa_lr(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "folder", "--data-dir", str(folder), "--epochs", "1",
                 "--lr", "0.05", "--out", str(run), "--no-report"]) == 0
    cap = capsys.readouterr()
    assert "SWA off: a 1-epoch run" in cap.err and "--lr 0.05" in cap.err
    assert [float(r["lr"]) for r in _metrics(run)] == [0.05]            # plateau at --lr, not swa_lr 0.01
    results = json.loads((run / "results.json").read_text())
    assert results["selected"] != "swa" and results["swa_start_epoch"] is None
    assert results["schedule_notes"][0].startswith("SWA off: a 1-epoch run")
    assert "1 epoch," in cap.err and "1 epochs" not in cap.out + cap.err


def test_two_epochs_with_swa_say_that_the_second_is_at_swa_lr(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "folder", "--data-dir", str(folder), "--epochs", "2",
                 "--out", str(run), "--no-report"]) == 0
    assert "SWA from epoch 2 of 2: 1 epoch (2-2) at the constant --swa-lr 0.01" in capsys.readouterr().err
    assert [float(r["lr"]) for r in _metrics(run)] == [0.1, 0.01]        # what the metrics (and report) show


def test_fast_preset_with_one_epoch_clips_its_warm_up(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "fast", *TINY, "--dataset", "folder", "--data-dir", str(folder),
                 "--epochs", "1", "--out", str(run), "--no-report", "--no-tta"]) == 0
    cap = capsys.readouterr()
    assert "warm-up shortened from 2 to 0.25 epochs, a quarter of this 1-epoch run" in cap.err
    assert json.loads((run / "results.json").read_text())["warmup_epochs"] == 0.25


def test_too_few_images_for_the_val_size_fail_before_the_header_and_keep_the_old_run(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "folder", "--data-dir", str(folder), "--epochs", "1",
                 "--out", str(run), "--no-report"]) == 0
    before = sorted(p.name for p in run.rglob("*"))
    capsys.readouterr()
    assert main(["train", *TINY, "--val-size", "5000", "--dataset", "folder", "--data-dir", str(folder),
                 "--epochs", "1", "--out", str(run), "--overwrite"]) == 2
    cap = capsys.readouterr()
    assert "train /" not in cap.out + cap.err                             # no "-4988 train / 5000 val"
    assert cap.err.strip().splitlines()[-1].startswith("resnet-cifar: error: --val-size 5000 must be smaller "
                                                       "than the 12 training images")
    assert sorted(p.name for p in run.rglob("*")) == before               # --overwrite deleted nothing


def test_an_image_folder_is_recognised_and_recorded_as_an_absolute_path(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(folder.parent)
    assert main(["train", *TINY, "--data-dir", folder.name, "--epochs", "1", "--out", "run", "--no-report"]) == 0
    cap = capsys.readouterr()
    assert "resnet20 on folder: 8 train / 4 val images" in cap.err and "download" not in cap.err
    saved = yaml.safe_load((folder.parent / "run" / "config.yaml").read_text())
    assert saved["dataset"] == "folder" and saved["data_dir"] == str(folder)
    monkeypatch.chdir(tmp_path.parent)                                    # evaluate from elsewhere
    assert main(["evaluate", str(folder.parent / "run"), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "val"


@pytest.mark.parametrize("text, where", [("lr: 0.05\nepochs: [1\nbatch_size: 4\n", "line 3, column 11"),
                                         ("lr: 0.1\n  epochs: 3\n", "line 2, column 9")])
def test_a_yaml_parse_error_names_its_line(tmp_path, capsys, text, where):
    (tmp_path / "my.yaml").write_text(text)
    assert main(["train", "--config", str(tmp_path / "my.yaml"), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"does not parse: {where}: " in err


def test_train_help_points_to_the_models_listing(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "`resnet-cifar models` lists them" in out and "summary --help" not in out


def test_the_report_path_is_printed_once_and_the_history_is_on_stdout(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "folder", "--data-dir", str(folder), "--epochs", "2",
                 "--no-swa", "--out", str(run)]) == 0
    cap = capsys.readouterr()
    both = cap.out + cap.err
    assert both.count(str(run / "report" / "index.html")) == 1
    out = cap.out.splitlines()                        # `train > train.log`: the epochs and the result
    assert [ln.split(":")[0] for ln in out] == ["epoch 1", "epoch 2", "done"]
    assert "resnet20 on folder: 8 train / 4 val images, 2 epochs" in cap.err
