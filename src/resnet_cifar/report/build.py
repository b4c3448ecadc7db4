"""Put a run's report together: read the run directory, compute every number (analyse_run), draw
the figures, write RUN_DIR/report/{index.html, summary.json, confusion.csv, *.png}. The folder is
built beside the old one and takes its place only when complete (write_report_dir).

A multi-seed directory (RUN_DIR/summary.json listing per-seed run dirs) gets each seed's report
(built when missing) and a summary page linking to them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import fsutil
from ..errors import ResnetCifarError, UsageError, WorkError, first_line
from . import calibration, confusion, diagnosis, examples, metrics, seeds_page

REPORT_DIR = "report"
# Figures and data files this module writes. A rebuild makes a fresh folder, so a figure that can
# no longer be drawn (e.g. the images moved away) does not linger; other files are carried over.
FIGURES = ("loss.png", "accuracy.png", "lr.png", "confusion.png", "reliability.png",
           "mistakes.png", "least_confident.png")
DATA_FILES = ("confusion.csv", "summary.json", "index.html")
TOP_PAIRS = 10
# results.json and predictions.npz are written by the same evaluation; a larger difference than
# rounding means one of them is stale.
CONSISTENCY_TOLERANCE = 1e-3

Log = Callable[[str], None] | None


def _say(log: Log, message: str) -> None:
    if log is not None:
        log(message)


def _images_array(images) -> np.ndarray:
    """Accept a torch tensor or anything numpy can take; the report only reads it."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise UsageError(f"images must be uint8 (N, 3, H, W), got dtype {a.dtype}; pass the "
                         f"dataset's uint8 tensor")
    return a


def _is_dataset(x) -> bool:
    return hasattr(x, "train_x") and hasattr(x, "classes")


def load_eval_images(config: dict | None, predictions: dict, eval_split: str | None,
                     log: Log = None, dataset=None) -> tuple[np.ndarray | None, str | None]:
    """The eval images aligned with the prediction rows, or (None, why they are missing).

    dataset: the loaded Dataset the run trained on (train passes it, so nothing is read twice);
    otherwise the one config.yaml names is loaded. Never downloads: a report must not fetch 170 MB
    because the data moved. Any failure to load becomes the reason shown in place of the grids,
    since the rest of the report stands without them.
    """
    if not config or not config.get("dataset"):
        return None, "config.yaml is missing or names no dataset, so the images cannot be found."
    name, data_dir = config["dataset"], config.get("data_dir", "data")
    ds = dataset
    if ds is None:
        try:
            from ..data import load_dataset
        except ImportError:
            return None, "this installation has no dataset loader (resnet_cifar.data.load_dataset)."
        _say(log, f"report: loading {name} images from {data_dir}")
        try:
            ds = load_dataset(name, data_dir, download=False, log=log)
        # Any exception: the data may be gone, corrupt or of another version; the report still
        # renders, and the message says what happened.
        except Exception as e:
            msg = first_line(e, empty=type(e).__name__)
            return None, (f"the {name} images could not be loaded from {data_dir!r} ({msg}). Put the "
                          f"data back there, or rebuild with build_report(run_dir, images=...).")
    split = predictions.get("split") or eval_split or "test"
    source = ds.test_x if split == "test" else ds.train_x
    if source is None:
        return None, f"the {name} dataset at {data_dir!r} has no {split} split to take images from."
    source = _images_array(source)
    idx = predictions["indices"]
    if idx.size and (idx.min() < 0 or idx.max() >= len(source)):
        return None, (f"predictions.npz points at image {int(idx.max())} but the {split} split at "
                      f"{data_dir!r} holds {len(source)}; the data changed since training.")
    return source[idx], None


def _class_names(results: dict, config: dict, num_classes: int, notes: list[str]) -> list[str]:
    names = results.get("classes")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    if names:
        notes.append(f"results.json lists {len(names)} classes but predictions.npz has "
                     f"{num_classes}; classes are shown by number.")
    return [str(i) for i in range(num_classes)]


