"""`resnet-cifar train` end to end through the CLI on a tiny PNG folder."""

import json

import pytest
import torch

from resnet_cifar.cli import main

TINY_FLAGS = ["--dataset", "folder", "--model", "resnet20", "--width", "0.25", "--epochs", "2",
              "--batch-size", "16", "--val-size", "6", "--scheduler", "cosine", "--lr", "0.05",
              "--device", "cpu", "--no-swa", "--compile", "off"]


def test_train_writes_a_complete_run(png_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--data-dir", str(png_folder), "--out", str(out), "--tta"]) == 0
    for name in ("config.yaml", "metrics.csv", "results.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (out / name).is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 2 and results["num_train"] == 30 and results["num_val"] == 6
    assert results["test_acc"] is not None and results["test_acc_tta"] is not None
    cap = capsys.readouterr()
    assert "done: best val acc" in cap.out
    # the report is built from the images already in memory, not read from disk a second time
    report = json.loads((out / "report" / "summary.json").read_text())
    assert report["images_missing"] is None
    assert "report: loading" not in cap.err
    # evaluate on the same split reproduces the recorded accuracy
    assert main(["evaluate", str(out), "--split", "val", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["acc"] == pytest.approx(results["best_val_acc"])


def test_resume_of_a_finished_run_and_flag_conflicts(png_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--data-dir", str(png_folder), "--out", str(out),
                 "--no-report"]) == 0
    assert main(["train", "--resume", str(out), "--lr", "0.3"]) == 2
    assert "--resume continues a run with its saved config" in capsys.readouterr().err


def test_existing_out_needs_overwrite_and_nothing_is_written(png_folder, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", *TINY_FLAGS, "--data-dir", str(png_folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # --overwrite refuses to delete a directory that is not a run directory
    assert main(["train", *TINY_FLAGS, "--data-dir", str(png_folder), "--out", str(out), "--overwrite"]) == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_plateau_without_validation_is_refused(png_folder, tmp_path, capsys):
    code = main(["train", *TINY_FLAGS, "--scheduler", "plateau", "--val-size", "0",
                 "--data-dir", str(png_folder), "--out", str(tmp_path / "run")])
    assert code == 2 and "--val-size is 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_several_seeds_write_a_summary(png_folder, tmp_path, capsys):
    out = tmp_path / "seeds"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--data-dir", str(png_folder), "--out", str(out),
                 "--seeds", "0,1", "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["metric"] == "test_acc"
    accs = [r["test_acc"] for r in summary["runs"]]
    assert summary["mean"] == pytest.approx(sum(accs) / 2)
    w0 = torch.load(out / "seed-0" / "checkpoints" / "last.pt", weights_only=True)["model"]
    w1 = torch.load(out / "seed-1" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
