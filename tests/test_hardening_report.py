"""Hardening of the report: a full disk or an interruption keeps the old report; class names and
one-epoch runs draw correctly; the config table shows what applies."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from reliability_helpers import assert_one_line_error, run_main
from report_helpers import make_run_dir
from resnet_cifar.report import build_report, html, plots


def test_report_on_a_full_disk_keeps_the_old_report(tmp_path, monkeypatch, capsys):
    run, images = make_run_dir(tmp_path / "run")
    build_report(run, images=images)
    report = run / "report"
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    (report / "my-notes.txt").write_text("keep me")
    real = Path.write_text

    def full(self, *a, **k):
        if self.name == "index.html":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    code, _, err = run_main(["report", str(run)], capsys)
    assert code == 1
    assert_one_line_error(err, "No space left on device", "previous report is intact")
    after = {p.name: p.read_bytes() for p in report.iterdir()}
    assert after == {**before, "my-notes.txt": b"keep me"}
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    monkeypatch.setattr(Path, "write_text", real)
    build_report(run, images=images)
    assert (report / "my-notes.txt").read_text() == "keep me"       # a user's file is carried over


def test_interrupted_report_leaves_the_old_one(tmp_path, monkeypatch):
    run, images = make_run_dir(tmp_path / "run")
    build_report(run, images=images)
    before = (run / "report" / "index.html").read_bytes()

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_reliability", killed)
    with pytest.raises(KeyboardInterrupt):
        build_report(run, images=images)
    assert (run / "report" / "index.html").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.startswith(".report")]


def test_dollar_signs_in_class_names_are_drawn_literally(tmp_path):
    classes = ["$_$", "us$", "$\\frac$", "ok", "a$b$c"]
    run, images = make_run_dir(tmp_path / "run", classes=classes)
    index = build_report(run, images=images)
    assert (index.parent / "confusion.png").is_file() and (index.parent / "mistakes.png").is_file()
    assert plots.plain("$_$") == r"\$_\$"


def test_one_epoch_plot_has_one_integer_tick():
    fig = plots._figure(4, 3)
    ax = fig.add_subplot()
    rows = [{"epoch": 1, "val_acc": 0.5}]
    ax.plot([1], [50])
    plots._epoch_axis(ax, rows)
    fig.canvas.draw()
    assert list(ax.get_xticks()) == [1]
    ax2 = fig.add_subplot(2, 1, 2)
    ax2.plot([1, 2, 3], [1, 2, 3])
    plots._epoch_axis(ax2, [{"epoch": e} for e in (1, 2, 3)])
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in ax2.get_xticks())


def test_config_table_leaves_out_what_does_not_apply(tmp_path):
    cfg = {"dataset": "folder", "download": True, "scheduler": "cosine", "milestones": [0.5, 0.75],
           "gamma": 0.1, "plateau_patience": 10, "plateau_factor": 0.1, "lr": 0.1}
    assert html.shown_config(cfg) == {"dataset": "folder", "scheduler": "cosine", "lr": 0.1}
    cifar = {"dataset": "cifar10", "download": True, "scheduler": "multistep", "milestones": [0.5], "gamma": 0.1,
             "plateau_patience": 10}
    assert html.shown_config(cifar) == {"dataset": "cifar10", "download": True, "scheduler": "multistep",
                                        "milestones": [0.5], "gamma": 0.1}
    run, images = make_run_dir(tmp_path / "run", config={"dataset": "folder", "download": True,
                                                          "scheduler": "cosine", "milestones": [0.5, 0.75]})
    page = build_report(run, images=images).read_text()
    config_part = page[page.index('id="config"'):page.index('id="environment"')]
    assert "milestones" not in config_part and "download" not in config_part and "cosine" in config_part