def _eval_images(images, config, preds, results, n: int, log: Log):
    """(images aligned with the prediction rows or None, why they are missing or None)."""
    if images is not None and _is_dataset(images):
        return load_eval_images(config, preds, results.get("eval_split"), log, dataset=images)
    if images is not None:
        imgs = _images_array(images)
        if len(imgs) != n:
            raise UsageError(f"images has {len(imgs)} rows but predictions.npz has {n}; pass "
                             f"the eval images in prediction order")
        return imgs, None
    return load_eval_images(config, preds, results.get("eval_split"), log)


def _analyse_eval(preds: dict, results: dict, config: dict, notes: list[str]) -> dict[str, Any]:
    """classes, eval, calibration and examples of the predictions (see analyse_run)."""
    probs, labels = preds["probs"], preds["labels"]
    c = probs.shape[1]
    classes = _class_names(results, config, c, notes)
    cm = confusion.confusion_matrix(labels, probs.argmax(axis=1), c)
    n = int(len(labels))
    acc = float(np.trace(cm) / n) if n else None
    split = preds.get("split") or results.get("eval_split")
    # eval_acc: accuracy on whichever split predictions.npz holds; older results only test_acc
    ref = results.get("eval_acc")
    if ref is None and split == "test":
        ref = results.get("test_acc")
    if acc is not None and metrics.finite(ref) and abs(acc - ref) > CONSISTENCY_TOLERANCE:
        notes.append(f"predictions.npz gives {100 * acc:.2f}% on the {split} split but "
                     f"results.json says {100 * ref:.2f}%; one of them is stale "
                     f"(rerun `resnet-cifar evaluate`).")
    return {"classes": classes,
            "eval": {"split": split, "n": n, "accuracy": acc, "confusion": cm,
                     "per_class": confusion.per_class_metrics(cm, classes),
                     "top_confused": confusion.top_confused_pairs(cm, classes, TOP_PAIRS)},
            "calibration": calibration.reliability(probs, labels),
            "examples": {"mistakes": examples.most_confident_mistakes(probs, labels),
                         "least_confident_correct": examples.least_confident_correct(probs, labels)}}


def analyse_run(run_dir: str | Path, images=None, log: Log = None) -> dict[str, Any]:
    """Every number the report shows, as plain data (no drawing, no files written).

    Keys: run_dir, config, rows, results, predictions (arrays, or None), classes, eval (split,
    n, accuracy, confusion, per_class, top_confused), calibration, examples, images (array or
    None), images_missing (reason or None), lr_cuts, diagnosis, notes.
    """
    run = metrics.check_run_dir(run_dir)
    config = metrics.read_config(run / metrics.CONFIG_FILE) or {}
    rows = metrics.read_metrics(run / metrics.METRICS_FILE) or []
    results = metrics.read_json(run / metrics.RESULTS_FILE) or {}
    preds = metrics.read_predictions(run / metrics.PREDICTIONS_FILE)
    notes: list[str] = []
    if not (run / metrics.RESULTS_FILE).is_file():
        notes.append("results.json is missing (training still running, or it stopped before the "
                     "end); final numbers are not available.")
    out: dict[str, Any] = {"run_dir": str(run), "config": config, "rows": rows, "results": results,
                           "predictions": preds, "classes": [str(c) for c in results.get("classes") or []],
                           "eval": None, "calibration": None, "examples": None, "images": None,
                           "images_missing": None, "notes": notes}
    if preds is None:
        out["images_missing"] = "predictions.npz is missing, so there are no eval predictions to show."
    else:
        out.update(_analyse_eval(preds, results, config, notes))
        out["images"], out["images_missing"] = _eval_images(images, config, preds, results,
                                                            out["eval"]["n"], log)
    out["lr_cuts"] = diagnosis.lr_cuts(rows, config)
    out["diagnosis"] = diagnosis.diagnose(rows, results, config)
    return out


