"""Image folders: PATH/train/<class>/*.png|jpg|jpeg and optionally PATH/test/<class>/...

Classes are the sorted sub-folder names of train/ (as torchvision's ImageFolder). Every image is
turned into 32x32 RGB uint8 by `images.load_image`, which `predict` uses too. Files that are not
.png/.jpg/.jpeg are skipped with one warning; every unusable image (corrupt, too large, not a
regular file) is named in one error after a single pass, exit 2.

Decoding tens of thousands of files takes a while, so the decoded arrays are cached once per
split in PATH/.resnet_cifar_cache/ (or, when PATH is not writable, in $RESNET_CIFAR_CACHE or
~/.cache/resnet-cifar). The cache key covers the relative path, size and mtime of every file, so a
changed, added or removed file means a new key and the stale cache is never read.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import constants, fsutil
from ..errors import DataError, UsageError
from . import Dataset
from .images import load_image  # noqa: F401 - predict and tests use folder.load_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CACHE_DIRNAME = ".resnet_cifar_cache"
CACHE_VERSION = 2       # bump when load_image's output changes, so old caches are not reused
SIZE = constants.IMAGE_SIZE
SHOWN = 3               # bad or skipped files named in one message; the rest are counted
STALE_TEMP_S = 600      # a cache temp file untouched this long belongs to a killed write

Log = Callable[[str], None] | None


class FolderError(DataError):
    """Something wrong with the user's image folder: bad input, so exit 2 (nothing was started)."""
    exit_code = 2


def _say(log: Log, line: str) -> None:
    if log is not None:
        log(line)


def _listing(names: list[str]) -> str:
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


# --- finding files ---------------------------------------------------------------------------

def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class _Scan:
    """What a scan found besides the images: files skipped (not images) and bad entries."""

    def __init__(self):
        self.skipped: list[str] = []               # relative paths of non-image files
        self.bad: list[tuple[str, str]] = []       # (relative path, reason)


def _class_dirs(split_dir: Path, root: Path, scan: _Scan) -> list[str]:
    names = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if _is_hidden(entry.name):
            continue
        if entry.is_dir():
            names.append(entry.name)
        else:   # README.txt, Thumbs.db, an image outside a class folder: not part of any class
            scan.skipped.append(Path(entry.path).relative_to(root).as_posix())
    return names


def _image_files(class_dir: Path, root: Path, scan: _Scan) -> list[tuple[str, int, int]]:
    """(path relative to root, size, mtime_ns) of every image under class_dir, sorted, recursive."""
    # Plain strings, not Path objects: pathlib's per-file overhead dominated scanning 50k files.
    out = []
    stack = [(str(class_dir), class_dir.relative_to(root).as_posix() + "/")]
    while stack:
        d, rel = stack.pop()
        for entry in os.scandir(d):
            name = entry.name
            if _is_hidden(name):
                continue
            if entry.is_dir():
                stack.append((entry.path, rel + name + "/"))
            elif not name.lower().endswith(IMAGE_EXTENSIONS):
                scan.skipped.append(rel + name)
            else:
                try:
                    st = entry.stat()     # lstat-free: follows links, never opens the file
                except FileNotFoundError:
                    scan.bad.append((rel + name, "a broken link"))
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append((rel + name, st.st_size, st.st_mtime_ns))
                else:   # a FIFO or device named .jpg would block the decoder forever
                    scan.bad.append((rel + name, "not a regular file"))
    out.sort()    # by relative path: independent of the order the file system lists entries
    return out


def scan_split(root: Path, split: str, classes: list[str] | None = None, scan: _Scan | None = None):
    """Classes and files of root/<split>: (classes, [(relpath, size, mtime_ns)], labels).

    Non-image files are left out (listed in `scan.skipped`); entries that look like images but
    are not regular files go to `scan.bad`.
    """
    scan = scan if scan is not None else _Scan()
    split_dir = root / split
    found = _class_dirs(split_dir, root, scan)
    if classes is None:
        classes = found
        if not classes:
            raise UsageError(f"{split_dir} has no class folders; a folder dataset needs "
                             f"{split_dir}/<class>/*.png|jpg")
        if len(classes) < 2:
            raise FolderError(f"{split_dir} has one class folder ({classes[0][:80]}); a classifier needs at "
                              f"least 2 classes: add a folder per class")
    elif found != classes:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise FolderError(f"{split_dir} classes differ from train/: missing {missing or 'none'}, "
                          f"extra {extra or 'none'}; test/ must have the same class folders")
    files, labels = [], []
    for idx, name in enumerate(classes):
        these = _image_files(split_dir / name, root, scan)
        if not these and split == "train":
            raise FolderError(f"class folder {split_dir / name} has no .png/.jpg/.jpeg images; "
                              f"add images or remove the folder")
        files.extend(these)
        labels.extend([idx] * len(these))
    return classes, files, np.asarray(labels, dtype=np.int64)


