"""Diagnosis: the classic ResNet/CIFAR tutorial's troubleshooting guide applied to one run.

`diagnose(rows, results, config)` is a pure function: parsed metrics.csv rows, the results.json dict
and (optionally) the resolved config in, a list of findings out. Each finding is a dict:

    id        stable name of the rule ("loss_diverging", ...)
    severity  "problem" | "warning" | "info" | "ok"
    title     one short line
    detail    plain words, with the numbers that triggered it
    advice    what to try
    figure    the report figure that shows it ("loss.png", "accuracy.png", "lr.png"), or None
    evidence  the numbers themselves (dict), for report/summary.json

The low-accuracy rule, with its list of likely causes, lives in low_accuracy.py.

The thresholds below are deliberately loose: a finding should mean "look here", not fire on the
epoch-to-epoch noise of a healthy run. The tutorial recipe (ResNet-18, SGD lr 0.1 @ batch 128,
plateau schedule, ~250 epochs) reaches ~95% on CIFAR-10 and passes every check.
"""

from __future__ import annotations

import math
from typing import Any

from .low_accuracy import check_accuracy
from .metrics import finite

# --- loss diverging / oscillating (the guide: "learning rate too large, or inputs not normalised")
# A loss that ends 1.5x above its own minimum has undone a third of its progress: not noise.
DIVERGE_FACTOR = 1.5
# An epoch-mean training loss is smooth (it averages hundreds of batches); a 5% rise from one epoch
# to the next is a real step backwards.
OSCILLATION_RISE = 0.05
# ... and it must happen repeatedly: at least 3 times and in at least a fifth of the epochs, so one
# bump (e.g. the lr rising to swa_lr when SWA starts) does not count.
OSCILLATION_MIN_RISES = 3
OSCILLATION_FRACTION = 0.2
# Below this many epochs there is no trend to read.
MIN_EPOCHS = 3

# --- overfitting (the guide: "a growing train/validation gap: more augmentation or weight decay")
# The tutorial recipe ends with train accuracy ~99.9% and validation ~95%, a gap of ~5 points;
# 8 points is clearly beyond that.
GAP_LIMIT = 0.08
# ... and the gap must have grown (early epochs on augmented data can even have train < val).
GAP_GROWTH = 0.04
# Average the last few epochs so one lucky/unlucky validation pass does not decide.
GAP_WINDOW = 3
# Validation loss 25% above its minimum while the training loss keeps falling is the other
# classic overfitting signature (without label smoothing it shows earlier than the accuracy gap).
VAL_LOSS_RISE = 0.25
VAL_LOSS_MIN_EPOCHS_AGO = 5

# --- learning-rate cuts
# A step cut divides the lr by 2 or more in one epoch (plateau/multistep use 0.1); cosine and
# one-cycle change it by far less per epoch, except in their last epochs, which is why a cut must
# also come after at least two epochs at the same lr.
STEP_CUT_RATIO = 0.5
# Validation accuracy over the 3 epochs after a cut, 1 point below the 3 epochs before: a cut
# normally brings a jump of several points, so a fall is worth a look.
CUT_WINDOW = 3
CUT_VAL_DROP = 0.01
# A plateau cut "too early": a new best validation accuracy (by half a point) in the 5 epochs
# before the cut means the run was still improving when the scheduler gave up on it ...
STILL_RISING_WINDOW = 5
STILL_RISING_GAIN = 0.005
# ... or the first cut came in the first 15% of the planned epochs (the tutorial's first cut with
# patience 10 comes around epoch 60-100 of 250).
EARLY_CUT_FRACTION = 0.15

# --- test vs validation (the guide: "preprocessing mismatch or leakage")
# Picking the best epoch on validation makes test ~0.5 point lower by selection alone; 3 points is
# far beyond that for 5,000 validation images (binomial std ~0.3 points at 95%).
TEST_VAL_GAP = 0.03

def _series(rows, name) -> list[tuple[int, float]]:
    return [(r["epoch"], r[name]) for r in rows if finite(r.get(name))]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _points(x: float) -> str:
    return f"{100 * x:.1f} points"


def _finding(id_, severity, title, detail, advice, figure, **evidence) -> dict[str, Any]:
    return {"id": id_, "severity": severity, "title": title, "detail": detail, "advice": advice,
            "figure": figure, "evidence": evidence}


