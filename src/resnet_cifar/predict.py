"""Classify image files with a trained checkpoint.

Each file goes through the data layer's own `load_image` (the same conversion to 32x32 RGB as the
training folders: EXIF orientation, alpha on black, 16-bit scaled, stretched to 32x32) and is
normalised with the mean/std stored in the checkpoint, so a prediction sees what training saw.
A file that cannot be read gets its own error entry; the others are still answered, in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ResnetCifarError, UsageError, describe


def _error_text(e: BaseException) -> str:
    if isinstance(e, ResnetCifarError):
        return str(e)
    return describe(e)


def load_images(paths: list[str | Path]) -> list[dict[str, Any]]:
    """[{"file", "pixels": uint8 (32,32,3) | None, "resized": bool, "error": str | None}] in order."""
    from .data.folder import load_image

    out = []
    for p in paths:
        entry: dict[str, Any] = {"file": str(p), "pixels": None, "resized": False, "error": None}
        try:
            arr, resized = load_image(p)
            entry["pixels"], entry["resized"] = arr, bool(resized)
        except Exception as e:  # any failure belongs to this file only
            entry["error"] = _error_text(e)
        out.append(entry)
    return out


@torch.no_grad()
def classify(model: torch.nn.Module, pixels: np.ndarray | torch.Tensor, mean, std, *,
             device: torch.device | str = "cpu", batch_size: int = 256) -> torch.Tensor:
    """Softmax probabilities (N, classes) for uint8 images (N,32,32,3) HWC or (N,3,32,32) CHW."""
    from .data.loader import normalize

    x = torch.as_tensor(pixels)
    if x.dim() == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    x = x.contiguous()
    probs = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i:i + batch_size].to(device), mean, std, channels_last=False)
        probs.append(torch.softmax(model(xb).float(), dim=1).cpu())
    return torch.cat(probs) if probs else torch.empty(0)


def predict_files(checkpoint: str | Path, images: list[str | Path], *, topk: int = 3,
                  device: str = "auto", model: str | None = None, mean=None, std=None) -> dict[str, Any]:
    """Top-k classes for each image file.

    Returns {"checkpoint", "model", "classes", "device", "predictions": [{"file", "top":
    [{"class", "index", "prob"}], "resized", "error"}]} with predictions in the order of `images`;
    a failed file has "top": [] and its error line. model/mean/std: for another tool's checkpoint
    (`checkpoint.load_any`).
    """
    from .checkpoint import build_from_checkpoint, load_any
    from .runtime import pick_device

    if topk < 1:
        raise UsageError(f"--topk must be at least 1, got {topk}")
    if not images:
        raise UsageError("no images given; pass one or more image files after the checkpoint")
    dev = pick_device(device)
    state = load_any(checkpoint, model=model, mean=mean, std=std)
    model = build_from_checkpoint(state, device=dev)
    classes = [str(c) for c in state["classes"]]
    mean, std = tuple(float(v) for v in state["mean"]), tuple(float(v) for v in state["std"])
    k = min(topk, len(classes))

    entries = load_images(images)
    good = [e for e in entries if e["error"] is None]
    if good:
        probs = classify(model, np.stack([e["pixels"] for e in good]), mean, std, device=dev)
        values, indices = probs.topk(k, dim=1)
        for e, v, i in zip(good, values.tolist(), indices.tolist(), strict=True):
            e["top"] = [{"class": classes[j], "index": int(j), "prob": float(p)} for p, j in zip(v, i, strict=True)]
    predictions = [{"file": e["file"], "top": e.get("top", []), "resized": e["resized"],
                    "error": e["error"]} for e in entries]
    return {"checkpoint": state.get("path", str(checkpoint)), "model": dict(state["model_args"]),
            "classes": classes, "device": str(dev), "predictions": predictions}