def _jsonable(x):
    """numpy -> Python, non-finite floats -> None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def summary_data(a: dict[str, Any], figures: dict[str, str]) -> dict[str, Any]:
    """What report/summary.json holds: everything computed, nothing that needs the images."""
    return _jsonable({
        "run_dir": a["run_dir"],
        "results": a["results"],
        "config": a["config"],
        "eval": a["eval"],
        "calibration": a["calibration"],
        "examples": a["examples"],
        "lr_cuts": a["lr_cuts"],
        "diagnosis": a["diagnosis"],
        "figures": figures,
        "images_missing": a["images_missing"],
        "notes": a["notes"],
    })


def _draw(a: dict[str, Any], out: Path, log: Log) -> dict[str, str]:
    """Draw every figure the data allows; returns {figure name: file name}."""
    from . import plots

    figs: dict[str, str] = {}
    rows, cuts = a["rows"], a["lr_cuts"]
    test_acc = a["results"].get("test_acc")
    if rows:
        _say(log, "report: drawing curves")
        figs["loss"] = plots.plot_loss(rows, out / "loss.png", cuts).name
        figs["accuracy"] = plots.plot_accuracy(
            rows, out / "accuracy.png", cuts, test_acc if metrics.finite(test_acc) else None).name
        if any(metrics.finite(r.get("lr")) for r in rows):
            figs["lr"] = plots.plot_lr(rows, out / "lr.png", cuts).name
    if a["eval"] is not None:
        _say(log, "report: drawing confusion matrix and calibration")
        figs["confusion"] = plots.plot_confusion(a["eval"]["confusion"], a["classes"],
                                                 out / "confusion.png").name
        figs["reliability"] = plots.plot_reliability(a["calibration"], out / "reliability.png").name
        if a["images"] is not None:
            _say(log, "report: drawing example images")
            ex = a["examples"]
            if ex["mistakes"]:
                figs["mistakes"] = plots.plot_image_grid(
                    a["images"], ex["mistakes"], a["classes"], out / "mistakes.png",
                    "Most confident mistakes").name
            if ex["least_confident_correct"]:
                figs["least_confident"] = plots.plot_image_grid(
                    a["images"], ex["least_confident_correct"], a["classes"],
                    out / "least_confident.png",
                    "Least confident correct predictions").name
    return figs


def _run_files(run: Path) -> list[tuple[str, str]]:
    """(label, href relative to report/) for the run's files that exist."""
    files = []
    for name in (metrics.METRICS_FILE, metrics.RESULTS_FILE, metrics.CONFIG_FILE,
                 metrics.PREDICTIONS_FILE):
        if (run / name).is_file():
            files.append((name, f"../{name}"))
    files.append(("confusion.csv", "confusion.csv"))
    files.append(("summary.json (all numbers of this report)", "summary.json"))
    for pt in sorted(run.glob("*.pt")) + sorted(run.glob("checkpoints/*.pt")):
        rel = pt.relative_to(run).as_posix()
        files.append((rel, f"../{rel}"))
    return files


def _carry_foreign(old: Path, new: Path) -> None:
    """Copy files a user put into the old report folder (not ours) into the new one."""
    if not old.is_dir():
        return
    for p in old.iterdir():
        if p.name in FIGURES + DATA_FILES or (new / p.name).exists():
            continue
        if p.is_file() and not p.is_symlink():
            shutil.copy2(p, new / p.name)
        elif p.is_dir() and not p.is_symlink():
            shutil.copytree(p, new / p.name, symlinks=True)


def write_report_dir(final: Path, fill: Callable[[Path], None]) -> None:
    """Build a report folder in a temp folder beside `final` with `fill(tmp)`; only when it is
    complete does it replace `final`. Any failure (a full disk, a signal) leaves the old report as
    it was and removes the temp folder; an OSError becomes one WorkError line."""
    fsutil.remove_leftover_dirs(final.parent, final.name)   # of a build that was killed
    tmp = None
    try:
        tmp = fsutil.temp_dir_beside(final)
        fill(tmp)
        _carry_foreign(final, tmp)
        fsutil.replace_dir(tmp, final)
    except OSError as e:
        raise WorkError(f"cannot write the report into {final} ({e.strerror or e}); the previous report "
                        f"is intact (free disk space or check the directory is writable)") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_run_report(run_dir: str | Path, images=None, log: Log = None) -> Path:
    """One run's report; returns the path of report/index.html."""
    from . import html

    a = analyse_run(run_dir, images=images, log=log)
    run = Path(a["run_dir"])
    final = run / REPORT_DIR

    def fill(out: Path) -> None:
        figs = _draw(a, out, log)
        if a["eval"] is not None:
            confusion.write_confusion_csv(a["eval"]["confusion"], a["classes"], out / "confusion.csv")
        files = [f for f in _run_files(run) if f[0] != "confusion.csv" or a["eval"] is not None]
        (out / "summary.json").write_text(json.dumps(summary_data(a, figs), indent=1), encoding="utf-8")
        (out / "index.html").write_text(html.render_run_page(a, figs, out, files), encoding="utf-8")

    write_report_dir(final, fill)
    _say(log, f"report: wrote {final / 'index.html'}")
    return final / "index.html"


