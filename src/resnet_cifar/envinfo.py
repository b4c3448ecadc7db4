"""What this machine can do: versions, threads, accelerators, bf16, torch.compile, datasets.

`collect(device, data_dir)` returns one plain dict (JSON-ready); `resnet-cifar env` prints it.
Every accelerator is checked with a real tensor operation (the classic tutorial's
`torch.rand(2, 3).cuda()`), inside try/except: a driver that is installed but broken shows up here
as an error line instead of as a crash in the middle of training.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from . import runtime
from .errors import UsageError, describe


def _version(dist: str) -> str | None:
    """Installed version of a distribution, without importing it (importing onnx/triton is slow)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except Exception:  # absent or broken metadata: report as missing
        return None


def _tensor_check(device: str) -> dict[str, Any]:
    """A real operation on `device`: allocate, compute, copy back. Never raises."""
    try:
        x = torch.rand(2, 3).to(device)
        y = (x @ x.T).sum()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        value = float(y.cpu())
        ok = value == value  # not NaN
        return {"ok": bool(ok), "error": None if ok else "the result was NaN"}
    except Exception as e:  # the point is to report, not crash
        return {"ok": False, "error": describe(e, 300)}


def _bf16_check(device: str) -> dict[str, Any]:
    try:
        a = torch.randn(8, 8, device=device, dtype=torch.bfloat16)
        float((a @ a).float().sum().cpu())
        return {"ok": True, "error": None}
    except Exception as e:
        return {"ok": False, "error": describe(e, 300)}


