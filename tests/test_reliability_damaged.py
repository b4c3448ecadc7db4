"""Damaged checkpoints and corrupt resume state (issue "Reliability and security", cases 7 and 4):
truncated, bit-flipped, empty, a directory, another model or class count; missing or corrupt RNG,
data-position or optimizer state; at the library level and through the CLI (predict, evaluate,
export, train --resume). Atomic saves and failing saves: test_reliability_checkpoint.py.
"""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest
import torch

from reliability_helpers import assert_one_line_error, run_main, tiny_config, tiny_dataset, write_folder
from resnet_cifar import checkpoint as ckpt
from resnet_cifar import engine
from resnet_cifar.errors import CheckpointError, UsageError


# ------------------------------------------------------------------------- case 7: damaged files
@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    """A real checkpoint written by a Trainer (no training needed)."""
    d = tmp_path_factory.mktemp("good")
    data = write_folder(d / "data")  # the folder the saved config names (same images as tiny_dataset)
    cfg = tiny_config(out=str(d), dataset="folder", data_dir=str(data))
    t = engine.Trainer(cfg, tiny_dataset(), d)
    t.ckpt_dir.mkdir(parents=True, exist_ok=True)
    t.save("best.pt")
    return d / "checkpoints" / "best.pt"


def _damaged(good: Path, tmp: Path) -> dict[str, Path]:
    raw = good.read_bytes()
    files = {}

    def put(name, data):
        files[name] = tmp / f"{name}.pt"
        files[name].write_bytes(data)

    put("empty", b"")
    put("truncated_half", raw[: len(raw) // 2])
    put("truncated_tail", raw[:-10])
    put("garbage", bytes(random.Random(0).randrange(256) for _ in range(3000)))
    put("text", b"this is not a checkpoint\n")
    b = bytearray(raw)
    # a bit flipped inside the tensor payload (CRC catches it; torch alone would load wrong weights)
    import zipfile

    with zipfile.ZipFile(good) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size > 64)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    payload = info.header_offset + 30 + name_len + extra_len  # the local header's extra (padding) counts
    b[payload + 40] ^= 0x10
    put("bitflip_tensor", bytes(b))
    other = io.BytesIO()
    torch.save({"format": "something-else", "model": {}}, other)
    put("other_tool", other.getvalue())
    other = io.BytesIO()
    torch.save([1, 2, 3], other)
    put("a_list", other.getvalue())
    (tmp / "a_dir.pt").mkdir()
    files["a_dir"] = tmp / "a_dir.pt"
    return files


def test_every_damaged_file_is_one_checkpoint_error_naming_it(good_ckpt, tmp_path):
    for name, path in _damaged(good_ckpt, tmp_path).items():
        with pytest.raises((CheckpointError, UsageError)) as e:
            ckpt.load(path)
            pytest.fail(f"{name} loaded")
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg, (name, msg)


def test_random_bit_flips_are_refused_or_harmless(good_ckpt, tmp_path):
    """40 random single-bit flips anywhere in the file: each either fails with CheckpointError or
    flips a byte the loader never uses (zip metadata); the loaded values are then identical."""
    raw = good_ckpt.read_bytes()
    ref = ckpt.load(good_ckpt)
    rng = random.Random(7)
    refused = 0
    for _ in range(40):
        b = bytearray(raw)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        p = tmp_path / "flipped.pt"
        p.write_bytes(bytes(b))
        try:
            state = ckpt.load(p)
        except CheckpointError as e:
            assert "\n" not in str(e) and str(p) in str(e)
            refused += 1
            continue
        for k, v in ref["model"].items():
            assert torch.equal(state["model"][k], v), k
        assert state["rng"]["torch"].equal(ref["rng"]["torch"])
    assert refused > 20


def _other_model_checkpoints(good: Path, tmp: Path) -> dict[str, Path]:
    state = ckpt.load(good)
    state.pop("path")
    from resnet_cifar.models import build_model

    out = {}
    s = dict(state, model=build_model("resnet32", 2, 0.25).state_dict())  # weights of another model
    out["other_model"] = tmp / "other_model.pt"
    ckpt.save(s, out["other_model"])
    s = dict(state, model=build_model("resnet20", 3, 0.25).state_dict())  # another class count
    out["other_classes"] = tmp / "other_classes.pt"
    ckpt.save(s, out["other_classes"])
    s = dict(state, classes=["a", "b", "c"])  # names 3 classes for 2 outputs
    out["class_names"] = tmp / "class_names.pt"
    ckpt.save(s, out["class_names"])
    return out


def test_checkpoint_of_another_model_or_class_count_is_refused(good_ckpt, tmp_path):
    for name, path in _other_model_checkpoints(good_ckpt, tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            ckpt.build_from_checkpoint(ckpt.load(path))
        assert "\n" not in str(e.value) and str(path) in str(e.value), name
    with pytest.raises(CheckpointError, match="2 classes, but the data has 5"):
        ckpt.build_from_checkpoint(ckpt.load(good_ckpt), num_classes=5)


def _image(tmp: Path) -> Path:
    from PIL import Image

    p = tmp / "img.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(p)
    return p


def _cli_cases(good: Path, tmp: Path) -> dict[str, Path]:
    return {**_damaged(good, tmp), **_other_model_checkpoints(good, tmp)}


def test_predict_refuses_damaged_checkpoints_with_one_line(good_ckpt, tmp_path, capsys):
    pytest.importorskip("resnet_cifar.cli.predict_cmd")
    img = _image(tmp_path)
    for name, path in _cli_cases(good_ckpt, tmp_path).items():
        code, _, err = run_main(["predict", str(path), str(img), "--device", "cpu"], capsys)
        assert code != 0, name
        assert_one_line_error(err, str(path))


def test_evaluate_refuses_damaged_checkpoints_with_one_line(good_ckpt, tmp_path, capsys):
    pytest.importorskip("resnet_cifar.cli.evaluate_cmd")
    data = write_folder(tmp_path / "data")
    for name, path in _cli_cases(good_ckpt, tmp_path).items():
        code, _, err = run_main(["evaluate", str(path), "--dataset", "folder", "--data-dir", str(data),
                                 "--split", "val", "--device", "cpu"], capsys)
        assert code != 0, name
        assert_one_line_error(err, str(path))
    # a good checkpoint on data with another class count
    data3 = write_folder(tmp_path / "data3", num_classes=3)
    code, _, err = run_main(["evaluate", str(good_ckpt), "--dataset", "folder", "--data-dir", str(data3),
                             "--split", "val", "--device", "cpu"], capsys)
    assert code != 0
    assert_one_line_error(err, str(good_ckpt))


def test_export_refuses_damaged_checkpoints_with_one_line(good_ckpt, tmp_path, capsys):
    pytest.importorskip("resnet_cifar.cli.export_cmd")
    for name, path in _cli_cases(good_ckpt, tmp_path).items():
        target = tmp_path / f"{name}.ts"
        code, _, err = run_main(["export", str(path), "--format", "torchscript", "--out", str(target)], capsys)
        assert code != 0, name
        assert_one_line_error(err, str(path))
        assert not target.exists()


def test_resume_refuses_damaged_last_pt_with_one_line(good_ckpt, tmp_path, capsys):
    for name, path in _cli_cases(good_ckpt, tmp_path).items():
        if name in ("class_names",):
            continue  # resume does not read the class names of last.pt: the data decides them
        run = tmp_path / f"run-{name}"
        (run / "checkpoints").mkdir(parents=True)
        target = run / "checkpoints" / "last.pt"
        if path.is_dir():
            target.mkdir()
        else:
            target.write_bytes(path.read_bytes())
        before = sorted(p.relative_to(run) for p in run.rglob("*"))
        code, _, err = run_main(["train", "--resume", str(run), "--device", "cpu"], capsys)
        assert code in (1, 2), name
        assert_one_line_error(err, "last.pt")
        after = sorted(p.relative_to(run) for p in run.rglob("*") if p.name != "config.yaml")
        assert after == before, name  # (a resume rewrites config.yaml before it checks the weights)


# ------------------------------------------------------------------------- case 4: resume state
@pytest.fixture(scope="module")
def resume_state(good_ckpt):
    return ckpt.load(good_ckpt)


def _corruptions(state: dict):
    def without(key):
        return {k: v for k, v in state.items() if k != key}

    def with_(key, value):
        return {**state, key: value}

    rng = state["rng"]
    yield "no rng", without("rng")
    yield "rng not a dict", with_("rng", [1, 2])
    yield "no torch rng", with_("rng", {k: v for k, v in rng.items() if k != "torch"})
    yield "torch rng wrong size", with_("rng", {**rng, "torch": rng["torch"][:100]})
    yield "no numpy rng", with_("rng", {k: v for k, v in rng.items() if k != "numpy"})
    yield "numpy keys wrong", with_("rng", {**rng, "numpy": {**rng["numpy"], "keys": torch.zeros(3, dtype=torch.int64)}})
    yield "no python rng", with_("rng", {k: v for k, v in rng.items() if k != "python"})
    yield "python rng garbage", with_("rng", {**rng, "python": {"version": 3, "state": [1], "gauss": None}})
    yield "no batch", without("batch")
    yield "batch past the epoch", with_("batch", 10_000)
    yield "negative batch", with_("batch", -1)
    yield "epoch past the run", with_("epoch", 99)
    yield "batch as string", with_("batch", "3")
    yield "no epoch", without("epoch")
    yield "negative step", with_("step", -5)
    yield "zero accum_steps", with_("accum_steps", 0)
    yield "no partial", without("partial")
    yield "partial without sums", with_("partial", {})
    yield "partial with text", with_("partial", {"loss_sum": "x", "correct": 0.0, "count": 0.0, "seconds": 0.0})
    yield "no optimizer", without("optimizer")
    yield "optimizer of another model", with_("optimizer", {"state": {}, "param_groups": [{"params": [0]}]})
    yield "no schedule", without("schedule")


def test_missing_or_corrupt_resume_state_fails_loudly(resume_state, tmp_path):
    cfg = tiny_config(out=str(tmp_path))
    data = tiny_dataset()
    engine.Trainer(cfg, data, tmp_path, resume_state=resume_state)  # the intact state resumes
    for name, state in _corruptions(resume_state):
        with pytest.raises(CheckpointError) as e:
            engine.Trainer(cfg, data, tmp_path, resume_state=state)
        assert "\n" not in str(e.value), name