def lr_cuts(rows, config: dict | None = None) -> list[dict[str, Any]]:
    """Epochs at whose end the lr was cut in a step (see STEP_CUT_RATIO):
    {epoch, before, after, kind}, kind "swa" when the new lr is the SWA lr of a run with SWA (the
    switch to SWA's constant lr, not a scheduler decision), else "step".

    metrics.csv logs the lr at the end of each epoch, so a cut logged at epoch e was decided at
    the end of epoch e and first used to train epoch e + 1.
    """
    config = config or {}
    swa_lr = config.get("swa_lr") if config.get("swa") else None
    lrs = [(r["epoch"], r.get("lr")) for r in rows]
    cuts = []
    for i in range(1, len(lrs)):
        (_, prev), (epoch, cur) = lrs[i - 1], lrs[i]
        if not (finite(prev) and finite(cur)) or prev <= 0:
            continue
        flat_before = i >= 2 and finite(lrs[i - 2][1]) and math.isclose(lrs[i - 2][1], prev, rel_tol=1e-6)
        if cur <= prev * STEP_CUT_RATIO and flat_before:
            kind = "swa" if finite(swa_lr) and math.isclose(cur, swa_lr, rel_tol=1e-6) else "step"
            cuts.append({"epoch": epoch, "before": prev, "after": cur, "kind": kind})
    return cuts


def _check_loss(rows) -> list[dict]:
    out = []
    losses = [(r["epoch"], r.get("train_loss")) for r in rows if r.get("train_loss") is not None]
    bad = [(e, v) for e, v in losses if not math.isfinite(v)]
    advice = ("Lower the learning rate (divide it by 10, or add a few warm-up epochs), check that "
              "inputs are normalised with the dataset's mean and std (resnet-cifar data stats), "
              "and with fp16 check for overflow (use bf16 or --amp off).")
    if bad:
        e, v = bad[0]
        out.append(_finding(
            "loss_diverging", "problem", "Training loss diverged",
            f"The training loss became {v} at epoch {e}: the optimisation blew up.",
            advice, "loss.png", epoch=e, value=str(v)))
        return out
    good = losses
    if len(good) < MIN_EPOCHS:
        return out
    first, last = good[0][1], good[-1][1]
    min_e, min_v = min(good[:-1], key=lambda t: t[1])
    if last >= DIVERGE_FACTOR * min_v and min_v > 0:
        out.append(_finding(
            "loss_diverging", "problem", "Training loss diverging",
            f"The training loss fell to {min_v:.3f} at epoch {min_e} and then rose to {last:.3f} by "
            f"epoch {good[-1][0]} ({last / min_v:.1f}x its minimum): the run is undoing its progress.",
            advice, "loss.png", min_epoch=min_e, min_loss=min_v, last_loss=last))
    elif last >= first:
        out.append(_finding(
            "loss_diverging", "problem", "Training loss is not falling",
            f"After {len(good)} epochs the training loss ({last:.3f}) is no lower than after the "
            f"first ({first:.3f}): the model is not learning.",
            advice, "loss.png", first_loss=first, last_loss=last, epochs=len(good)))
    rises = [(good[i][0], good[i - 1][1], good[i][1]) for i in range(1, len(good))
             if good[i - 1][1] > 0 and good[i][1] > good[i - 1][1] * (1 + OSCILLATION_RISE)]
    if len(rises) >= OSCILLATION_MIN_RISES and len(rises) >= OSCILLATION_FRACTION * (len(good) - 1):
        listed = ", ".join(f"epoch {e} ({a:.3f} to {b:.3f})" for e, a, b in rises[:5])
        out.append(_finding(
            "loss_oscillating", "warning", "Training loss oscillating",
            f"The training loss rose by more than {100 * OSCILLATION_RISE:.0f}% from one epoch to the "
            f"next {len(rises)} times in {len(good)} epochs: {listed}"
            f"{', ...' if len(rises) > 5 else ''}. A steadily trained model's loss falls almost "
            f"every epoch.",
            "The learning rate is probably too large for this batch size (try half), or the inputs "
            "are not normalised.", "loss.png", rises=len(rises), epochs=len(good),
            rise_epochs=[e for e, _, _ in rises]))
    return out