# --- cache -----------------------------------------------------------------------------------

def _cache_key(classes: list[str], files) -> str:
    h = hashlib.sha256(f"resnet-cifar folder cache v{CACHE_VERSION} size {SIZE}\n".encode())
    h.update(("\n".join(classes) + "\n\n").encode())
    for rel, size, mtime in files:
        h.update(f"{rel}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()[:24]


def _fallback_cache_dir() -> Path:
    base = os.environ.get("RESNET_CIFAR_CACHE") or Path.home() / ".cache" / "resnet-cifar"
    return Path(base).expanduser() / "folders"


def _cache_candidates(root: Path, split: str, key: str) -> list[tuple[Path, str]]:
    """(directory, file-name prefix) where this split's cache may live, in order of preference."""
    root_tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return [(root / CACHE_DIRNAME, f"{split}-"),
            (_fallback_cache_dir(), f"{root_tag}-{split}-")]


def _read_cache(path: Path, key: str, labels: np.ndarray, log: Log):
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y, meta = z["x"], z["y"], z["meta"]
            ok = (str(z["key"]) == key and x.dtype == np.uint8
                  and x.shape == (len(labels), 3, SIZE, SIZE) and np.array_equal(y, labels))
    except Exception as e:  # an unreadable cache is just decoded again
        _say(log, f"ignoring unreadable cache {path} ({type(e).__name__}); decoding again")
        return None
    if not ok:
        _say(log, f"ignoring cache {path}: it does not match the files; decoding again")
        return None
    return x, int(meta[0])


def _write_cache(directory: Path, prefix: str, key: str, x, y, n_resized: int) -> Path:
    final = directory / f"{prefix}{key}.npz"
    # Atomic: readers see the old state or the whole new file, never half of one.
    fsutil.atomic_write(final, lambda f: np.savez(f, x=x, y=y, key=np.array(key),
                                                  meta=np.array([n_resized], np.int64)))
    # Caches of older versions of this split are stale forever: remove them (they are large).
    for old in directory.glob(f"{prefix}*.npz"):
        if old != final:
            old.unlink(missing_ok=True)
    return final


def remove_stale_temps(directory: Path, log: Log = None) -> list[Path]:
    """Delete cache temp files that a killed write left (untouched for STALE_TEMP_S seconds;
    a live write keeps touching its file). `.tmp-*.npz` is the name older versions used."""
    removed = []
    now = time.time()
    if not directory.is_dir():
        return removed
    for p in list(directory.glob(".tmp-*.npz")) + list(directory.glob(".*.npz.*" + fsutil.TMP_SUFFIX)):
        try:
            if p.is_file() and not p.is_symlink() and now - p.stat().st_mtime > STALE_TEMP_S:
                p.unlink()
                removed.append(p)
        except OSError:
            continue   # gone meanwhile, or not ours to delete: never a reason to fail a load
    if removed:
        _say(log, f"removed {len(removed)} temp file(s) of an interrupted cache write in {directory}")
    return removed


def _decode(root: Path, files, scan: _Scan) -> tuple[np.ndarray, int, str | None, str | None]:
    """Decode every file; the bad ones go to scan.bad and the first one's full error is returned."""
    # One thread on purpose: for 32x32 JPEGs most time is Python-level header parsing in PIL,
    # and threads were measured slower than a plain loop (the GIL is held).
    x = np.zeros((len(files), 3, SIZE, SIZE), dtype=np.uint8)
    n_resized, first, first_error = 0, None, None
    for i, (rel, _, _) in enumerate(files):
        try:
            arr, resized = load_image(root / rel)
        except (DataError, UsageError) as e:   # keep going: every bad file is named in one pass
            scan.bad.append((rel, "unreadable"))
            first_error = first_error or str(e)
            continue
        x[i] = arr.transpose(2, 0, 1)
        if resized:
            n_resized += 1
            first = first or rel
    return x, n_resized, first, first_error


def _report_scan(root: Path, split: str, scan: _Scan, first_error: str | None, log: Log) -> None:
    """One warning for skipped non-image files; one FolderError naming all bad files."""
    if scan.skipped:
        _say(log, f"warning: skipped {len(scan.skipped)} file(s) in {root / split} that are not "
                  f".png/.jpg/.jpeg images: {_listing(scan.skipped)}")
    if scan.bad:
        names = [f"{rel} ({why})" for rel, why in scan.bad]
        first = f"; first: {first_error}" if first_error else ""
        raise FolderError(f"{len(scan.bad)} of the files in "
                          f"{root / split} cannot be used: {_listing(names)}{first}; fix or remove them all")


def _from_cache(candidates, key: str, labels, split: str, n: int, log: Log):
    for directory, prefix in candidates:
        path = directory / f"{prefix}{key}.npz"
        if path.is_file():
            t0 = time.perf_counter()
            got = _read_cache(path, key, labels, log)
            if got is not None:
                x, n_resized = got
                _say(log, f"loaded {n} {split} images from cache {path} in {time.perf_counter() - t0:.1f} s"
                          + (f" ({n_resized} were resized to {SIZE}x{SIZE})" if n_resized else ""))
                return x
    return None


def _scan(root: Path, split: str, classes: list[str] | None):
    scan = _Scan()
    try:
        classes, files, labels = scan_split(root, split, classes, scan)
    except OSError as e:   # e.g. a folder without read permission
        raise FolderError(f"cannot list {e.filename or root / split}: {e.strerror or e}; check "
                          f"its permissions") from None
    return classes, files, labels, scan


def load_split(root: str | Path, split: str, classes: list[str] | None = None, *,
               log: Log = None, use_cache: bool = True):
    """Decode (or read from cache) root/<split>: returns (x uint8 (N,3,32,32), y int64, classes)."""
    root = Path(root)
    classes, files, labels, scan = _scan(root, split, classes)
    key = _cache_key(classes, files)
    candidates = _cache_candidates(root, split, key)
    if use_cache and not scan.bad:
        for directory, _ in candidates:
            remove_stale_temps(directory, log)
        x = _from_cache(candidates, key, labels, split, len(files), log)
        if x is not None:
            _report_scan(root, split, scan, None, log)
            return torch.from_numpy(x), torch.from_numpy(labels), classes

    _say(log, f"decoding {len(files)} images in {root / split}"
              + (" (once: the result is cached)" if use_cache else ""))
    t0 = time.perf_counter()
    x, n_resized, first, first_error = _decode(root, files, scan)
    took = time.perf_counter() - t0
    _report_scan(root, split, scan, first_error, log)
    if n_resized:
        _say(log, f"resized {n_resized} of {len(files)} {split} images to {SIZE}x{SIZE} "
                  f"(first: {first})")
    where = "not cached"
    if use_cache:
        for directory, prefix in candidates:
            try:
                where = f"cached at {_write_cache(directory, prefix, key, x, labels, n_resized)}"
                break
            except OSError as e:
                where = f"not cached ({directory} is not writable: {e.strerror or e})"
    _say(log, f"decoded {len(files)} {split} images in {took:.1f} s; {where}")
    return torch.from_numpy(x), torch.from_numpy(labels), classes


def read_folder(data_dir: str | Path, *, log: Log = None, use_cache: bool = True) -> Dataset:
    """Load PATH/train (required) and PATH/test (optional) as a Dataset; mean/std from train.

    Refused (exit 2) before anything trains: fewer than 2 classes, any unreadable image (all are
    named in one message), a colour channel that is constant over the training images.
    """
    from .stats import channel_mean_std, check_channels

    root = Path(data_dir).expanduser()
    if not (root / "train").is_dir():
        what = "does not exist" if not root.exists() else "has no train/ folder"
        raise UsageError(f"{root} {what}; a folder dataset needs {root}/train/<class>/*.png|jpg "
                         f"(and optionally {root}/test/<class>/...)")
    train_x, train_y, classes = load_split(root, "train", log=log, use_cache=use_cache)
    test_x = test_y = None
    if (root / "test").is_dir():
        test_x, test_y, _ = load_split(root, "test", classes, log=log, use_cache=use_cache)
        if len(test_y) == 0:   # class folders but no images: same as no test split
            _say(log, f"{root / 'test'} has no images; using no test split")
            test_x = test_y = None
    mean, std = channel_mean_std(train_x)
    check_channels(std, f"{root / 'train'}")
    return Dataset(name="folder", train_x=train_x, train_y=train_y, test_x=test_x,
                   test_y=test_y, classes=classes, mean=mean, std=std)
