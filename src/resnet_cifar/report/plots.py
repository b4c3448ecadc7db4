"""Figures as PNG files. Each function takes data computed elsewhere and a path, draws, saves,
returns the path. No numbers are computed here beyond what drawing needs.

Figures are built with matplotlib's object API on an explicit Agg canvas rather than pyplot: that
chooses the Agg backend for these figures only (no display needed, nothing changed for a caller who
uses pyplot interactively) and leaves no global figure state behind to leak memory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110
UPSCALE = 4          # 32x32 -> 128x128, nearest neighbour, so the pixels stay honest
GRID_COLUMNS = 4   # two grids side by side on a desktop, one readable grid on a phone
ANNOTATE_MAX_CLASSES = 20  # above this the confusion cells are too small for numbers
COLOURS = {"train": "#1f77b4", "val": "#d62728", "swa": "#2ca02c", "ema": "#9467bd",
           "test": "#444444", "lr": "#ff7f0e"}


def _figure(width: float, height: float, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    p = Path(path)
    fig.savefig(p, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return p


def _marker(rows):
    # dots help read a short run epoch by epoch; on a long one they only blur the line
    return "o" if len(rows) <= 25 else None


def _xy(rows, name, scale=1.0):
    pts = [(r["epoch"], r[name] * scale) for r in rows
           if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
    return ([e for e, _ in pts], [v for _, v in pts]) if pts else None


def _mark_cuts(ax, cuts, rows):
    """A dotted line between the last epoch at the old lr and the first at the new one; a cut
    after the last epoch changed nothing and would only stretch the axis."""
    last = rows[-1]["epoch"] if rows else 0
    shown = [c for c in cuts or [] if c["epoch"] < last]
    for i, c in enumerate(shown):
        ax.axvline(c["epoch"] + 0.5, color=COLOURS["lr"], linestyle=":", linewidth=1,
                   label="lr cut" if i == 0 else None)


def plain(text: str) -> str:
    """Text from a file (a class name) shown as written: matplotlib reads `$...$` as TeX math,
    and a name like `$_$` would fail to render; `\\$` is its literal dollar sign."""
    return str(text).replace("$", r"\$")


def _short(name: str, limit: int) -> str:
    return plain(name if len(name) <= limit else name[:limit - 1] + "…")


def _epoch_axis(ax, rows):
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    epochs = sorted({r["epoch"] for r in rows if isinstance(r.get("epoch"), (int, float))})
    if len(epochs) == 1:   # one point: MaxNLocator would label 0.945 .. 1.050
        ax.set_xticks(epochs)
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_loss(rows, path, cuts=None) -> Path:
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    for name, label, colour in (("train_loss", "train", COLOURS["train"]),
                                ("val_loss", "validation", COLOURS["val"])):
        xy = _xy(rows, name)
        if xy:
            ax.plot(*xy, label=label, color=colour, marker=_marker(rows), ms=3)
    _mark_cuts(ax, cuts, rows)
    vals = [v for name in ("train_loss", "val_loss") for v in ((_xy(rows, name) or ([], []))[1])]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 50:
        ax.set_yscale("log")  # a diverging loss would flatten the rest of the curve to a line
    ax.set_title("Loss")
    ax.set_ylabel("cross-entropy")
    _epoch_axis(ax, rows)
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def plot_accuracy(rows, path, cuts=None, test_acc=None) -> Path:
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    for name, label, colour in (("train_acc", "train", COLOURS["train"]),
                                ("val_acc", "validation", COLOURS["val"]),
                                ("swa_val_acc", "validation (SWA)", COLOURS["swa"]),
                                ("ema_val_acc", "validation (EMA)", COLOURS["ema"])):
        xy = _xy(rows, name, 100)
        if xy:
            ax.plot(*xy, label=label, color=colour, marker=_marker(rows), ms=3)
    if test_acc is not None and math.isfinite(test_acc):
        ax.axhline(100 * test_acc, color=COLOURS["test"], linestyle="--", linewidth=1,
                   label=f"test {100 * test_acc:.2f}%")
    _mark_cuts(ax, cuts, rows)
    ax.set_title("Accuracy")
    ax.set_ylabel("%")
    _epoch_axis(ax, rows)
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def plot_lr(rows, path, cuts=None) -> Path:
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    xy = _xy(rows, "lr")
    if xy:
        ax.plot(*xy, color=COLOURS["lr"], marker=_marker(rows), ms=3)
        positive = [v for v in xy[1] if v > 0]
        if len(positive) == len(xy[1]) and max(positive) / min(positive) >= 20:
            ax.set_yscale("log")  # step schedules span decades; linear hides the later steps
    for c in cuts or []:
        ax.annotate(f"{c['before']:.2g}→{c['after']:.2g}" + (" (SWA)" if c.get("kind") == "swa" else ""), (c["epoch"], c["after"]),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_title("Learning rate (end of epoch)")
    ax.set_ylabel("lr")
    _epoch_axis(ax, rows)
    return _save(fig, path)


def plot_confusion(cm, classes, path) -> Path:
    cm = np.asarray(cm, dtype=np.int64)
    c = len(classes)
    row_sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)
    side = min(max(5.0, 0.75 * c + 2.0), 16.0)
    fig = _figure(side, side * 0.9)
    ax = fig.add_subplot()
    im = ax.imshow(norm * 100, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label("% of the true class (row)")
    small = c > ANNOTATE_MAX_CLASSES
    labels = [_short(name, 14) for name in classes]
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(labels, rotation=90 if small else 45, ha="center" if small else "right",
                       fontsize=5 if small else 9)
    ax.set_yticklabels(labels, fontsize=5 if small else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({int(cm.sum())} images; "
                 + ("colour = % of the true class)" if small else "counts and row %)"))
    if not small:
        for t in range(c):
            for p in range(c):
                if cm[t, p] == 0:
                    continue
                ax.text(p, t, f"{cm[t, p]}\n{100 * norm[t, p]:.0f}%", ha="center", va="center",
                        fontsize=7, color="white" if norm[t, p] > 0.5 else "black")
    return _save(fig, path)


def _to_hwc(img) -> np.ndarray:
    """One image as (H, W, 3) uint8 from (3, H, W) or (1, H, W) (the dataset layout) or HWC."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    elif a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a.astype(np.uint8)