def _check_gap(rows) -> list[dict]:
    both = [(r["epoch"], r["train_acc"] - r["val_acc"]) for r in rows
            if finite(r.get("train_acc")) and finite(r.get("val_acc"))]
    advice = ("More augmentation (random crop with padding, flips, cutout), more weight decay "
              "(5e-4 is the tutorial's), label smoothing, or a smaller model; with few training "
              "images, more data helps most.")
    if len(both) >= max(MIN_EPOCHS, GAP_WINDOW + 1):
        final_gap = sum(g for _, g in both[-GAP_WINDOW:]) / GAP_WINDOW
        min_e, min_gap = min(both[:-GAP_WINDOW] or both, key=lambda t: t[1])
        if final_gap >= GAP_LIMIT and final_gap - min_gap >= GAP_GROWTH:
            last = rows[-1]
            return [_finding(
                "overfitting", "warning", "Growing train/validation gap (overfitting)",
                f"Training accuracy is {_points(final_gap)} above validation accuracy over the "
                f"last {GAP_WINDOW} epochs (the gap was {_points(min_gap)} at epoch {min_e}): the model is "
                f"memorising the training images rather than learning what generalises.",
                advice, "accuracy.png", final_gap=final_gap, min_gap=min_gap, min_gap_epoch=min_e,
                train_acc=last.get("train_acc"), val_acc=last.get("val_acc"))]
    vl = _series(rows, "val_loss")
    tl = dict(_series(rows, "train_loss"))
    if len(vl) >= VAL_LOSS_MIN_EPOCHS_AGO + GAP_WINDOW:
        min_e, min_v = min(vl, key=lambda t: t[1])
        recent = sum(v for _, v in vl[-GAP_WINDOW:]) / GAP_WINDOW
        last_e = vl[-1][0]
        train_fell = (min_e in tl and last_e in tl and tl[last_e] < tl[min_e])
        if (min_v > 0 and recent >= (1 + VAL_LOSS_RISE) * min_v
                and last_e - min_e >= VAL_LOSS_MIN_EPOCHS_AGO and train_fell):
            return [_finding(
                "overfitting", "warning", "Validation loss rising while training loss falls",
                f"Validation loss reached its minimum {min_v:.3f} at epoch {min_e} and averages "
                f"{recent:.3f} over the last {GAP_WINDOW} epochs, while the training loss kept "
                f"falling ({tl[min_e]:.3f} to {tl[last_e]:.3f}): the model is becoming overconfident "
                f"on images it has not seen.",
                advice, "loss.png", min_val_loss=min_v, min_val_loss_epoch=min_e,
                recent_val_loss=recent)]
    return []


def _check_cuts(rows, cuts, config, planned_epochs) -> list[dict]:
    out = []
    val = _series(rows, "val_acc")
    if not val:
        return out
    pos = {e: i for i, (e, _) in enumerate(val)}
    for cut in cuts:
        e = cut["epoch"]
        if e not in pos:
            continue
        i = pos[e]
        before = [v for _, v in val[max(0, i - CUT_WINDOW + 1):i + 1]]
        after = [v for _, v in val[i + 1:i + 1 + CUT_WINDOW]]
        if not before or not after:
            continue
        b, a = sum(before) / len(before), sum(after) / len(after)
        if a < b - CUT_VAL_DROP:
            why = " when SWA started" if cut["kind"] == "swa" else ""
            out.append(_finding(
                "val_drop_after_lr_cut", "warning", "Validation accuracy fell right after an lr cut",
                f"The learning rate was cut{why} from {cut['before']:.3g} to {cut['after']:.3g} at the end "
                f"of epoch {e}; validation accuracy averaged {_pct(b)} over the epochs before and "
                f"{_pct(a)} over the {len(after)} after. A cut normally brings a jump of several "
                f"points.",
                "Once the large lr's noise stops regularising, the model can start to overfit at "
                "once: add augmentation or weight decay. If SWA or EMA started at the same epoch, "
                "compare their curves; the best checkpoint (best.pt) keeps the epoch before the fall.",
                "accuracy.png", epoch=e, lr_before=cut["before"], lr_after=cut["after"],
                val_before=b, val_after=a))
    scheduler = (config or {}).get("scheduler")
    steps = [c for c in cuts if c["kind"] == "step"]  # the SWA switch is not a plateau decision
    if steps and scheduler in ("plateau", None):
        first = steps[0]
        e = first["epoch"]
        early = []
        if planned_epochs and e <= EARLY_CUT_FRACTION * planned_epochs:
            early.append(f"it came at epoch {e} of {planned_epochs} planned")
        window = [v for ep, v in val if e - STILL_RISING_WINDOW < ep <= e]
        earlier = [v for ep, v in val if ep <= e - STILL_RISING_WINDOW]
        gain = (max(window) - max(earlier)) if window and earlier else None
        if gain is not None and gain >= STILL_RISING_GAIN:
            early.append(f"validation accuracy had reached a new best ({_pct(max(window))}, "
                         f"+{_points(gain)}) in the {STILL_RISING_WINDOW} epochs before it")
        if early:
            patience = (config or {}).get("plateau_patience")
            out.append(_finding(
                "plateau_cut_too_early", "warning", "Learning-rate reduction came too early",
                f"The first plateau reduction (lr {first['before']:.3g} to {first['after']:.3g} at "
                f"the end of epoch {e}) came too early: {'; and '.join(early)}. Cutting while the "
                f"model still improves at the large lr freezes it in a worse region.",
                f"Raise plateau_patience{f' (now {patience})' if patience is not None else ''}, "
                "monitor validation accuracy rather than loss, or use a fixed schedule "
                "(scheduler: cosine).", "lr.png", epoch=e, planned_epochs=planned_epochs,
                gain_before_cut=gain))
    return out


