"""A fingerprint of a loaded dataset: which images, in which order, with which labels.

Stored in every checkpoint, so a resume can refuse data that changed under the run (an image
added to a folder changes the train/validation split) and `evaluate` can say when it scores other
images than the run saw. It holds the class names and, per split, the image count per class (the
shape of the image list) and a content key: a BLAKE2b hash of the decoded pixels and labels in
their order (the normalisation, computed from the train images, follows from them). For CIFAR,
whose files are MD5-checked when read, the key is the same for every copy of the official
archive; for a folder it changes with any added, removed, renamed (reordered) or edited image,
and not with a mere `touch`.

Cheap: one pass of a fast hash over the uint8 arrays already in memory (150 MB for CIFAR-10).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from . import Dataset

VERSION = 1
SPLITS = ("train", "test")


def _key(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _split(x: torch.Tensor | None, y: torch.Tensor | None, num_classes: int) -> dict | None:
    if y is None or x is None:
        return None
    x, y = x.detach().cpu().numpy(), y.detach().cpu().numpy()
    return {"n": int(len(y)), "per_class": np.bincount(y, minlength=num_classes).tolist(), "key": _key(x, y)}


def of_dataset(data: Dataset) -> dict:
    """The fingerprint of `data` (plain data: ints, strings, lists; fits a weights_only checkpoint)."""
    return {
        "version": VERSION, "dataset": data.name, "classes": list(data.classes),
        "train": _split(data.train_x, data.train_y, data.num_classes),
        "test": _split(data.test_x, data.test_y, data.num_classes),
    }


def _counts(name: str, saved: dict | None, now: dict | None, classes: list[str]) -> str:
    if now is None:
        return f"{name}: no {name} images now, {saved['n']} in the run"
    if saved is None:
        return f"{name}: {now['n']} images now, none in the run"
    if saved["n"] == now["n"] and saved["per_class"] == now["per_class"]:
        return f"{name}: the same {now['n']} images by count, but other pixels or order"
    changes = [f"{c} {b - a:+d}" for c, a, b in zip(classes, saved["per_class"], now["per_class"], strict=True) if a != b]
    more = f" and {len(changes) - 4} more classes" if len(changes) > 4 else ""
    return f"{name}: {now['n']} images now, {saved['n']} in the run ({', '.join(changes[:4])}{more})"


def _well_formed(split: object, num_classes: int) -> bool:
    if not isinstance(split, dict) or not isinstance(split.get("n"), int):
        return False
    counts = split.get("per_class")
    return isinstance(counts, list) and len(counts) == num_classes and all(type(c) is int for c in counts)


def differences(saved: dict | None, now: dict, splits: tuple[str, ...] = SPLITS) -> list[str]:
    """How the data of fingerprint `now` differs from the run's `saved` one, one phrase each (the
    dataset, the classes, then each of `splits`); [] when they agree, or when `saved` is missing (a
    checkpoint from before fingerprints) or unreadable."""
    if not isinstance(saved, dict) or saved.get("version") != VERSION:
        return []
    out = []
    if saved.get("dataset") != now["dataset"]:
        out.append(f"dataset {now['dataset']!r} now, {saved.get('dataset')!r} in the run")
    if saved.get("classes") != now["classes"]:
        return out + [f"the classes differ ({len(now['classes'])} now, {len(saved.get('classes') or [])} in the run)"]
    for name in splits:
        a, b = saved.get(name), now[name]
        same = (a is None and b is None) or (isinstance(a, dict) and b is not None and a.get("key") == b["key"])
        if not same:
            if a is not None and not _well_formed(a, len(now["classes"])):
                out.append(f"{name}: the run's record of it is malformed")
            else:
                out.append(_counts(name, a, b, now["classes"]))
    return out


def describe(saved: dict | None, now: dict, limit: int = 3) -> str:
    """`differences` over all splits as one phrase ('' when the data agree)."""
    diffs = differences(saved, now)
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def check_same(state: dict, now: dict) -> None:
    """Raise UsageError when a checkpoint's run was trained on other data than `now` (a resume)."""
    differs = describe(state.get("data_fingerprint"), now)
    if differs:
        from ..errors import UsageError

        raise UsageError(f"the data differ from the run's in {state.get('path', 'last.pt')!r} ({differs}); "
                         "resume with the data the run started on, or start a new run")
