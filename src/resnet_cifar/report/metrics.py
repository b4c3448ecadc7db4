"""Reading what the trainer left in a run directory: metrics.csv, results.json, config.yaml,
predictions.npz. Everything comes back as plain data (lists, dicts, numpy arrays).

Missing optional files come back as None so the report can render whatever exists (a run that is
still training has metrics.csv but no results.json yet). A file that exists but cannot be parsed is
a WorkError naming the file.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError, WorkError, first_line

METRICS_FILE = "metrics.csv"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"
PREDICTIONS_FILE = "predictions.npz"
MULTISEED_FILE = "summary.json"

# Columns written by the trainer; anything else in the header is kept as-is.
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "swa_val_acc",
                  "ema_val_acc", "epoch_seconds", "images_per_s", "elapsed_seconds")


def check_run_dir(run_dir: str | Path) -> Path:
    """The run directory as a Path, or UsageError when it is missing or holds no run."""
    p = Path(run_dir)
    if not p.exists():
        raise UsageError(f"run directory {str(p)!r} does not exist; pass the directory a training "
                         f"run wrote (it holds metrics.csv and results.json)")
    if not p.is_dir():
        raise UsageError(f"{str(p)!r} is not a directory; pass the run directory, not a file in it")
    if not any((p / name).is_file() for name in (METRICS_FILE, RESULTS_FILE, MULTISEED_FILE)):
        raise UsageError(f"{str(p)!r} is not a run directory (no {METRICS_FILE}, {RESULTS_FILE} "
                         f"or {MULTISEED_FILE}); pass the directory a training run wrote")
    return p


def _cell(value: str) -> float | None:
    value = value.strip()
    if value == "":
        return None
    try:
        return float(value)  # "nan"/"inf" stay non-finite on purpose: diagnosis looks for them
    except ValueError:
        raise ValueError(f"not a number: {value!r}") from None


def read_metrics(path: str | Path) -> list[dict[str, Any]] | None:
    """metrics.csv as a list of rows {column: float | None}, epoch as int; None if absent."""
    p = Path(path)
    if not p.is_file():
        return None
    rows = []
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "epoch" not in reader.fieldnames:
            raise WorkError(f"{p} has no 'epoch' column; it is not a metrics.csv written by "
                            f"resnet-cifar train (rerun training or fix the header)")
        for line_no, raw in enumerate(reader, start=2):
            try:
                row = {k: _cell(v or "") for k, v in raw.items() if k is not None}
            except ValueError as e:
                raise WorkError(f"{p}:{line_no}: {e}; fix or delete that row") from None
            if row.get("epoch") is None:
                continue  # a half-written last line of a run killed mid-write
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    return rows


def read_json(path: str | Path) -> dict[str, Any] | None:
    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise WorkError(f"{p} is not valid JSON ({e}); rerun the step that wrote it") from None
    if not isinstance(data, dict):
        raise WorkError(f"{p} holds a {type(data).__name__}, expected an object; rerun the step "
                        f"that wrote it")
    return data


def read_config(path: str | Path) -> dict[str, Any] | None:
    """config.yaml as a dict (YAML; JSON is valid YAML too); None if absent."""
    p = Path(path)
    if not p.is_file():
        return None
    import yaml  # only needed here

    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise WorkError(f"{p} is not valid YAML ({first_line(e, empty=type(e).__name__)}); rerun training or "
                        f"fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WorkError(f"{p} holds a {type(data).__name__}, expected a mapping; fix the file")
    return data


def read_predictions(path: str | Path) -> dict[str, Any] | None:
    """predictions.npz as {probs (N,C) float, labels (N,) int64, indices (N,) int64, split str};
    None if absent; WorkError if the arrays do not fit together."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/ValueError/OSError: all mean "not a readable npz"
        raise WorkError(f"{p} cannot be read ({e}); rerun `resnet-cifar evaluate` to rewrite it") from None
    missing = [k for k in ("probs", "labels") if k not in data]
    if missing:
        raise WorkError(f"{p} lacks {', '.join(missing)}; rerun `resnet-cifar evaluate` to rewrite it")
    probs = np.asarray(data["probs"], dtype=np.float64)
    labels = np.asarray(data["labels"]).astype(np.int64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise WorkError(f"{p}: probs {probs.shape} and labels {labels.shape} do not fit "
                        f"(expected (N, C) and (N,)); rerun `resnet-cifar evaluate`")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise WorkError(f"{p}: labels outside 0..{probs.shape[1] - 1}; rerun `resnet-cifar evaluate`")
    indices = data.get("indices")
    indices = (np.asarray(indices).astype(np.int64) if indices is not None
               else np.arange(len(labels), dtype=np.int64))
    split = data.get("split")
    split = str(split.item()) if split is not None and split.shape == () else None
    return {"probs": probs, "labels": labels, "indices": indices, "split": split}


def column(rows: list[dict[str, Any]], name: str) -> list[float | None]:
    """One metrics column, None where the cell was empty or the column is absent."""
    return [r.get(name) for r in rows]


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
