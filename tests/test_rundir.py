"""The run directory's claim: up-front path checks, the one-run lock, the --overwrite rule, config edits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from resnet_cifar import rundir
from resnet_cifar.checkpoint import FORMAT
from resnet_cifar.errors import UsageError, WorkError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock")


def _run_dir(d: Path, lock: bool = False) -> Path:
    """What a finished run leaves: config, metrics, a tagged checkpoint, a report."""
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.yaml").write_text("lr: 0.1\n")
    (d / "metrics.csv").write_text("epoch\n1\n")
    torch.save({"format": FORMAT, "model": {}}, d / "checkpoints" / "last.pt")
    (d / "report").mkdir()
    (d / "report" / "index.html").write_text("<html>")
    (d / ".report.old.x1y2.tmp").mkdir()            # a report build cut short
    (d / "checkpoints" / ".last.pt.a1b2.tmp").write_bytes(b"half")
    if lock:
        rundir.claim(d, command="train", resume=True).release()
    return d


def _names(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_a_new_directory_is_created_locked_and_removed_again_when_nothing_was_written(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    c = rundir.claim(out, command="train --out run")
    assert (out / rundir.LOCK_NAME).is_file() and c.locks[0].held
    c.release()
    assert not (tmp_path / "a").exists()          # the failed start leaves nothing behind
    with rundir.claim(out, command="train") as c:
        (out / "config.yaml").write_text("x: 1\n")
    info = json.loads((out / rundir.LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["released"] and info["format"] == FORMAT


@pytest.mark.parametrize("make, needle", [
    (lambda t: (t / "afile").write_text("x") and t / "afile" / "sub", "is a file, not a directory"),
    (lambda t: (t / "afile").write_text("x") and t / "afile", "is a file; choose a directory"),
    (lambda t: Path("/proc/resnet-cifar-x"), "cannot create '/proc/resnet-cifar-x'"),
])
def test_paths_that_cannot_be_a_run_directory_are_refused_up_front(tmp_path, make, needle):
    if not Path("/proc/self").exists():
        pytest.skip("needs /proc")
    path = make(tmp_path)
    before = _names(tmp_path)
    with pytest.raises(UsageError, match=needle):
        rundir.claim(path, command="train")
    assert _names(tmp_path) == before and not path.is_dir()


def test_a_symlinked_out_gets_one_line(tmp_path):
    real = _run_dir(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UsageError, match="is a symbolic link") as e:
        rundir.claim(tmp_path / "link", command="train", overwrite=True)
    assert "\n" not in str(e.value)
    assert (real / "checkpoints" / "last.pt").is_file() and not (real / rundir.LOCK_NAME).exists()


def test_overwrite_keeps_a_project_that_only_has_a_config_yaml(tmp_path):
    proj = tmp_path / "myproject"
    (proj / "src").mkdir(parents=True)
    (proj / ".git").mkdir()
    (proj / "config.yaml").write_text("lr: 0.1\n")
    (proj / "src" / "main.py").write_text("print(1)\n")
    before = _names(proj)
    with pytest.raises(UsageError, match=r"not a resnet-cifar run directory \(it holds \.git/, src/, which no run writes\)"):
        rundir.claim(proj, command="train", overwrite=True)
    assert _names(proj) == before              # not even a lock file is left in it
    (proj / "src" / "main.py").unlink()
    (proj / "src").rmdir()
    (proj / ".git").rmdir()
    with pytest.raises(UsageError, match="nothing in it shows that resnet-cifar made it"):
        rundir.claim(proj, command="train", overwrite=True)
    assert _names(proj) == ["config.yaml"]


def test_overwrite_of_a_foreign_checkpoint_named_last_pt_is_refused(tmp_path):
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    torch.save({"net": {}}, d / "checkpoints" / "last.pt")     # another tool's file, no format tag
    (d / "config.yaml").write_text("lr: 0.1\n")
    with pytest.raises(UsageError, match="nothing in it shows"):
        rundir.claim(d, command="train", overwrite=True)


def test_overwrite_replaces_a_run_only_when_asked_and_keeps_the_lock(tmp_path):
    d = _run_dir(tmp_path / "run")
    with pytest.raises(UsageError, match="exists and is not empty; pass --overwrite"):
        rundir.claim(d, command="train")
    assert not (d / rundir.LOCK_NAME).exists()
    c = rundir.claim(d, command="train", overwrite=True)
    assert c.replace and (d / "metrics.csv").is_file()      # deleted only once the data has loaded
    c.replace_old()
    assert [p.name for p in d.iterdir()] == [rundir.LOCK_NAME]
    c.release()
    assert list(d.iterdir()) == []                          # the bare lock goes; the folder was there before


def test_a_seeds_parent_and_a_run_killed_before_its_first_checkpoint_count_as_run_directories(tmp_path):
    parent = tmp_path / "seeds"
    _run_dir(parent / "seed-0")
    s1 = parent / "seed-1"
    with rundir.claim(s1, command="train"):
        (s1 / "config.yaml").write_text("lr: 0.1\n")       # killed before any checkpoint
    assert rundir.proof(s1) == rundir.LOCK_NAME
    assert rundir.proof(parent) == "seed-0/checkpoints/last.pt"
    with rundir.claim(parent, command="train --seeds 0,1", overwrite=True) as c:
        c.replace_old()
        assert [p.name for p in parent.iterdir()] == [rundir.LOCK_NAME]
    (parent / "seed-0").mkdir()
    (parent / "seed-0" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="seed-0/notes.txt"):
        rundir.claim(parent, command="train", overwrite=True)


def test_a_second_claim_names_the_holder_and_a_seed_is_locked_with_its_parent(tmp_path):
    parent = tmp_path / "seeds"
    c = rundir.claim(parent, command="train --seeds 0,1 --out seeds")
    (parent / rundir.SEEDS_FILE).write_text(json.dumps({"format": FORMAT, "seeds": [0, 1]}))
    with pytest.raises(UsageError) as e:
        rundir.claim(parent, command="train", resume=True)
    msg = str(e.value)
    assert f"pid {os.getpid()}" in msg and "train --seeds 0,1 --out seeds" in msg and "UTC" in msg
    _run_dir(parent / "seed-1")
    with pytest.raises(UsageError, match="is in use by another run"):
        rundir.claim(parent / "seed-1", command="train", resume=True)
    assert not (parent / "seed-1" / rundir.LOCK_NAME).exists()
    c.release()
    with rundir.claim(parent / "seed-1", command="train", resume=True) as c2:
        assert len(c2.locks) == 2 and not c2.notes()


def test_the_lock_of_a_killed_run_is_recognised_as_stale(tmp_path):
    out = tmp_path / "run"
    src = str(Path(rundir.__file__).parents[1])
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {src!r})
        from resnet_cifar import rundir
        c = rundir.claim({str(out)!r}, command="train --out run")
        open({str(out / "config.yaml")!r}, "w").write("lr: 0.1\\n")
        print("held", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"in use by another run: pid {holder.pid} on "):
            rundir.claim(out, command="train", resume=True)
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        with rundir.claim(out, command="train", resume=True) as c:
            (note,) = c.notes()
            assert f"pid {holder.pid}" in note and "ended without releasing its lock" in note
    finally:
        holder.kill()
        holder.stdout.close()


def test_a_deleted_run_directory_is_noticed(tmp_path):
    out = tmp_path / "run"
    c = rundir.claim(out, command="train")
    c.check_alive()
    import shutil

    shutil.rmtree(out)
    with pytest.raises(WorkError, match="was deleted or moved while the run was going"):
        c.check_alive()
    c.release()
    assert not out.exists()


def test_config_edits_name_the_changed_keys(tmp_path):
    saved = {"lr": 0.1, "epochs": 10, "flip": True, "milestones": [0.5, 0.75], "device": "auto"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert rundir.config_edits(tmp_path, saved) == []
    rundir.check_config_unedited(tmp_path, saved)
    edited = {**saved, "lr": 0.05, "flip": 1, "device": "cpu", "new_key": 3}
    del edited["epochs"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    assert rundir.config_edits(tmp_path, saved) == [
        "lr: 0.1 -> 0.05", "epochs: removed (was 10)", "flip: True -> 1", "'new_key': added (3)"]
    with pytest.raises(UsageError, match=r"was edited after the run wrote it \(lr: 0.1 -> 0.05; epochs"):
        rundir.check_config_unedited(tmp_path, saved)
    (tmp_path / "config.yaml").write_text("lr: [unclosed\n")
    assert rundir.config_edits(tmp_path, saved) == ["config.yaml: unreadable (ParserError)"]
    (tmp_path / "config.yaml").unlink()
    assert rundir.config_edits(tmp_path, saved) == []
