"""Export a checkpoint to ONNX or TorchScript, then prove the file computes what PyTorch does.

The exported model takes normalised float32 images (N, 3, 32, 32), N free (dynamic batch axis),
and returns logits (N, classes); the checkpoint's mean/std and class names are returned alongside
so a deployment can normalise the same way (they are also stored in the ONNX metadata).

After exporting, the file is loaded back (onnxruntime for ONNX, torch.jit.load for TorchScript),
run on a batch of random normalised images of a batch size different from the one used for
tracing, and compared with the PyTorch model. Only a file that passes is moved onto `out`
(temp file + fsync + os.replace), so a failed export never leaves a file that looks good. An
existing `out` is replaced only with `force`, and never when it is the checkpoint itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from . import fsutil
from .errors import UsageError, WorkError, describe

FORMATS = ("onnx", "torchscript")
ONNX_EXTRA = "pip install 'resnet-cifar[onnx]'"
# Absolute tolerance on logits, relative to their scale: fp32 kernels of different libraries
# (oneDNN vs ONNX Runtime's MLAS) differ around 1e-6..1e-5 for these models.
ATOL = 1e-4
RTOL = 1e-4


def infer_format(out: str | Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise UsageError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
        return fmt
    suffix = Path(out).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".ts", ".torchscript", ".pt", ".jit"):
        return "torchscript"
    raise UsageError(f"cannot tell the format from {str(out)!r}; pass --format onnx|torchscript")


def _require_onnx(need_exporter: bool = True):
    missing = []
    for mod in (["onnx", "onnxscript"] if need_exporter else []) + ["onnxruntime"]:
        try:
            __import__(mod)
        except Exception:  # absent or broken install: same advice
            missing.append(mod)
    if missing:
        raise UsageError(f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         f"not installed; run: {ONNX_EXTRA}")


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, meta: dict[str, str]) -> tuple[bytes, str]:
    """ONNX bytes via the torch.export-based exporter; the TorchScript-based one if that fails."""
    import onnx

    errors = []
    data = None
    exporter = "dynamo"
    try:
        batch = torch.export.Dim("batch", min=1, max=65536)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                        output_names=["logits"], dynamic_shapes=({0: batch},),
                                        external_data=False, verbose=False)
        proto = program.model_proto
    except Exception as e:  # try the older exporter before giving up
        errors.append(f"dynamo exporter: {describe(e)}")
        exporter = "torchscript-based"
        try:
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["images"],
                                  output_names=["logits"], opset_version=17,
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
            proto = onnx.load_from_string(buf.getvalue())
        except Exception as e2:
            errors.append(f"torchscript-based exporter: {describe(e2)}")
            raise WorkError(f"ONNX export failed ({'; '.join(errors)[:400]}); try --format torchscript") from None
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    data = proto.SerializeToString()
    return data, exporter


def _run_onnx(data: bytes, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, meta: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit is deprecated in favour of torch.export, still works
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, buf, _extra_files={k: v.encode() for k, v in meta.items()})
    return buf.getvalue()


def _run_torchscript(data: bytes, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
        with torch.no_grad():
            return loaded(x)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' chatter (warnings, INFO logs of torch.onnx/onnxscript) for the
    duration of one export only; errors still propagate as exceptions."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def check_paths(checkpoint: str | Path, out: Path, fmt: str, force: bool) -> None:
    """Refuse (UsageError) an --out that is a directory, the input itself, or an existing file
    without `force`. Runs before the checkpoint is read, so nothing is touched on refusal."""
    src = Path(checkpoint)
    if src.is_dir():
        src = src / "checkpoints" / "best.pt"
    if out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a directory; give a file name (e.g. model.{'onnx' if fmt == 'onnx' else 'ts'})")
    if out.exists() or out.is_symlink():
        try:
            same = src.exists() and os.path.samefile(src, out)
        except OSError:
            same = False
        if same or out.resolve() == src.resolve():
            raise UsageError(f"--out {str(out)!r} is the checkpoint being exported; choose another file name")
        if not force:
            raise UsageError(f"--out {str(out)!r} already exists; pass --force to replace it, or choose another name")


def _check_against_pytorch(model, state, fmt: str, check_batch: int, seed: int, meta: dict) -> dict[str, Any]:
    """Export, reload, compare on random images; returns {"data", "exporter", "diff", "reference"}."""
    from .data.loader import normalize

    g = torch.Generator().manual_seed(seed)
    example = normalize(torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8),
                        state["mean"], state["std"], channels_last=False)
    # Checked at another batch size than the one traced with: proves the batch axis is dynamic.
    check = normalize(torch.randint(0, 256, (check_batch, 3, 32, 32), generator=g, dtype=torch.uint8),
                      state["mean"], state["std"], channels_last=False)
    with torch.no_grad():
        reference = model(check)
    try:
        with _quiet():
            if fmt == "onnx":
                data, exporter = _export_onnx(model, example, meta)
                got = _run_onnx(data, check)
            else:
                data, exporter = _export_torchscript(model, example, meta), "torch.jit.trace"
                got = _run_torchscript(data, check)
    except (WorkError, UsageError):
        raise
    except Exception as e:  # export or reload failed: one line, no traceback
        raise WorkError(f"{fmt} export of {state['path']} failed ({describe(e, 300)})") from None
    if got.shape != reference.shape:
        raise WorkError(f"the exported {fmt} model returned shape {tuple(got.shape)}, PyTorch "
                        f"{tuple(reference.shape)}; nothing was written")
    return {"data": data, "exporter": exporter, "reference": reference,
            "diff": float((got.float() - reference.float()).abs().max())}


def export(checkpoint: str | Path, out: str | Path, fmt: str | None = None, *, check_batch: int = 5,
           seed: int = 0, atol: float = ATOL, rtol: float = RTOL, force: bool = False, model: str | None = None,
           mean=None, std=None) -> dict[str, Any]:
    """Export `checkpoint` to `out`; returns {"format", "out", "bytes", "max_abs_diff", "tolerance", ...}.

    Raises UsageError for a bad format, a missing ONNX extra, an `out` that is the checkpoint or
    exists (without `force`); WorkError when the export fails or the reloaded model differs from
    PyTorch by more than atol + rtol * max|logit|. model/mean/std: for another tool's checkpoint
    (`checkpoint.load_any`).
    """
    import json

    from .checkpoint import build_from_checkpoint, load_any

    out = Path(out)
    fmt = infer_format(out, fmt)
    if fmt == "onnx":
        with _quiet():
            _require_onnx()
    check_paths(checkpoint, out, fmt, force)
    state = load_any(checkpoint, model=model, mean=mean, std=std)
    model = build_from_checkpoint(state, device="cpu")
    classes, mean, std = [str(c) for c in state["classes"]], [float(v) for v in state["mean"]], [float(v) for v in state["std"]]
    meta = {"resnet_cifar.classes": json.dumps(classes), "resnet_cifar.mean": json.dumps(mean),
            "resnet_cifar.std": json.dumps(std), "resnet_cifar.model_args": json.dumps(dict(state["model_args"])),
            "resnet_cifar.input": "float32 (N, 3, 32, 32), RGB in [0, 1], normalised (x - mean) / std"}
    r = _check_against_pytorch(model, state, fmt, check_batch, seed, meta)
    tolerance = atol + rtol * float(r["reference"].abs().max())
    if not r["diff"] <= tolerance:   # also catches NaN
        raise WorkError(f"the exported {fmt} model differs from PyTorch by {r['diff']:.3g} (tolerance "
                        f"{tolerance:.3g}) on {check_batch} random images; nothing was written")
    fsutil.write_bytes(out, r["data"], what=f"file at {out}")
    return {"format": fmt, "exporter": r["exporter"], "out": str(out), "bytes": len(r["data"]),
            "checkpoint": state["path"], "model_args": dict(state["model_args"]),
            "classes": classes, "mean": mean, "std": std, "check_batch": check_batch,
            "max_abs_diff": r["diff"], "tolerance": tolerance,
            "input": {"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", len(classes)]}}
