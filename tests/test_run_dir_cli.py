"""The run directory end to end through the CLI: nothing lost to --overwrite or a second run, inputs
checked before the data loads, resumable --seeds sets, finished runs, edited configs, changed data,
signals after training, a directory deleted mid-run.

Tiny runs: ResNet-20 at width 0.25 on a few dozen PNGs. Concurrent runs are real subprocesses; the
rest run the CLI in-process (its return value is the exit code).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from reliability_helpers import (
    PY,
    assert_one_line_error,
    assert_one_line_stop,
    run_main,
    start_cli,
    subprocess_env,
    train_argv,
    wait_for,
    write_folder,
)
from resnet_cifar.models.resnet import CifarResNet

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX locks and signals")
REAL_FORWARD = CifarResNet.forward


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _on_forward(monkeypatch, k: int, action) -> None:
    """Call action() at the k-th training forward pass of this process."""
    calls = {"n": 0}

    def forward(self, x):
        if self.training:
            calls["n"] += 1
            if calls["n"] == k:
                action()
        return REAL_FORWARD(self, x)

    monkeypatch.setattr(CifarResNet, "forward", forward)


@pytest.fixture
def data(tmp_path):
    return write_folder(tmp_path / "data", n_per_class=8)


# ----------------------------------------------------------------------- item 1: --overwrite
def test_overwrite_keeps_a_project_folder_that_has_a_config_yaml(tmp_path, data, capsys):
    proj = tmp_path / "myproject"
    (proj / "src").mkdir(parents=True)
    (proj / ".git").mkdir()
    (proj / "config.yaml").write_text("lr: 0.1\n")
    (proj / "src" / "train.py").write_text("print('mine')\n")
    (proj / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    before = _snapshot(tmp_path)
    code, _, err = run_main(train_argv(data, proj, overwrite=True, epochs=1), capsys)
    assert code == 2
    assert_one_line_error(err, "--overwrite refuses to delete", ".git/, src/")
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_a_run_and_a_symlinked_out_is_one_line(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert run_main(train_argv(data, run, epochs=1), capsys)[0] == 0
    first = json.loads((run / "results.json").read_text())
    (tmp_path / "link").symlink_to(run)
    code, _, err = run_main(train_argv(data, tmp_path / "link", overwrite=True, epochs=1), capsys)
    assert code == 2
    assert_one_line_error(err, "is a symbolic link")
    code, _, err = run_main(train_argv(data, run, overwrite=True, epochs=1, seed=7), capsys)
    assert code == 0, err
    again = json.loads((run / "results.json").read_text())
    assert (first["seed"], again["seed"]) == (0, 7)


# ----------------------------------------------------------------------- item 2: one run per directory
def test_a_second_train_on_the_same_out_exits_2_naming_the_holder(tmp_path, data, capsys):
    run = tmp_path / "run"
    first = start_cli(train_argv(data, run, epochs=300, checkpoint_every=1), tmp_path)   # stopped below
    try:
        assert wait_for(run / "checkpoints" / "last.pt", first), first.communicate()[1]
        for extra in ({}, {"overwrite": True, "seed": 3}):
            code, _, err = run_main(train_argv(data, run, **extra), capsys)
            assert code == 2
            assert_one_line_error(err, "is in use by another run", f"pid {first.pid} on {socket.gethostname()}",
                                  "started ")
        code, _, err = run_main(["train", "--resume", str(run)], capsys)
        assert code == 2
        assert_one_line_error(err, f"pid {first.pid}")
        assert first.poll() is None                 # the first run goes on, untouched
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err
    assert "seed: 0" in (run / "config.yaml").read_text()


# ----------------------------------------------------------------------- item 7: up-front checks
@pytest.mark.parametrize("out, needle", [("/proc/resnet-cifar-x", "cannot create"),
                                         ("afile/sub", "is a file, not a directory")])
def test_an_out_that_cannot_be_made_is_refused_before_the_data_loads(tmp_path, monkeypatch, capsys, out, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    before = _snapshot(tmp_path)
    code, _, err = run_main(["train", "--dataset", "folder", "--data-dir", "missing", "--out", out], capsys)
    assert code == 2                                  # about --out, not the (missing) data: checked first
    assert_one_line_error(err, needle)
    assert _snapshot(tmp_path) == before


def test_float_ranges_and_the_torchrun_environment_are_checked_up_front(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["train", "--lr", "1e308", "--out", "run"], capsys)
    assert code == 2
    assert_one_line_error(err, "--lr must be <= 100")
    monkeypatch.setenv("WORLD_SIZE", "abc")
    code, _, err = run_main(["train", "--out", "run"], capsys)
    assert code == 2
    assert_one_line_error(err, "WORLD_SIZE='abc' is not an integer")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_flag_under_torchrun_variables_fails_fast_instead_of_waiting_for_peers(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**subprocess_env(), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    p = subprocess.run([PY, "-m", "resnet_cifar", "train", "--lr", "-1", "--out", str(tmp_path / "run")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert_one_line_error(p.stderr, "--lr must be >= 0")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------- item 8: --seeds as a whole
def test_a_seeds_run_stopped_during_seed_1_resumes_and_overwrites_as_a_whole(tmp_path, data, capsys):
    parent = tmp_path / "seeds"
    proc = start_cli(train_argv(data, parent, epochs=4, checkpoint_every=1, seeds="0,1"), tmp_path)

    def stop_in_seed_1():
        if wait_for(parent / "seed-1" / "checkpoints" / "last.pt", proc):
            proc.send_signal(signal.SIGTERM)

    t = threading.Thread(target=stop_in_seed_1, daemon=True)
    t.start()
    _, err = proc.communicate(timeout=300)
    t.join()
    assert proc.returncode == 143, err
    assert (parent / "seed-0" / "results.json").is_file() and not (parent / "seed-1" / "results.json").exists()
    seed0 = _snapshot(parent / "seed-0")
    code, out, err = run_main(["train", "--resume", str(parent)], capsys)
    assert code == 0, err
    summary = json.loads((parent / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["runs"]) == 2
    assert (parent / "seed-1" / "results.json").is_file()
    assert _snapshot(parent / "seed-0") == seed0      # the finished seed was kept as it was
    everything = _snapshot(parent)
    code, out, err = run_main(["train", "--resume", str(parent)], capsys)
    assert code == 0 and "finished" in out + err
    assert _snapshot(parent) == everything
    code, _, err = run_main(train_argv(data, parent, epochs=1, seeds="0,1", overwrite=True), capsys)
    assert code == 0, err


def test_resume_of_a_finished_run_changes_nothing(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert run_main(train_argv(data, run, epochs=1), capsys)[0] == 0
    before = _snapshot(run)
    time.sleep(0.01)
    code, out, err = run_main(["train", "--resume", str(run)], capsys)
    assert code == 0, err
    assert "finished" in out + err and "test acc" not in out
    assert _snapshot(run) == before


def _stopped_run(tmp_path, data, monkeypatch, capsys) -> Path:
    """A run stopped by SIGTERM in epoch 2 (of 2), with a checkpoint."""
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _on_forward(m, 5, lambda: os.kill(os.getpid(), signal.SIGTERM))
        code, _, err = run_main(train_argv(data, run, epochs=2), capsys)
    assert code == 143, err
    return run


def test_a_hand_edited_config_yaml_is_named_before_resume(tmp_path, data, monkeypatch, capsys):
    run = _stopped_run(tmp_path, data, monkeypatch, capsys)
    original = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(original.replace("lr: 0.05", "lr: 0.5").replace("epochs: 2", "epochs: 9"))
    code, _, err = run_main(["train", "--resume", str(run)], capsys)
    assert code == 2
    assert_one_line_error(err, "config.yaml was edited", "epochs: 2 -> 9", "lr: 0.05 -> 0.5")
    assert "lr: 0.5" in (run / "config.yaml").read_text()          # not overwritten
    (run / "config.yaml").write_text(original)
    assert run_main(["train", "--resume", str(run)], capsys)[0] == 0


# ----------------------------------------------------------------------- item 4: the data's fingerprint
def test_resume_refuses_changed_data_and_evaluate_says_so(tmp_path, data, monkeypatch, capsys):
    run = _stopped_run(tmp_path, data, monkeypatch, capsys)
    for i, src in enumerate(sorted((data / "train" / "c0").iterdir())[:2]):
        shutil.copy(src, data / "train" / "c0" / f"added-{i}.png")
    code, _, err = run_main(["train", "--resume", str(run)], capsys)
    assert code == 2
    assert_one_line_error(err, "the data differ from the run's in", "last.pt", "train: 18 images now, 16 in the run (c0 +2)")
    code, out, err = run_main(["evaluate", str(run / "checkpoints" / "last.pt"), "--split", "val", "--json"],
                              capsys)
    assert code == 0, err
    assert "warning: the data differ from the run's" in err and "training images" in err
    assert json.loads(out)["data_differs"] == ["train: 18 images now, 16 in the run (c0 +2)"]


# ----------------------------------------------------------------------- item 8: signals after training
def test_a_signal_during_the_final_test_stops_with_one_line_and_resume_finishes(tmp_path, data, monkeypatch,
                                                                                 capsys):
    import resnet_cifar.engine.results as results_mod

    real = results_mod.final_evaluation

    def killed(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(results_mod, "final_evaluation", killed)
        code, _, err = run_main(train_argv(data, run, epochs=1), capsys)
    assert code == 143
    assert_one_line_stop(err, "SIGTERM", "during the final test", f"--resume {run}")
    assert not (run / "results.json").exists() and (run / "checkpoints" / "last.pt").is_file()
    code, _, err = run_main(["train", "--resume", str(run)], capsys)
    assert code == 0, err
    results = json.loads((run / "results.json").read_text())
    assert (results["epochs"], results["eval_split"]) == (1, "val")   # no test split in this folder


def test_a_signal_during_the_report_stops_with_one_line(tmp_path, data, monkeypatch, capsys):
    import resnet_cifar.report as report_mod

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(report_mod, "build_report", lambda *a, **k: os.kill(os.getpid(), signal.SIGINT) or time.sleep(30))
        code, _, err = run_main(train_argv(data, run, epochs=1, report=True), capsys)
    assert code == 130
    assert_one_line_stop(err, "SIGINT", "during the report", f"resnet-cifar report {run}")
    assert json.loads((run / "results.json").read_text())["epochs"] == 1


def test_a_run_directory_deleted_mid_run_stops_the_run(tmp_path, data, monkeypatch, capsys):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _on_forward(m, 3, lambda: shutil.rmtree(run))
        code, _, err = run_main(train_argv(data, run, epochs=2, checkpoint_every=1), capsys)
    assert code == 1
    assert_one_line_error(err, "was deleted or moved while the run was going")
    assert not run.exists()                          # not re-created
    assert run_main(train_argv(data, run, epochs=1), capsys)[0] == 0