def _check_test_vs_val(results) -> list[dict]:
    test = results.get("test_acc")
    if not finite(test) or results.get("eval_split", "test") != "test":
        return []
    cand = results.get("candidates") or {}
    selected = results.get("selected") or "raw"
    val = cand.get(selected) if finite(cand.get(selected)) else results.get("best_val_acc")
    if not finite(val) or val - test < TEST_VAL_GAP:
        return []
    return [_finding(
        "test_below_val", "problem", "Test accuracy far below validation",
        f"Test accuracy is {_pct(test)} but the selected weights ({selected}) scored {_pct(val)} on "
        f"validation, {_points(val - test)} more. Picking the best epoch explains about half a "
        f"point, not this.",
        "Look for a preprocessing difference between validation and test (normalisation statistics, "
        "channel order, resizing, uint8 vs float scaling) or leakage (validation images also in "
        "the training set, duplicates, a validation split chosen after looking at it).",
        "accuracy.png", test_acc=test, val_acc=val, selected=selected)]


def diagnose(rows: list[dict] | None, results: dict | None,
             config: dict | None = None) -> list[dict[str, Any]]:
    """Apply every rule; return the findings, worst first. A run with none says it is healthy."""
    rows = rows or []
    results = results or {}
    findings: list[dict] = []
    if not rows:
        findings.append(_finding(
            "no_metrics", "info", "No training curves to diagnose",
            "metrics.csv is missing or empty, so only the final numbers could be checked.",
            "Point the report at the run directory the trainer wrote.", None))
    planned = results.get("epochs") or (config or {}).get("epochs") or len(rows)
    loss = _check_loss(rows)
    findings += loss
    if rows and not _series(rows, "val_acc"):
        findings.append(_finding(
            "no_validation", "info", "No validation curve",
            "This run had no validation split, so overfitting and lr-cut checks were skipped.",
            "Train with val_size > 0 (the tutorial holds out 5000 images) to get these checks.",
            "accuracy.png"))
    findings += _check_gap(rows)
    findings += _check_cuts(rows, lr_cuts(rows, config), config, planned)
    findings += _check_test_vs_val(results)
    flagged_lr = any(f["id"] in ("loss_diverging", "loss_oscillating") for f in loss)
    findings += check_accuracy(rows, results, config, flagged_lr)
    order = {"problem": 0, "warning": 1, "info": 2, "ok": 3}
    findings.sort(key=lambda f: order[f["severity"]])  # stable: rule order within a severity
    if rows and not any(f["severity"] in ("problem", "warning") for f in findings):
        acc = results.get("test_acc") if finite(results.get("test_acc")) else results.get("best_val_acc")
        has_val = bool(_series(rows, "val_acc"))
        findings.insert(0, _finding(
            "healthy", "ok", "Healthy run",
            f"The training loss fell steadily over {len(rows)} epochs with no divergence or "
            f"oscillation"
            + (", no growing train/validation gap, no trouble around lr cuts" if has_val else "")
            + (f", and the final accuracy ({_pct(acc)}) is where it should be." if finite(acc)
               else "."),
            "Nothing to fix. For more accuracy try SWA/EMA, TTA or more epochs.", "accuracy.png"))
    return findings
