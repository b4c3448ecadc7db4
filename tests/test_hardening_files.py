"""Files this tool writes or reads that a hostile or careless user controls (issue 13 items 3, 5,
6, 8; issue 14's export and report details): atomic writes, export targets, bounded checkpoint
metadata, CRC-0 zip members, oversized summaries, and the report's atomic rebuild."""

from __future__ import annotations

import errno
import io
import json
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reliability_helpers import assert_one_line_error, run_main, subprocess_env
from resnet_cifar import checkpoint, fsutil
from resnet_cifar.errors import CheckpointError, WorkError
from resnet_cifar.models import build_model

SRC = str(Path(__file__).resolve().parents[1] / "src")
CLASSES = ["a", "b", "c"]


def _save_ckpt(path: Path, *, model_args=None, weights=None, **extra) -> Path:
    args = {"name": "resnet20", "num_classes": 3, "width": 0.25}
    model = weights if weights is not None else build_model(**args).state_dict()
    checkpoint.save({"model": model, "model_args": {**args, **(model_args or {})}, "classes": list(CLASSES),
                     "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.21, 0.2234567], **extra}, path)
    return path


@pytest.fixture()
def ckpt(tmp_path):
    return _save_ckpt(tmp_path / "model.pt")


# --------------------------------------------------------------------------- fsutil
def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    fsutil.write_text(target, "old: 1\n")

    def full(f):
        f.write(b"new: 2\n" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        fsutil.atomic_write(target, full)
    assert target.read_text() == "old: 1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(WorkError) as e:
        fsutil.write_npz(tmp_path / "config.yaml", what="predictions", x=np.zeros(3))
    assert "No space left on device" in str(e.value) and "previous predictions is intact" in str(e.value)
    assert target.read_text() == "old: 1\n" and len(list(tmp_path.iterdir())) == 1


def test_replace_dir_swaps_whole_folders(tmp_path):
    final = tmp_path / "report"
    final.mkdir()
    (final / "index.html").write_text("old")
    build = fsutil.temp_dir_beside(final)
    (build / "index.html").write_text("new")
    fsutil.replace_dir(build, final)
    assert (final / "index.html").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report"]


# --------------------------------------------------------------------------- export
def test_export_never_overwrites_its_own_input(ckpt, tmp_path, capsys):
    before = ckpt.read_bytes()
    for out in (ckpt, tmp_path / "." / "model.pt"):
        for extra in ([], ["--force"]):
            code, _, err = run_main(["export", str(ckpt), "--format", "torchscript", "--out", str(out), *extra], capsys)
            assert code == 2
            assert_one_line_error(err, "is the checkpoint being exported")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(before)
    code, _, err = run_main(["export", str(run), "--format", "torchscript", "--out", str(best), "--force"], capsys)
    assert code == 2 and "is the checkpoint being exported" in err
    assert ckpt.read_bytes() == before and best.read_bytes() == before


def test_export_refuses_an_existing_file_without_force(ckpt, tmp_path, capsys):
    out = tmp_path / "model.ts"
    out.write_bytes(b"someone else's file")
    code, _, err = run_main(["export", str(ckpt), "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, "already exists", "--force")
    assert out.read_bytes() == b"someone else's file"
    code, stdout, err = run_main(["export", str(ckpt), "--out", str(out), "--force"], capsys)
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # torch.jit is deprecated, still what --format torchscript writes
        assert torch.jit.load(str(out)) is not None
    assert "mean [0.5000, 0.4000, 0.3000] std [0.2000, 0.2100, 0.2235]" in stdout


def test_export_on_a_full_disk_is_one_line_and_the_old_file_stays(ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.ts"
    out.write_bytes(b"previous export")
    real = fsutil.atomic_write

    def full(path, write):
        return real(path, lambda f: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))

    monkeypatch.setattr(fsutil, "atomic_write", full)
    code, _, err = run_main(["export", str(ckpt), "--out", str(out), "--force"], capsys)
    assert code == 1
    assert_one_line_error(err, "No space left on device", "intact")
    assert out.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.ts"]


def test_onnx_export_is_quiet(ckpt, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from resnet_cifar.export import export

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        export(ckpt, tmp_path / "m.onnx")
    assert not seen, [str(w.message)[:100] for w in seen]
    out, err = capsys.readouterr()
    assert err.strip() == "", err[:500]


# --------------------------------------------------------------------------- checkpoint metadata
@pytest.mark.parametrize("args, needle", [
    ({"width": 300}, "width must be a number in (0, 16], got 300"),
    ({"num_classes": 2_000_000_000}, "num_classes must be an integer from 1 to 100,000, got 2000000000"),
    ({"num_classes": True}, "num_classes must be an integer"),
    ({"width": float("nan")}, "got nan"),
    ({"name": "x" * 10_000}, "model name must be a short string"),
])
def test_checkpoint_model_args_are_bounded_before_use(tmp_path, args, needle):
    p = _save_ckpt(tmp_path / "bad.pt", model_args=args)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(p)
    assert needle in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 400


_PEAK = """
import json, resource, sys
sys.path.insert(0, {src!r})
from resnet_cifar import checkpoint
state = checkpoint.load(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    checkpoint.build_from_checkpoint(state); out = {{"built": True}}
except Exception as e:
    out = {{"error": type(e).__name__, "message": str(e)}}
out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(out))
"""


def test_weights_are_compared_with_the_args_before_the_model_is_built(tmp_path):
    """Args inside the bounds but far bigger than the stored weights (ResNet-18 at width 16 with
    100,000 classes: ~3.7 G parameters, 15 GB) are refused from the shapes alone."""
    small = build_model("resnet18", num_classes=3, width=0.125).state_dict()
    p = tmp_path / "liar.pt"
    checkpoint.save({"model": small, "model_args": {"name": "resnet18", "num_classes": 100_000, "width": 16.0},
                     "classes": [f"c{i}" for i in range(100_000)], "mean": [0.5] * 3, "std": [0.2] * 3}, p)
    r = subprocess.run([sys.executable, "-c", _PEAK.format(src=SRC), str(p)], capture_output=True, text=True,
                       env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got.get("error") == "CheckpointError", got
    assert "other shapes than the model args imply" in got["message"]
    assert got["peak_mb"] < 200, got


def test_self_referencing_metadata_is_refused_without_expanding_it(tmp_path):
    """A few hundred bytes of pickle whose repr would be 2^60 items (the same list referenced
    twice per level, 60 levels): refused by the bounded walk before anything prints it."""
    bomb: list = [0]
    for _ in range(60):
        bomb = [bomb, bomb]
    p = _save_ckpt(tmp_path / "bomb.pt", config={"crop_padding": bomb})
    assert p.stat().st_size < 200_000
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(p)
    assert "more than 200,000 values" in str(e.value) or "nested more than" in str(e.value)


def _zero_crc(raw: bytes, member: str) -> bytes:
    """Set the CRC-32 field of `member` to 0 in its local header and in the central directory."""
    b = bytearray(raw)
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        info = zf.getinfo(member)
    b[info.header_offset + 14:info.header_offset + 18] = b"\0\0\0\0"
    name = member.encode()
    pos = raw.find(b"PK\x01\x02")
    while pos != -1:
        n_len = struct.unpack("<H", raw[pos + 28:pos + 30])[0]
        if raw[pos + 46:pos + 46 + n_len] == name:
            b[pos + 16:pos + 20] = b"\0\0\0\0"
        pos = raw.find(b"PK\x01\x02", pos + 4)
    return bytes(b)


def test_zip_members_with_crc_zero_are_still_checked(ckpt, tmp_path):
    raw = ckpt.read_bytes()
    with zipfile.ZipFile(ckpt) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size > 64)
    zeroed = _zero_crc(raw, info.filename)
    b = bytearray(zeroed)
    name_len, extra_len = struct.unpack("<HH", zeroed[info.header_offset + 26:info.header_offset + 30])
    b[info.header_offset + 30 + name_len + extra_len + 40] ^= 0x10       # and a flipped weight bit
    for name, data in (("zeroed", zeroed), ("zeroed_flipped", bytes(b))):
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            checkpoint.load(p)
        assert "without a CRC-32" in str(e.value) and str(p) in str(e.value)


# --------------------------------------------------------------------------- summary
@pytest.mark.parametrize("flags, needle", [
    (["--width", "1000"], "--width must be a number in (0, 16], got 1000"),
    (["--width", "16"], "parameters"),
    (["--num-classes", "2000000000"], "--num-classes must be an integer from 1 to 100,000"),
    (["--width", "nan"], "got nan"),
])
def test_summary_refuses_oversized_models_before_building(flags, needle, capsys):
    code, _, err = run_main(["summary", "--model", "resnet18", *flags], capsys)
    assert code == 2
    assert_one_line_error(err, needle)


# --------------------------------------------------------------------------- config values (phase 2)
_YAML_BOMB = "\n".join(["a0: &a0 [1, 2]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
                                               for i in range(1, 40)] + ["crop_padding: *a39"]) + "\n"

_CONFIG_CHILD = """
import json, resource, sys
sys.path.insert(0, {src!r})
from resnet_cifar import config
from resnet_cifar.errors import UsageError
used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.RLIM_INFINITY))   # 1 GB more, then MemoryError
out = {{}}
for step in ("file", "dict"):
    try:
        if step == "file":
            config.resolve(file_values=config.load_config_file(sys.argv[1]))
        else:
            import yaml
            config.from_dict(yaml.safe_load(open(sys.argv[1])))
        out[step] = "accepted"
    except UsageError as e:
        out[step] = str(e)
    except MemoryError:
        out[step] = "MemoryError"
print(json.dumps(out))
"""


def test_yaml_with_nested_aliases_is_refused_before_any_repr(tmp_path, capsys):
    """4^39 items reachable from `crop_padding` through aliases (1.3 KB of YAML); the old eager
    repr took 44 s and 2.7 GB before a MemoryError. The child runs with 1 GB of headroom."""
    p = tmp_path / "bomb.yaml"
    p.write_text(_YAML_BOMB)
    r = subprocess.run([sys.executable, "-c", _CONFIG_CHILD.format(src=SRC), str(p)], capture_output=True,
                       text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    for step in ("file", "dict"):
        assert "nested more than 32 levels" in got[step] or "more than 200,000 values" in got[step], got
        assert len(got[step]) < 300
    code, _, err = run_main(["train", "--config", str(p), "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert_one_line_error(err, "no aliases that nest")
    assert not (tmp_path / "run").exists()


def test_config_value_errors_show_a_bounded_value(tmp_path):
    from resnet_cifar.config import load_config_file, resolve
    from resnet_cifar.errors import UsageError

    p = tmp_path / "c.yaml"
    p.write_text("crop_padding: [" + ", ".join(["123456789"] * 5000) + "]\n")
    with pytest.raises(UsageError) as e:
        resolve(file_values=load_config_file(p))
    assert "crop_padding=[123456789, 123456789, 123456789, 123456789, ...]" in str(e.value)
    big = tmp_path / "big.yaml"
    big.write_text("lr: 0.1\n" + "#" * (2 << 20) + "\n")
    with pytest.raises(UsageError, match="a config is a few KB"):
        load_config_file(big)
    with pytest.raises(UsageError, match="unknown preset"):
        resolve(file_values={"preset": ["not", "a", "name"]})


# --------------------------------------------------------------------------- run files on a full disk (phase 2)
@pytest.mark.parametrize("name", ["config.yaml", "metrics.csv", "predictions.npz", "results.json"])
def test_a_full_disk_while_training_is_one_line_and_keeps_previous_files(name, tmp_path, monkeypatch, capsys):
    from reliability_helpers import train_argv, write_folder

    data = write_folder(tmp_path / "data")
    out = tmp_path / "run"
    real = fsutil.atomic_write
    calls = []

    def full_for(path, write):
        if Path(path).name == name:
            calls.append(path)
            if name != "metrics.csv" or len(calls) > 1:      # metrics.csv: the second write fails
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(fsutil, "atomic_write", full_for)
    code, _, err = run_main(train_argv(data, out, epochs=2), capsys)
    assert code == 1, err
    assert_one_line_error(err, name, "No space left on device", "intact")
    assert not [p for p in out.rglob("*") if p.name.endswith(fsutil.TMP_SUFFIX)]
    if name == "config.yaml":
        assert not (out / "config.yaml").exists()          # not a 0-byte file
    if name == "metrics.csv":
        assert len((out / "metrics.csv").read_text().splitlines()) == 2   # header + epoch 1, intact
