"""Hostile checkpoints (issue "Reliability and security", case 6).

A pickle whose `__reduce__` would run code (here: create a marker file) is handed to every command
that reads a checkpoint: `train --resume`, `evaluate`, `predict` and `export`. Each must refuse with
one line and a non-zero exit, and the marker must never appear: loading is weights_only=True,
with no fallback.
"""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from reliability_helpers import assert_one_line_error, run_main, write_folder
from resnet_cifar import checkpoint as ckpt
from resnet_cifar.errors import CheckpointError


class _TouchMarker:
    """Unpickling this calls open(marker, "w"): the file appears if the loader runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _payload(kind, marker):
    evil = kind(marker)
    # Everything a real checkpoint has, so only the hostile object can be the reason to refuse.
    return {"format": ckpt.FORMAT, "model": {"conv.weight": torch.zeros(2)}, "evil": evil,
            "model_args": {"name": "resnet20", "num_classes": 2, "width": 0.25},
            "classes": ["a", "b"], "mean": [0.5] * 3, "std": [0.25] * 3}


def _hostile_files(tmp, marker):
    files = {}
    for kind in (_TouchMarker, _SystemMarker):
        # 1) a real torch.save zip archive whose data.pkl holds the object
        buf = io.BytesIO()
        torch.save(_payload(kind, marker), buf)
        files[f"zip-{kind.__name__}"] = buf.getvalue()
        # 2) a raw pickle, protocol 2 (torch's legacy format starts like this) and the newest
        for proto in (2, pickle.HIGHEST_PROTOCOL):
            files[f"raw{proto}-{kind.__name__}"] = pickle.dumps(_payload(kind, marker), protocol=proto)
    # 3) the object alone, at the top level
    files["raw-top"] = pickle.dumps(_TouchMarker(marker))
    return files


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "PWNED"
    paths = {}
    for name, data in _hostile_files(tmp_path, marker).items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        paths[name] = p
    assert not marker.exists()
    # Sanity: the payloads are live: an unsafe pickle.load would create the marker.
    pickle.loads(_hostile_files(tmp_path, tmp_path / "LIVE")["raw-top"])
    assert (tmp_path / "LIVE").exists()
    return marker, paths


def test_library_load_refuses_and_runs_nothing(hostile):
    marker, paths = hostile
    for name, p in paths.items():
        with pytest.raises(CheckpointError) as e:
            ckpt.load(p)
        assert "\n" not in str(e.value) and str(p) in str(e.value), name
    assert not marker.exists()


def test_train_resume_refuses(hostile, tmp_path, capsys):
    marker, paths = hostile
    for name, p in paths.items():
        run = tmp_path / f"run-{name}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.pt").write_bytes(p.read_bytes())
        code, _, err = run_main(["train", "--resume", str(run), "--device", "cpu"], capsys)
        assert code == 1, name
        assert_one_line_error(err, "last.pt")
        assert sorted(x.name for x in run.rglob("*")) == ["checkpoints", "last.pt"], name
    assert not marker.exists()


def _each_refused(paths: dict, argv_for, capsys) -> None:
    """Run the command argv_for(name, path) builds for every hostile file: exit 1, one line naming it."""
    for name, p in paths.items():
        code, _, err = run_main(argv_for(name, p), capsys)
        assert code == 1, name
        assert_one_line_error(err, str(p))


def test_evaluate_refuses(hostile, tmp_path, capsys):
    pytest.importorskip("resnet_cifar.cli.evaluate_cmd")
    marker, paths = hostile
    data = write_folder(tmp_path / "data", n_per_class=2)
    _each_refused(paths, lambda name, p: ["evaluate", str(p), "--dataset", "folder", "--data-dir", str(data),
                                          "--device", "cpu"], capsys)
    assert not marker.exists()


def test_predict_refuses(hostile, tmp_path, capsys):
    pytest.importorskip("resnet_cifar.cli.predict_cmd")
    from PIL import Image

    marker, paths = hostile
    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(img)
    _each_refused(paths, lambda name, p: ["predict", str(p), str(img), "--device", "cpu"], capsys)
    assert not marker.exists()


def test_export_refuses(hostile, tmp_path, capsys):
    pytest.importorskip("resnet_cifar.cli.export_cmd")
    marker, paths = hostile
    outs = {name: tmp_path / f"{name}.ts" for name in paths}
    _each_refused(paths, lambda name, p: ["export", str(p), "--format", "torchscript", "--out", str(outs[name])],
                  capsys)
    assert not [o for o in outs.values() if o.exists()]
    assert not marker.exists()


def test_run_directory_with_hostile_best_pt(hostile, tmp_path, capsys):
    """A run directory stands for RUN_DIR/checkpoints/best.pt in predict and evaluate."""
    pytest.importorskip("resnet_cifar.cli.predict_cmd")
    from PIL import Image

    marker, paths = hostile
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(paths["zip-_TouchMarker"].read_bytes())
    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(img)
    code, _, err = run_main(["predict", str(run), str(img), "--device", "cpu"], capsys)
    assert code == 1
    assert_one_line_error(err, "best.pt", "refusing")
    assert not marker.exists()
