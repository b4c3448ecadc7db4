"""The low-accuracy rule of the diagnosis: below the bar, list the tutorial's usual causes in its
order, marking those this run's config or curves point at as suspects. Findings have the shape
documented in diagnosis.py.
"""

from __future__ import annotations

from typing import Any

from .metrics import finite

# --- final accuracy (the guide: "below 90%: lr too high/low, missing normalisation/augmentation,
# too few epochs, wrong model for 32x32 inputs")
LOW_ACCURACY = 0.90
# CIFAR-100 has 10x the classes and a tenth of the images per class: ResNet-18 with this recipe
# reaches ~76-79%, so the 90% alarm would fire on every healthy run; 70% is the equivalent bar.
LOW_ACCURACY_BY_DATASET = {"cifar100": 0.70}
# SGD learning rates outside this range (scaled to batch 128, the tutorial's 0.1 @ 128 in the
# middle) are the usual "too high / too low"; AdamW's usual range is ~1e-3.
SGD_LR_RANGE_AT_128 = (0.01, 0.4)
ADAMW_LR_RANGE = (1e-4, 1e-2)
# Fewer epochs than the `fast` preset's 30 rarely reach 90% without a schedule built for it.
FEW_EPOCHS = 30
# Accuracy still climbing by a point over the last 5 epochs: the run stopped before converging.
STILL_LEARNING_GAIN = 0.01
STILL_LEARNING_WINDOW = 5


def _series(rows, name) -> list[tuple[int, float]]:
    return [(r["epoch"], r[name]) for r in rows if finite(r.get(name))]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _lr_cause(config: dict, flagged_lr: bool) -> tuple[str, bool]:
    lr, opt, bs = config.get("lr"), config.get("optimizer"), config.get("batch_size")
    lr_note = ""
    if finite(lr):
        if opt == "adamw":
            lo, hi = ADAMW_LR_RANGE
            scaled = lr
        elif finite(bs) and bs > 0:
            lo, hi = SGD_LR_RANGE_AT_128
            scaled = lr * 128 / bs
        else:
            lo = hi = scaled = None
        if scaled is not None and scaled > hi:
            lr_note = f" This run's lr {lr:g} looks too high."
        elif scaled is not None and scaled < lo:
            lr_note = f" This run's lr {lr:g} looks too low."
    if flagged_lr and not lr_note:
        lr_note = " The loss curve above points this way."
    return ("Learning rate too high or too low (SGD: about 0.1 at batch 128, scaled with "
            "the batch)." + lr_note, bool(lr_note))


def _augment_cause(config: dict) -> tuple[str, bool]:
    aug_off = [name for name, off in (("random crop", config.get("crop_padding") == 0),
                                      ("flips", config.get("flip") is False)) if off]
    return ("Missing normalisation or augmentation (per-channel mean/std, random crop with "
            "4-pixel padding, horizontal flips)."
            + (f" This run has {' and '.join(aug_off)} turned off." if aug_off else ""), bool(aug_off))


def _epochs_cause(rows) -> tuple[str, bool]:
    epochs = len(rows or [])
    series = _series(rows or [], "val_acc") or _series(rows or [], "train_acc")
    tail = [v for _, v in series[-STILL_LEARNING_WINDOW:]]
    still = len(series) > STILL_LEARNING_WINDOW and tail[-1] - series[-STILL_LEARNING_WINDOW - 1][1] >= STILL_LEARNING_GAIN
    few = epochs and epochs < FEW_EPOCHS
    note = ""
    if few:
        note += f" This run trained {epochs} epoch{'' if epochs == 1 else 's'}."
    if still:
        note += " Accuracy was still rising at the end."
    return ("Too few epochs (the tutorial trains ~250 with a plateau schedule; ~30 needs a "
            "schedule built for it, like the fast preset)." + note, bool(few or still))


def _model_cause(model) -> tuple[str, bool]:
    return ("A model built for 224x224 ImageNet images (7x7 stride-2 stem and max-pool) "
            "shrinks a 32x32 image to 8x8 before the first block; use a CIFAR ResNet with a "
            "3x3 stem." + (f" This run's model is {model}." if model else ""), False)


def check_accuracy(rows, results, config, flagged_lr: bool) -> list[dict[str, Any]]:
    """[] when the final accuracy reaches the bar, else one "low_accuracy" finding."""
    results = results or {}
    config = config or {}
    if finite(results.get("test_acc")):
        acc, what = results["test_acc"], "Test"
    elif finite(results.get("best_val_acc")):
        acc, what = results["best_val_acc"], "Best validation"
    else:
        return []
    dataset = results.get("dataset") or config.get("dataset")
    bar = LOW_ACCURACY_BY_DATASET.get(dataset, LOW_ACCURACY)
    if acc >= bar:
        return []
    causes = [_lr_cause(config, flagged_lr), _augment_cause(config), _epochs_cause(rows),
              _model_cause(results.get("model") or config.get("model"))]
    if dataset in ("cifar10", "cifar100"):
        severity = "problem"
        detail = (f"{what} accuracy is {_pct(acc)}; a ResNet on {dataset} with the tutorial recipe "
                  f"reaches over {_pct(bar)}. The usual causes, in the tutorial's order:")
    else:
        # an image folder may be harder or easier than CIFAR-10: the bar is a prompt, not a verdict
        severity = "warning"
        detail = (f"{what} accuracy is {_pct(acc)}, below the {_pct(bar)} the tutorial recipe "
                  f"reaches on CIFAR-10 ({dataset or 'this dataset'} may be harder). If it should "
                  f"not be, the usual causes, in the tutorial's order:")
    advice = ("Check the causes marked as suspects first." if any(s for _, s in causes) else
              "Nothing in this run's config points at one cause; go through them in order.")
    return [{"id": "low_accuracy", "severity": severity, "title": f"Accuracy below {_pct(bar)}",
             "detail": detail, "advice": advice, "figure": "accuracy.png",
             "evidence": {"accuracy": acc, "bar": bar, "causes": [{"text": t, "suspect": s} for t, s in causes]}}]