def cuda_info() -> dict[str, Any]:
    info: dict[str, Any] = {"available": False, "cuda_version": torch.version.cuda,
                            "cudnn_version": None, "devices": [], "error": None}
    try:
        info["available"] = bool(torch.cuda.is_available())
    except Exception as e:
        info["error"] = describe(e, 300)
        return info
    if not info["available"]:
        return info
    try:
        info["cudnn_version"] = torch.backends.cudnn.version()
    except Exception:
        pass
    for i in range(torch.cuda.device_count()):
        dev: dict[str, Any] = {"index": i}
        try:
            p = torch.cuda.get_device_properties(i)
            dev.update(name=p.name, capability=f"{p.major}.{p.minor}",
                       total_memory_gib=round(p.total_memory / 2**30, 2),
                       multiprocessors=p.multi_processor_count)
            free, _total = torch.cuda.mem_get_info(i)
            dev["free_memory_gib"] = round(free / 2**30, 2)
        except Exception as e:
            dev["error"] = describe(e, 300)
        dev["tensor_check"] = _tensor_check(f"cuda:{i}")
        try:
            with torch.cuda.device(i):
                dev["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
        except Exception:
            dev["bf16_supported"] = False
        info["devices"].append(dev)
    return info


def mps_info() -> dict[str, Any]:
    mps = getattr(torch.backends, "mps", None)
    info: dict[str, Any] = {"built": bool(mps and mps.is_built()), "available": False}
    try:
        info["available"] = bool(mps and mps.is_available())
    except Exception as e:
        info["error"] = describe(e, 300)
    if info["available"]:
        info["tensor_check"] = _tensor_check("mps")
    return info


def compile_info(check_cuda: bool) -> dict[str, Any]:
    """Whether torch.compile can work here, without compiling anything (that takes a minute).

    The default backend, inductor, generates C++ (needs a C/C++ compiler) on the CPU and Triton
    kernels on CUDA (needs the triton package).
    """
    info: dict[str, Any] = {"torch_compile": hasattr(torch, "compile"), "inductor": False,
                            "c_compiler": None, "triton": None, "usable_cpu": False,
                            "usable_cuda": False, "notes": []}
    try:
        # find_spec, not import: importing inductor takes seconds and compiles nothing.
        info["inductor"] = importlib.util.find_spec("torch._inductor") is not None
    except Exception as e:
        info["notes"].append(f"torch._inductor cannot be found ({describe(e, 300)})")
    cc = os.environ.get("CXX") or os.environ.get("CC")
    for cand in ([cc] if cc else []) + ["g++", "c++", "clang++", "gcc", "cc", "clang"]:
        path = shutil.which(cand) if cand else None
        if path:
            info["c_compiler"] = path
            break
    if info["c_compiler"] is None:
        info["notes"].append("no C/C++ compiler on PATH: torch.compile on the CPU will fail "
                             "(install gcc/clang, or use --compile off)")
    info["triton"] = _version("triton") if importlib.util.find_spec("triton") else None
    if check_cuda and info["triton"] is None:
        info["notes"].append("triton is not installed: torch.compile on CUDA will fail "
                             "(pip install triton, or use --compile off)")
    if sys.version_info >= (3, 14) and info["inductor"]:
        info["notes"].append("check that your torch release supports torch.compile on this Python")
    info["usable_cpu"] = info["torch_compile"] and info["inductor"] and info["c_compiler"] is not None
    info["usable_cuda"] = bool(check_cuda and info["torch_compile"] and info["inductor"] and info["triton"])
    return info


# --- datasets --------------------------------------------------------------------------------

def _cifar_status(name: str, data_dir: Path, verify: bool) -> dict[str, Any]:
    from .data import cifar

    src = cifar.SOURCES[name]
    status: dict[str, Any] = {"present": False, "verified": None, "path": None, "problem": None,
                              "archive": None}
    archive = data_dir / src["filename"]
    if archive.is_file():
        status["archive"] = str(archive)
    folder = None
    for cand in (data_dir / src["folder"], data_dir):
        if (cand / src["meta"][0]).is_file() or (cand is not data_dir and cand.is_dir()):
            folder = cand
            break
    if folder is None:
        return status
    status["present"] = True
    status["path"] = str(folder)
    if not verify:
        return status
    problems = cifar.verify_folder(folder, src)     # the data layer's own MD5 check
    status["verified"] = not problems
    status["problem"] = problems[0] if problems else None
    return status


def _image_folder_status(root: Path) -> dict[str, Any] | None:
    """Summary of an image-folder dataset (root/train/<class>/...), or None if root is not one."""
    from .data.folder import IMAGE_EXTENSIONS

    train = root / "train"
    if not train.is_dir():
        return None
    out: dict[str, Any] = {"path": str(root.resolve()), "splits": {}}
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            continue
        classes, images = 0, 0
        for entry in os.scandir(d):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            classes += 1
            for _dirpath, _dirs, files in os.walk(entry.path):
                images += sum(1 for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
        out["splits"][split] = {"classes": classes, "images": images}
    if not out["splits"].get("train", {}).get("classes"):
        return None
    return out


def data_info(data_dir: str | Path = "data", verify: bool = True) -> dict[str, Any]:
    """Which datasets are under `data_dir`, and where decoded image folders are cached."""
    from .data import folder as folder_mod

    root = Path(data_dir).expanduser()
    info: dict[str, Any] = {"data_dir": str(root.resolve()) if root.exists() else str(root),
                            "exists": root.is_dir(), "cifar10": None, "cifar100": None,
                            "image_folders": [],
                            "cache": {"folder_cache_dirname": folder_mod.CACHE_DIRNAME,
                                      "fallback_cache_dir": str(folder_mod._fallback_cache_dir())}}
    if not root.is_dir():
        return info
    info["cifar10"] = _cifar_status("cifar10", root, verify)
    info["cifar100"] = _cifar_status("cifar100", root, verify)
    candidates = [root] + sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                                 key=lambda p: p.name)
    for cand in candidates:
        try:
            st = _image_folder_status(cand)
        except OSError:
            st = None
        if st is not None:
            cache = cand / folder_mod.CACHE_DIRNAME
            st["cache"] = str(cache) if cache.is_dir() else None
            info["image_folders"].append(st)
    return info


# --- everything ------------------------------------------------------------------------------

def collect(device: str = "auto", data_dir: str | Path = "data", verify: bool = True) -> dict[str, Any]:
    """Everything `resnet-cifar env` reports, as one JSON-ready dict.

    device: "auto" checks every accelerator found; "cpu" skips them; "cuda" / "mps" raise
    UsageError (exit 2) when that accelerator is absent or fails its tensor check.
    """
    from .config import DEVICES

    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    from . import __version__

    check_cuda = device in ("auto", "cuda")
    check_mps = device in ("auto", "mps")
    info: dict[str, Any] = {
        "resnet_cifar": __version__,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "cpu": {"logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "bf16": _bf16_check("cpu"), "bf16_instructions": runtime.cpu_bf16_instructions(),
                "tensor_check": _tensor_check("cpu")},
        "cuda": cuda_info() if check_cuda else {"available": None, "skipped": f"--device {device}"},
        "mps": mps_info() if check_mps else {"available": None, "skipped": f"--device {device}"},
        "compile": compile_info(check_cuda and bool(torch.cuda.is_available())),
        "data": data_info(data_dir, verify=verify),
    }
    cuda = info["cuda"]
    if device == "cuda":
        if not cuda.get("available"):
            raise UsageError("--device cuda was asked for but CUDA is not available "
                             f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                             "install a CUDA build of torch and an NVIDIA driver, or use --device cpu")
        bad = [d for d in cuda["devices"] if not d["tensor_check"]["ok"]]
        if bad:
            raise UsageError(f"CUDA is available but a tensor operation on cuda:{bad[0]['index']} failed "
                             f"({bad[0]['tensor_check']['error']}); check the driver, or use --device cpu")
    if device == "mps" and not info["mps"].get("available"):
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu")
    info["recommended_device"] = ("cuda" if cuda.get("available") and all(d["tensor_check"]["ok"] for d in cuda["devices"])
                                  else "mps" if info["mps"].get("available") and info["mps"].get("tensor_check", {}).get("ok")
                                  else "cpu")
    return info
