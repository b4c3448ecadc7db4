"""`env`: versions, accelerators (checked with a real tensor op), compile support, datasets."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar import envinfo, runtime
from resnet_cifar.cli import main
from resnet_cifar.errors import UsageError


def test_json_has_versions_and_cpu_check(tmp_path, capsys):
    assert main(["env", "--json", "--data-dir", str(tmp_path / "nothing")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["python"] and info["cpu"]["torch_threads"] >= 1
    assert info["cpu"]["tensor_check"]["ok"] is True
    assert info["cuda"]["available"] == torch.cuda.is_available()
    assert info["data"]["exists"] is False
    assert set(info["compile"]) >= {"inductor", "c_compiler", "usable_cpu", "usable_cuda"}
    assert info["recommended_device"] in ("cpu", "cuda", "mps")


def test_text_output(tmp_path, capsys):
    assert main(["env", "--device", "cpu", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"torch        {torch.__version__}" in out
    assert "CUDA         not checked (--device cpu)" in out
    assert "cifar10    absent" in out


@pytest.mark.parametrize("avx512_bf16,amx,expect", [
    (True, True, "native (AVX512_BF16, AMX): --amp bf16 trains faster"),
    (True, False, "native (AVX512_BF16): --amp bf16 trains faster"),
    (False, False, "emulated (no AVX512_BF16 or AMX): keep --amp off"),
])
def test_cpu_bf16_says_whether_it_is_native(tmp_path, capsys, monkeypatch, avx512_bf16, amx, expect):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert main(["env", "--device", "cpu", "--data-dir", str(tmp_path)]) == 0
    bf16 = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  bf16")]
    assert len(bf16) == 1 and bf16[0].split(None, 2)[1] == "ok;" and expect in bf16[0]


def test_cpu_bf16_that_torch_cannot_tell_is_not_called_emulated(tmp_path, capsys, monkeypatch):
    def gone():
        raise AttributeError("no such probe in this torch")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", gone)
    assert runtime.cpu_bf16_instructions() is None
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr("platform.machine", lambda: "aarch64")      # an Arm CPU: its bf16 is not x86's
    assert runtime.cpu_bf16_instructions() is None
    assert main(["env", "--device", "cpu", "--data-dir", str(tmp_path)]) == 0
    bf16 = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  bf16")]
    assert "cannot tell" in bf16[0] and "emulated" not in bf16[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_when_absent_is_a_usage_error(tmp_path, capsys):
    assert main(["env", "--device", "cuda", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_devices_are_checked_with_a_tensor_op():
    info = envinfo.collect(device="cuda", data_dir="/nonexistent")
    dev = info["cuda"]["devices"][0]
    assert dev["tensor_check"]["ok"] and dev["name"] and dev["capability"]
    assert dev["total_memory_gib"] > 0


def test_a_broken_accelerator_is_reported_not_raised(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    monkeypatch.setattr(torch.Tensor, "to", boom)
    check = envinfo._tensor_check("cpu")
    assert check == {"ok": False, "error": "RuntimeError: CUDA error: no kernel image is available "
                                           "for execution on the device"}


def _fake_cifar(root, monkeypatch):
    """A CIFAR-10-shaped batch folder with its own MD5s swapped into the data layer."""
    from resnet_cifar.data import cifar

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {}
    for name in ["data_batch_1", "test_batch"]:
        blob = pickle.dumps({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                             b"labels": [0, 1, 0, 1]})
        (folder / name).write_bytes(blob)
        files[name] = hashlib.md5(blob).hexdigest()
    meta = pickle.dumps({b"label_names": [b"a", b"b"]})
    (folder / "batches.meta").write_bytes(meta)
    src = dict(cifar.SOURCES["cifar10"], train=[("data_batch_1", files["data_batch_1"])],
               test=[("test_batch", files["test_batch"])],
               meta=("batches.meta", hashlib.md5(meta).hexdigest()))
    monkeypatch.setattr(cifar, "SOURCES", {**cifar.SOURCES, "cifar10": src})
    return folder


def test_datasets_present_and_verified(tmp_path, monkeypatch):
    folder = _fake_cifar(tmp_path, monkeypatch)
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("cat", "dog"):
            d = tmp_path / "pets" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / f"{i}.png")
    (tmp_path / "not-a-dataset").mkdir()

    data = envinfo.data_info(tmp_path)
    assert data["cifar10"]["present"] and data["cifar10"]["verified"] is True
    assert data["cifar100"]["present"] is False
    [pets] = data["image_folders"]
    assert pets["path"] == str((tmp_path / "pets").resolve())
    assert pets["splits"] == {"train": {"classes": 2, "images": 6}, "test": {"classes": 2, "images": 2}}

    # A corrupted batch file is caught by the MD5 check and named.
    with open(folder / "data_batch_1", "ab") as f:
        f.write(b"x")
    data = envinfo.data_info(tmp_path)
    assert data["cifar10"]["verified"] is False and "data_batch_1" in data["cifar10"]["problem"]
    assert envinfo.data_info(tmp_path, verify=False)["cifar10"]["verified"] is None


def test_unknown_device_is_refused():
    with pytest.raises(UsageError):
        envinfo.collect(device="tpu")


def test_text_columns_are_aligned_on_every_branch(tmp_path):
    """Every value starts at the same column: CPU, a (faked) CUDA device, compile notes, data rows."""
    from resnet_cifar.cli.env_cmd import LABEL, format_text

    info = envinfo.collect(device="cpu", data_dir=tmp_path)
    info["cuda"] = {"available": True, "cuda_version": "13.0", "cudnn_version": 91000, "error": None,
                    "devices": [{"index": 0, "name": "Some GPU", "capability": "9.0", "total_memory_gib": 80.0,
                                 "free_memory_gib": 79.5, "tensor_check": {"ok": True, "error": None},
                                 "bf16_supported": True}]}
    info["compile"]["notes"] = ["no C/C++ compiler on PATH"]
    lines = [ln for ln in format_text(info).splitlines() if ln.strip()]
    assert len(lines) > 15
    for ln in lines:
        assert ln[LABEL] == " " and ln[LABEL + 1] != " ", ln
    text = format_text(info)
    assert "  cuda:0     Some GPU, compute capability 9.0" in text and "  note       no C/C++" in text
