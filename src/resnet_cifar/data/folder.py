"""Image folders: PATH/train/<class>/*.png|jpg|jpeg and optionally PATH/test/<class>/...

Classes are the sorted sub-folder names of train/ (as torchvision's ImageFolder). Every image is
turned into 32x32 RGB uint8 by `load_image`, which `predict` uses too.

Decoding tens of thousands of files takes a while, so the decoded arrays are cached once per
split in PATH/.resnet_cifar_cache/ (or, when PATH is not writable, in $RESNET_CIFAR_CACHE or
~/.cache/resnet-cifar). The cache key covers the relative path, size and mtime of every file, so a
changed, added or removed file means a new key and the stale cache is never read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from .. import constants
from ..errors import DataError, UsageError
from . import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CACHE_DIRNAME = ".resnet_cifar_cache"
CACHE_VERSION = 1       # bump when load_image's output changes, so old caches are not reused
SIZE = constants.IMAGE_SIZE

Log = Callable[[str], None] | None


def _say(log: Log, line: str) -> None:
    if log is not None:
        log(line)


# --- one image -------------------------------------------------------------------------------

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB."""
    mode = im.mode
    if mode.startswith("I;16") or (mode == "I" and im.format == "PNG"):
        # 16-bit greyscale (a PNG opens as I;16, or I in older Pillow). PIL's own convert("L")
        # clips values above 255 to white, so scale the full 0..65535 range down ourselves.
        g = np.asarray(im).astype(np.float64) * (255.0 / 65535.0)
        g = np.clip(np.rint(g), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("I", "F"):
        # 32-bit int / float greyscale from other formats: 8-bit range unless values say 16-bit.
        g = np.asarray(im).astype(np.float64)
        if g.size and g.max() > 255:
            g = g * (255.0 / 65535.0)
        g = np.clip(np.rint(g), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        # Transparency: composite on black (rgb * alpha). Fully transparent pixels often hold
        # arbitrary colours; compositing makes them a fixed value instead of leaking them in.
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    if mode != "RGB":   # L, 1, P, CMYK, YCbCr, LAB, HSV, ...
        im = im.convert("RGB")
    return np.asarray(im)


def load_image(path: str | Path) -> tuple[np.ndarray, bool]:
    """Read one image file as a (32, 32, 3) uint8 RGB array.

    Returns (array, resized): `resized` is True when the image was not 32x32 and was stretched to
    32x32 (bicubic; Pillow antialiases when shrinking). EXIF orientation is applied first.
    Raises DataError naming the file when it is truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()                       # decode now: truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
            arr = _to_rgb(im)
    except FileNotFoundError:
        raise UsageError(f"image {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not an image file") from None
    except PermissionError:
        raise DataError(f"cannot read image {path}: permission denied; fix its permissions") \
            from None
    except Exception as e:  # noqa: BLE001 - any failure to decode means a bad file
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {e}); the file is "
                        f"corrupt or not an image: replace or remove it") from None
    resized = arr.shape[:2] != (SIZE, SIZE)
    if resized:
        # Stretch, not crop: the whole image is kept, like torchvision's Resize((32, 32)).
        arr = np.asarray(Image.fromarray(arr).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    return np.ascontiguousarray(arr, dtype=np.uint8), resized


# --- finding files ---------------------------------------------------------------------------

def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _class_dirs(split_dir: Path) -> list[str]:
    names = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if _is_hidden(entry.name):
            continue
        if entry.is_dir():
            names.append(entry.name)
        else:
            raise DataError(f"{entry.path} is not inside a class folder; images go in "
                            f"{split_dir}/<class>/ (move or remove it)")
    return names


def _image_files(class_dir: Path, root: Path) -> list[tuple[str, int, int]]:
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
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                st = entry.stat()
                out.append((rel + name, st.st_size, st.st_mtime_ns))
            else:
                raise DataError(f"{entry.path} is not a .png/.jpg/.jpeg image; remove it or "
                                f"move it out of {root}")
    out.sort()    # by relative path: independent of the order the file system lists entries
    return out


def scan_split(root: Path, split: str, classes: list[str] | None = None):
    """Classes and files of root/<split>: (classes, [(relpath, size, mtime_ns)], labels)."""
    split_dir = root / split
    found = _class_dirs(split_dir)
    if classes is None:
        classes = found
        if not classes:
            raise UsageError(f"{split_dir} has no class folders; a folder dataset needs "
                             f"{split_dir}/<class>/*.png|jpg")
    elif found != classes:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise DataError(f"{split_dir} classes differ from train/: missing {missing or 'none'}, "
                        f"extra {extra or 'none'}; test/ must have the same class folders")
    files, labels = [], []
    for idx, name in enumerate(classes):
        these = _image_files(split_dir / name, root)
        if not these and split == "train":
            raise DataError(f"class folder {split_dir / name} has no .png/.jpg/.jpeg images; "
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
    except Exception as e:  # noqa: BLE001 - an unreadable cache is just decoded again
        _say(log, f"ignoring unreadable cache {path} ({type(e).__name__}); decoding again")
        return None
    if not ok:
        _say(log, f"ignoring cache {path}: it does not match the files; decoding again")
        return None
    return x, int(meta[0])


def _write_cache(directory: Path, prefix: str, key: str, x, y, n_resized: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{prefix}{key}.npz"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y, key=np.array(key), meta=np.array([n_resized], np.int64))
        os.replace(tmp, final)   # readers see the old state or the whole new file, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Caches of older versions of this split are stale forever: remove them (they are large).
    for old in directory.glob(f"{prefix}*.npz"):
        if old != final:
            old.unlink(missing_ok=True)
    return final


def _decode(root: Path, files, log: Log) -> tuple[np.ndarray, int, str | None]:
    # One thread on purpose: for 32x32 JPEGs most time is Python-level header parsing in PIL,
    # and threads were measured slower than a plain loop (the GIL is held).
    x = np.empty((len(files), 3, SIZE, SIZE), dtype=np.uint8)
    n_resized, first = 0, None
    for i, (rel, _, _) in enumerate(files):
        arr, resized = load_image(root / rel)
        x[i] = arr.transpose(2, 0, 1)
        if resized:
            n_resized += 1
            first = first or rel
    return x, n_resized, first


def load_split(root: str | Path, split: str, classes: list[str] | None = None, *,
               log: Log = None, use_cache: bool = True):
    """Decode (or read from cache) root/<split>: returns (x uint8 (N,3,32,32), y int64, classes)."""
    root = Path(root)
    try:
        classes, files, labels = scan_split(root, split, classes)
    except OSError as e:   # e.g. a folder without read permission
        raise DataError(f"cannot list {e.filename or root / split}: {e.strerror or e}; check "
                        f"its permissions") from None
    key = _cache_key(classes, files)
    candidates = _cache_candidates(root, split, key)
    if use_cache:
        for directory, prefix in candidates:
            path = directory / f"{prefix}{key}.npz"
            if path.is_file():
                t0 = time.perf_counter()
                got = _read_cache(path, key, labels, log)
                if got is not None:
                    x, n_resized = got
                    _say(log, f"loaded {len(files)} {split} images from cache {path} "
                              f"in {time.perf_counter() - t0:.1f} s"
                              + (f" ({n_resized} were resized to {SIZE}x{SIZE})"
                                 if n_resized else ""))
                    return torch.from_numpy(x), torch.from_numpy(labels), classes

    _say(log, f"decoding {len(files)} images in {root / split}"
              + (" (once: the result is cached)" if use_cache else ""))
    t0 = time.perf_counter()
    x, n_resized, first = _decode(root, files, log)
    took = time.perf_counter() - t0
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
    """Load PATH/train (required) and PATH/test (optional) as a Dataset; mean/std from train."""
    from .stats import channel_mean_std

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
    return Dataset(name="folder", train_x=train_x, train_y=train_y, test_x=test_x,
                   test_y=test_y, classes=classes, mean=mean, std=std)