def plot_image_grid(images, items: list[dict[str, Any]], classes, path, title: str) -> Path:
    """images[item["row"]] for each item, captioned "true / pred conf"; items come from
    examples.py, in the order to show.

    The cells are pasted into one canvas shown by one imshow at 1:1 pixels (a subplot per image
    costs ~20x the time for the same picture); a coloured frame marks right (green) or wrong (red).
    """
    n = len(items)
    cols = min(GRID_COLUMNS, max(n, 1))
    nrows = max(1, math.ceil(n / cols))
    first = _to_hwc(images[items[0]["row"]]) if items else np.zeros((32, 32, 3), np.uint8)
    side = first.shape[0] * UPSCALE
    frame, pad, caption = 3, 28, 40  # pad: room for a caption wider than its image
    cell_w, cell_h = side + 2 * frame + pad, side + 2 * frame + caption
    canvas = np.full((nrows * cell_h + pad // 2, cols * cell_w, 3), 255, np.uint8)
    fig = _figure(canvas.shape[1] / DPI, canvas.shape[0] / DPI + 0.35)
    ax = fig.add_axes((0, 0, 1, canvas.shape[0] / (canvas.shape[0] + 0.35 * DPI)))
    short = [_short(name, 11) for name in classes]
    captions = []
    for k, item in enumerate(items):
        r, c = divmod(k, cols)
        y0, x0 = r * cell_h + caption, c * cell_w + pad // 2
        wrong = item["true"] != item["pred"]
        colour = (176, 0, 32) if wrong else (27, 94, 32)
        canvas[y0:y0 + side + 2 * frame, x0:x0 + side + 2 * frame] = colour
        img = _to_hwc(images[item["row"]])
        big = img.repeat(UPSCALE, axis=0).repeat(UPSCALE, axis=1)[:side, :side]
        canvas[y0 + frame:y0 + frame + big.shape[0], x0 + frame:x0 + frame + big.shape[1]] = big
        captions.append((x0 + frame + side / 2, y0 - 4,
                         f"true: {short[item['true']]}\npred: {short[item['pred']]} "
                         f"{100 * item['confidence']:.0f}%", "#b00020" if wrong else "#1b5e20"))
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    for x, y, text, colour in captions:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=9, color=colour, linespacing=1.15)
    ax.set_axis_off()
    fig.suptitle(plain(title), fontsize=10, y=0.995, va="top")
    fig.savefig(Path(path), format="png", dpi=DPI, facecolor="white")
    return Path(path)


def plot_reliability(rel: dict[str, Any], path) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, counts below."""
    from matplotlib.gridspec import GridSpec

    fig = _figure(5.2, 5.6)
    gs = GridSpec(2, 1, figure=fig, height_ratios=[3, 1], hspace=0.08)
    ax = fig.add_subplot(gs[0])
    hist = fig.add_subplot(gs[1], sharex=ax)
    bins = rel["bins"]
    width = bins[0]["hi"] - bins[0]["lo"]
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    acc = [b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins]
    conf = [b["confidence"] if b["confidence"] is not None else 0.0 for b in bins]
    ax.bar(centres, acc, width=width, edgecolor="#333333", color="#4c72b0", label="accuracy")
    gap_bottom = [min(a, c) for a, c in zip(acc, conf, strict=True)]
    gap_height = [abs(c - a) if b["count"] else 0.0 for a, c, b in zip(acc, conf, bins, strict=True)]
    ax.bar(centres, gap_height, bottom=gap_bottom, width=width, color="#d62728", alpha=0.35,
           edgecolor="#d62728", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="#555555", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ece = rel.get("ece")
    ax.set_title(f"Reliability diagram (ECE {100 * ece:.2f}%, {rel['n_bins']} bins)"
                 if ece is not None else "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    ax.tick_params(labelbottom=False)
    ax.grid(alpha=0.3)
    hist.bar(centres, [b["count"] for b in bins], width=width, color="#888888", edgecolor="#333333")
    hist.set_xlabel("confidence (top softmax probability)")
    hist.set_ylabel("images")
    hist.grid(alpha=0.3)
    return _save(fig, path)
