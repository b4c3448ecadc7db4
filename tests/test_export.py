"""`export`: ONNX and TorchScript files that reload and match PyTorch, written atomically."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from resnet_cifar import checkpoint
from resnet_cifar.cli import main
from resnet_cifar.errors import UsageError, WorkError
from resnet_cifar.export import export, infer_format
from resnet_cifar.models import build_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, width=0.125).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    checkpoint.save({"model": model.state_dict(),
                     "model_args": {"name": "resnet18", "num_classes": 4, "width": 0.125},
                     "classes": ["a", "b", "c", "d"], "mean": list(MEAN), "std": list(STD),
                     "config": {}}, path)
    return path, model


def _images(n):
    from resnet_cifar.data.loader import normalize

    return normalize(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), MEAN, STD, channels_last=False)


def test_torchscript_round_trip(ckpt, tmp_path, capsys):
    path, model = ckpt
    out = tmp_path / "model.ts"
    assert main(["export", str(path), "--format", "torchscript", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max abs difference" in text and str(out) in text
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(out))
    x = _images(3)      # not the traced batch size: the batch axis is free
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp files left


@pytest.mark.slow
def test_onnx_round_trip(ckpt, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra: pip install 'resnet-cifar[onnx]'")
    pytest.importorskip("onnxscript", reason="onnxscript is an optional extra: pip install 'resnet-cifar[onnx]'")
    import onnx
    import onnxruntime as ort

    path, model = ckpt
    out = tmp_path / "model.onnx"
    result = export(path, out)                      # format from the suffix
    assert result["format"] == "onnx" and result["max_abs_diff"] <= result["tolerance"]
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["resnet_cifar.classes"]) == ["a", "b", "c", "d"]
    assert json.loads(meta["resnet_cifar.std"]) == pytest.approx(list(STD))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = _images(n)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(got), model(x), atol=1e-4)


def test_missing_onnx_extra_is_one_line(ckpt, tmp_path, monkeypatch, capsys):
    path, _ = ckpt
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # import now raises ImportError
    out = tmp_path / "model.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'resnet-cifar[onnx]'" in err
    assert not out.exists()


def test_mismatch_fails_and_writes_nothing(ckpt, tmp_path, monkeypatch):
    import resnet_cifar.export as ex

    path, _ = ckpt
    real = ex._run_torchscript
    monkeypatch.setattr(ex, "_run_torchscript", lambda data, x: real(data, x) + 1.0)
    out = tmp_path / "model.ts"
    with pytest.raises(WorkError, match="differs from PyTorch"):
        export(path, out, "torchscript")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_format_and_path_errors(ckpt, tmp_path):
    path, _ = ckpt
    assert infer_format("x.onnx", None) == "onnx" and infer_format("x.ts", None) == "torchscript"
    with pytest.raises(UsageError):
        infer_format("x.bin", None)
    with pytest.raises(UsageError):
        export(path, tmp_path, "torchscript")        # a directory
    with pytest.raises(UsageError):
        export(tmp_path / "missing.pt", tmp_path / "m.ts", "torchscript")