def is_multiseed(run_dir: str | Path) -> bool:
    p = Path(run_dir) / metrics.MULTISEED_FILE
    if not p.is_file():
        return False
    data = metrics.read_json(p)
    return isinstance(data.get("runs"), list)


def build_multiseed_report(run_dir: str | Path, log: Log = None, force: bool = False) -> Path:
    """Each seed's report (built if missing, or always with force) and a summary page."""
    run = metrics.check_run_dir(run_dir)
    summary = metrics.read_json(run / metrics.MULTISEED_FILE)
    if not isinstance(summary.get("runs"), list):
        raise WorkError(f"{run / metrics.MULTISEED_FILE} has no 'runs' list; rerun the multi-seed "
                        f"training or fix the file")
    seeds = []
    for entry in summary["runs"]:
        entry = entry if isinstance(entry, dict) else {}
        seed_dir = run / str(entry.get("dir", ""))
        item = {"seed": entry.get("seed"), "dir": entry.get("dir"),
                "test_acc": entry.get("test_acc"), "best_val_acc": entry.get("best_val_acc"),
                "report": None, "error": None, "diagnosis": []}
        index = seed_dir / REPORT_DIR / "index.html"
        try:
            if force or not index.is_file():
                _say(log, f"report: building the report of {seed_dir.name}")
                index = build_run_report(seed_dir, log=log)
            item["report"] = index.relative_to(run).as_posix()
            seed_summary = metrics.read_json(index.parent / "summary.json") or {}
            item["diagnosis"] = [{"id": f["id"], "severity": f["severity"], "title": f["title"]}
                                 for f in seed_summary.get("diagnosis") or []]
            item["ece"] = (seed_summary.get("calibration") or {}).get("ece")
            seed_results = seed_summary.get("results") or {}
            for key in ("best_epoch", "selected", "train_seconds", "test_acc_tta"):
                item[key] = seed_results.get(key)
        except ResnetCifarError as e:
            # one broken seed must not hide the others: the table says what is wrong with it
            item["error"] = str(e)
        seeds.append(item)
    data = _jsonable({"run_dir": str(run), "metric": summary.get("metric"),
                      "mean": summary.get("mean"), "std": summary.get("std"),
                      "seeds": seeds, "source": summary})

    def fill(out: Path) -> None:
        (out / "summary.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
        (out / "index.html").write_text(seeds_page.render_multiseed_page(data), encoding="utf-8")

    write_report_dir(run / REPORT_DIR, fill)
    return run / REPORT_DIR / "index.html"


def build_report(run_dir: str | Path, images=None, log: Log = None, force: bool = False) -> Path:
    """Build RUN_DIR/report/ and return the path of its index.html.

    images: optional uint8 (N, 3, H, W) array/tensor aligned with predictions.npz rows, or the
    loaded Dataset the run trained on (the rows are taken from it); by default the images are
    loaded from the dataset named in config.yaml (never downloaded).
    log: optional callable taking one progress line.
    force: for a multi-seed directory, rebuild seed reports that already exist.
    """
    run = metrics.check_run_dir(run_dir)
    if is_multiseed(run) and not (run / metrics.METRICS_FILE).is_file():
        if images is not None:
            raise UsageError("images= applies to one run, not a multi-seed directory; pass a "
                             "seed's directory instead")
        return build_multiseed_report(run, log=log, force=force)
    if not any((run / f).is_file() for f in (metrics.METRICS_FILE, metrics.RESULTS_FILE)):
        raise UsageError(f"{str(run)!r} is not a run directory (no {metrics.METRICS_FILE} or "
                         f"{metrics.RESULTS_FILE}, and its summary.json lists no runs); pass the "
                         f"directory a training run wrote")
    return build_run_report(run, images=images, log=log)
