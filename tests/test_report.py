"""The run report: reading a run directory, the numbers (confusion, per-class, calibration, example
selection), the diagnosis rules, the files written and the HTML. Run dirs are synthetic: no
training, no dataset on disk."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from report_helpers import CLASSES, healthy_rows, make_rows, make_run_dir, predictions, write_metrics_csv
from resnet_cifar.cli import main
from resnet_cifar.errors import UsageError
from resnet_cifar.report import build_report
from resnet_cifar.report.calibration import expected_calibration_error, reliability
from resnet_cifar.report.confusion import confusion_matrix, per_class_metrics, read_confusion_csv, top_confused_pairs
from resnet_cifar.report.diagnosis import diagnose, lr_cuts
from resnet_cifar.report.examples import least_confident_correct, most_confident_mistakes
from resnet_cifar.report.metrics import read_metrics


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run, images = make_run_dir(tmp_path_factory.mktemp("run") / "run")
    index = build_report(run, images=images)
    return run, index, images


def diagnose_csv(tmp_path, rows, results=None, config=None):
    """Diagnosis of rows that went through metrics.csv and back, as the report sees them."""
    write_metrics_csv(tmp_path / "metrics.csv", rows)
    return diagnose(read_metrics(tmp_path / "metrics.csv"), results or {}, config)


def ids(findings):
    return {f["id"] for f in findings}


# ----------------------------------------------------------------------------- reading

def test_read_metrics_parses_empty_cells_as_none(tmp_path):
    rows = healthy_rows(5)
    write_metrics_csv(tmp_path / "metrics.csv", rows)
    back = read_metrics(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in back] == [1, 2, 3, 4, 5]
    assert back[0]["swa_val_acc"] is None and back[0]["ema_val_acc"] is None
    assert back[3]["ema_val_acc"] == pytest.approx(rows[3]["ema_val_acc"])


# ----------------------------------------------------------------------------- numbers

def test_confusion_and_per_class_on_a_hand_example():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    cm = confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    pc = per_class_metrics(cm, ["a", "b", "c"])
    assert pc[0]["precision"] == 1.0 and pc[0]["recall"] == pytest.approx(2 / 3)
    assert pc[1]["precision"] == pytest.approx(0.5) and pc[1]["recall"] == pytest.approx(0.5)
    assert pc[0]["f1"] == pytest.approx(0.8)
    assert pc[2]["accuracy"] == pytest.approx(5 / 6)
    pairs = top_confused_pairs(cm, ["a", "b", "c"])
    assert {(p["true"], p["pred"]) for p in pairs} == {("a", "b"), ("b", "c")}
    assert all(p["count"] == 1 for p in pairs)


def test_example_selection_picks_only_mistakes_and_only_correct_ones():
    probs, labels = predictions(correct=0.8)
    mistakes = most_confident_mistakes(probs, labels, k=1000)
    pred = probs.argmax(1)
    assert len(mistakes) == int((pred != labels).sum()) > 0
    assert all(pred[m["row"]] != labels[m["row"]] and m["true"] == labels[m["row"]] for m in mistakes)
    confs = [m["confidence"] for m in mistakes]
    assert confs == sorted(confs, reverse=True)  # most confident mistakes first
    correct = least_confident_correct(probs, labels, k=5)
    assert len(correct) == 5 and all(pred[c["row"]] == labels[c["row"]] for c in correct)
    confs = [c["confidence"] for c in correct]
    assert confs == sorted(confs)
    assert most_confident_mistakes(probs, labels, k=3) == mistakes[:3]


def test_ece_is_zero_when_calibrated_and_large_when_overconfident():
    # calibrated: in each group, confidence p and exactly a share p of the answers right
    probs, labels = [], []
    for p in (0.3, 0.5, 0.7, 0.9):
        for i in range(100):
            row = np.full(4, (1 - p) / 3)
            row[0] = p
            probs.append(row)
            labels.append(0 if i < round(100 * p) else 1)
    assert expected_calibration_error(np.array(probs), np.array(labels)) == pytest.approx(0, abs=1e-9)
    # overconfident: 99% sure, right half of the time
    probs = np.tile([0.99, 0.01 / 3, 0.01 / 3, 0.01 / 3], (200, 1))
    labels = np.array([0, 1] * 100)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.49)


def test_ece_matches_the_standard_definition_on_random_probs():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(10), size=500)
    labels = rng.integers(0, 10, size=500)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    expected = 0.0
    for lo, hi in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            expected += m.mean() * abs(correct[m].mean() - conf[m].mean())
    rel = reliability(probs, labels)
    assert rel["ece"] == pytest.approx(expected)
    assert sum(b["count"] for b in rel["bins"]) == 500 and rel["n_bins"] == 15


# ----------------------------------------------------------------------------- diagnosis

def test_healthy_run_says_so_and_no_rule_fires(tmp_path):
    rows = healthy_rows()
    assert [c["epoch"] for c in lr_cuts(rows)] == [20, 32]
    findings = diagnose_csv(tmp_path, rows, {"test_acc": 0.931, "best_val_acc": 0.935,
                                             "candidates": {"raw": 0.935}, "selected": "raw",
                                             "eval_split": "test", "dataset": "cifar10"},
                            {"scheduler": "plateau", "epochs": 40, "lr": 0.1, "batch_size": 128})
    assert ids(findings) == {"healthy"}
    assert findings[0]["severity"] == "ok"


def test_diverging_loss(tmp_path):
    rows = make_rows(12, lr=lambda e: 0.1, train_loss=lambda e: 2.0 - 0.2 * e if e <= 6 else 0.8 * 1.3 ** (e - 6))
    f = [x for x in diagnose_csv(tmp_path, rows) if x["id"] == "loss_diverging"]
    assert f and f[0]["severity"] == "problem" and f[0]["figure"] == "loss.png"
    assert "learning rate" in f[0]["advice"].lower() and "normalised" in f[0]["advice"]


def test_nan_loss_is_divergence(tmp_path):
    rows = make_rows(5, lr=lambda e: 0.1, train_loss=lambda e: 2.0 / e if e < 4 else float("nan"))
    f = [x for x in diagnose_csv(tmp_path, rows) if x["id"] == "loss_diverging"]
    assert f and "epoch 4" in f[0]["detail"]


def test_oscillating_loss(tmp_path):
    rows = make_rows(20, lr=lambda e: 0.1, train_loss=lambda e: 1.5 - 0.02 * e + (0.3 if e % 2 else 0))
    assert "loss_oscillating" in ids(diagnose_csv(tmp_path, rows))


def test_growing_train_val_gap(tmp_path):
    rows = make_rows(30, lr=lambda e: 0.1, train_loss=lambda e: 1.0 / e,
                     train_acc=lambda e: min(1.0, 0.5 + 0.03 * e), val_acc=lambda e: min(0.8, 0.48 + 0.03 * e))
    f = [x for x in diagnose_csv(tmp_path, rows) if x["id"] == "overfitting"]
    assert f and f[0]["evidence"]["final_gap"] == pytest.approx(0.2)
    assert "augmentation" in f[0]["advice"] and "weight decay" in f[0]["advice"]


def test_rising_validation_loss_is_overfitting(tmp_path):
    rows = make_rows(30, lr=lambda e: 0.1, train_loss=lambda e: 1.0 / e,
                     train_acc=lambda e: 0.9, val_acc=lambda e: 0.88,
                     val_loss=lambda e: 0.5 - 0.02 * e if e <= 12 else 0.26 + 0.03 * (e - 12))
    assert "overfitting" in ids(diagnose_csv(tmp_path, rows))


def test_validation_drop_right_after_lr_cut(tmp_path):
    rows = make_rows(30, lr=lambda e: 0.1 if e < 15 else 0.01, train_loss=lambda e: 1.0 / e,
                     train_acc=lambda e: 0.8, val_acc=lambda e: 0.8 if e < 16 else 0.76)
    f = [x for x in diagnose_csv(tmp_path, rows, config={"scheduler": "multistep"}) if x["id"] == "val_drop_after_lr_cut"]
    assert f and f[0]["evidence"]["epoch"] == 15


def test_plateau_cut_too_early(tmp_path):
    rows = make_rows(40, lr=lambda e: 0.1 if e < 4 else 0.01, train_loss=lambda e: 1.0 / e,
                     train_acc=lambda e: 0.4 + 0.01 * e, val_acc=lambda e: 0.39 + 0.01 * e)
    findings = diagnose_csv(tmp_path, rows, {"epochs": 40}, {"scheduler": "plateau", "plateau_patience": 2})
    f = [x for x in findings if x["id"] == "plateau_cut_too_early"]
    assert f and f[0]["figure"] == "lr.png" and "plateau_patience (now 2)" in f[0]["advice"]
    # the same cut under a cosine/multistep schedule is not a plateau decision
    assert "plateau_cut_too_early" not in ids(diagnose_csv(tmp_path, rows, {"epochs": 40}, {"scheduler": "multistep"}))


def test_swa_lr_switch_is_not_a_plateau_decision(tmp_path):
    rows = make_rows(40, lr=lambda e: 0.1 if e < 30 else 0.01, train_loss=lambda e: 1.0 / e,
                     train_acc=lambda e: 0.5 + 0.01 * e, val_acc=lambda e: 0.49 + 0.01 * e)
    cfg = {"scheduler": "plateau", "swa": True, "swa_lr": 0.01, "swa_start": 0.75}
    assert [c["kind"] for c in lr_cuts(rows, cfg)] == ["swa"]
    assert "plateau_cut_too_early" not in ids(diagnose_csv(tmp_path, rows, {"epochs": 40}, cfg))
    assert "plateau_cut_too_early" in ids(diagnose_csv(tmp_path, rows, {"epochs": 40}, {**cfg, "swa": False}))


def test_test_far_below_validation(tmp_path):
    res = {"test_acc": 0.90, "best_val_acc": 0.95, "candidates": {"raw": 0.95}, "selected": "raw",
           "eval_split": "test", "dataset": "cifar10"}
    f = [x for x in diagnose_csv(tmp_path, healthy_rows(), res) if x["id"] == "test_below_val"]
    assert f and f[0]["severity"] == "problem"
    assert "preprocessing" in f[0]["advice"] and "leakage" in f[0]["advice"]


def test_low_accuracy_lists_the_four_causes_with_suspects(tmp_path):
    res = {"test_acc": 0.62, "best_val_acc": 0.63, "eval_split": "test", "dataset": "cifar10"}
    cfg = {"lr": 2.0, "batch_size": 128, "optimizer": "sgd", "crop_padding": 0, "flip": True,
           "model": "resnet18", "scheduler": "cosine"}
    f = [x for x in diagnose_csv(tmp_path, healthy_rows(10), res, cfg) if x["id"] == "low_accuracy"]
    assert f
    causes = f[0]["evidence"]["causes"]
    assert len(causes) == 4
    assert [c["suspect"] for c in causes] == [True, True, True, False]
    assert "too high" in causes[0]["text"] and "random crop" in causes[1]["text"]
    assert "7x7" in causes[3]["text"]


def test_cifar100_has_its_own_accuracy_bar(tmp_path):
    res = {"test_acc": 0.76, "best_val_acc": 0.765, "eval_split": "test", "dataset": "cifar100"}
    assert "low_accuracy" not in ids(diagnose_csv(tmp_path, healthy_rows(), res))


def test_run_without_validation_is_told_what_was_skipped(tmp_path):
    rows = make_rows(10, lr=lambda e: 0.1, train_loss=lambda e: 1.0 / e, train_acc=lambda e: 0.9)
    assert {"no_validation", "healthy"} <= ids(diagnose_csv(tmp_path, rows))


# ----------------------------------------------------------------------------- the report files

def test_report_files_are_valid_pngs_of_sensible_size(built):
    run, index, _ = built
    out = index.parent
    for name in ("loss.png", "accuracy.png", "lr.png", "confusion.png", "reliability.png",
                 "mistakes.png", "least_confident.png"):
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            w, h = im.size
            assert 300 <= w <= 3000 and 200 <= h <= 3000, (name, im.size)


def test_confusion_matrix_sums_and_matches_test_accuracy(built):
    run, index, _ = built
    results = json.loads((run / "results.json").read_text())
    summary = json.loads((index.parent / "summary.json").read_text())
    cm = np.array(summary["eval"]["confusion"])
    with np.load(run / "predictions.npz") as z:
        n = len(z["labels"])
    assert cm.sum() == n
    assert np.trace(cm) / cm.sum() == pytest.approx(results["test_acc"])
    back, classes = read_confusion_csv(index.parent / "confusion.csv")
    assert np.array_equal(back, cm) and classes == CLASSES
    assert len(summary["eval"]["per_class"]) == 10 and summary["calibration"]["ece"] is not None
    assert summary["notes"] == []  # predictions and results agree


def test_summary_json_holds_the_grid_selection(built):
    run, index, _ = built
    summary = json.loads((index.parent / "summary.json").read_text())
    with np.load(run / "predictions.npz") as z:
        pred, labels = z["probs"].argmax(1), z["labels"]
    rows = [m["row"] for m in summary["examples"]["mistakes"]]
    assert rows and all(pred[r] != labels[r] for r in rows)


def test_html_is_escaped_self_contained_and_complete(built):
    run, index, _ = built
    page = index.read_text()
    assert '<meta name="viewport"' in page
    assert "<b>truck</b>" not in page and "&lt;b&gt;truck&lt;/b&gt;" in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "<i>runs/x</i>" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "external reference"
    assert page.count('src="data:image/png;base64,') == 7
    for section in ("Diagnosis", "Training curves", "Confusion matrix", "Most confused pairs",
                    "Per class", "Calibration", "Expected calibration error", "Configuration",
                    "Environment", "Time to accuracy", "Weights compared"):
        assert section in page, section
    for href in ("../metrics.csv", "../results.json", "../config.yaml", "confusion.csv",
                 "../checkpoints/best.pt", "../predictions.npz"):
        assert f'href="{href}"' in page, href
    assert "Healthy run" in page


def test_report_without_predictions_still_renders(tmp_path):
    run, _ = make_run_dir(tmp_path / "run", with_predictions=False)
    index = build_report(run)
    page = index.read_text()
    assert "predictions.npz is missing" in page
    assert (index.parent / "loss.png").is_file() and not (index.parent / "confusion.png").exists()
    assert not (index.parent / "confusion.csv").exists()


def test_non_run_dir_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a run directory"):
        build_report(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        build_report(tmp_path / "nope")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(UsageError, match="not a run directory"):
        build_report(tmp_path)


def test_cli_report(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    write_metrics_csv(tmp_path / "run" / "metrics.csv", healthy_rows(5))  # a run still training
    assert main(["report", "-q", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "run" / "report" / "index.html")
    assert "results.json is missing" in (tmp_path / "run" / "report" / "index.html").read_text()


def test_multiseed_summary_page(tmp_path):
    top = tmp_path / "multi"
    accs = {}
    for seed in (0, 1):
        # seed 1 has no predictions, to keep the test quick; seed 0's dataset is gone (data_dir
        # points nowhere), which the report must survive
        run, _ = make_run_dir(top / f"seed-{seed}", with_predictions=seed == 0, results={"seed": seed})
        accs[seed] = json.loads((run / "results.json").read_text())["test_acc"]
    mean, std = float(np.mean(list(accs.values()))), float(np.std(list(accs.values()), ddof=1))
    (top / "summary.json").write_text(json.dumps({
        "metric": "test_acc", "seeds": [0, 1, 2],
        "runs": [{"seed": s, "dir": f"seed-{s}", "test_acc": accs[s], "best_val_acc": 0.93} for s in accs]
        + [{"seed": 2, "dir": "seed-2", "test_acc": None, "best_val_acc": None}],
        "mean": mean, "std": std}))
    lines = []
    index = build_report(top, log=lines.append)
    assert index == top / "report" / "index.html"
    seed0 = (top / "seed-0" / "report" / "index.html").read_text()
    assert "Images are not shown" in seed0 and "could not be loaded" in seed0
    assert (top / "seed-0" / "report" / "confusion.png").is_file()
    assert not (top / "seed-0" / "report" / "mistakes.png").exists()
    assert any("loading cifar10" in line for line in lines)
    page = index.read_text()
    assert f"{100 * mean:.2f} ± {100 * std:.2f}%" in page
    for s in accs:
        assert (top / f"seed-{s}" / "report" / "index.html").is_file()
        assert f'href="../seed-{s}/report/index.html"' in page
    assert "does not exist" in page  # seed-2 is listed but missing: said so, others still shown
    data = json.loads((top / "report" / "summary.json").read_text())
    assert [s["seed"] for s in data["seeds"]] == [0, 1, 2] and data["seeds"][0]["ece"] is not None
    # an existing seed report is kept unless forced
    stamp = (top / "seed-0" / "report" / "index.html").stat().st_mtime_ns
    build_report(top)
    assert (top / "seed-0" / "report" / "index.html").stat().st_mtime_ns == stamp


def test_stale_results_are_noted_and_misaligned_images_refused(tmp_path):
    from resnet_cifar.report.build import analyse_run

    run, images = make_run_dir(tmp_path / "run", results={"test_acc": 0.5})
    a = analyse_run(run, images=images)
    assert any("one of them is stale" in n for n in a["notes"])
    assert a["images"] is not None and a["images_missing"] is None
    with pytest.raises(UsageError, match="rows"):
        analyse_run(run, images=images[:10])
