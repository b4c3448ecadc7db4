"""The official CIFAR-10/100 python archives: download, verify, extract, read.

Safety rule: a pickle is only ever unpickled after its MD5 matched the expected one, and the
unpickler only accepts the few numpy globals the real files use. Production uses the official
MD5s in constants.CIFAR_SOURCES; tests pass their own `sources` dict (same layout) or replace the
module attribute `SOURCES`, because their fake archives necessarily hash differently.

An extracted folder is created all at once: extraction goes into a hidden temp dir beside it, every
file is verified there, and only then is the folder renamed into place. So a folder under the
final name is complete unless someone edited it by hand, and reading re-verifies anyway.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import constants
from ..errors import DataError, UsageError
from . import Dataset

# Module-level so tests (and only tests) can swap in the MD5s of their fixture archives.
SOURCES = constants.CIFAR_SOURCES

DOWNLOAD_TIMEOUT_S = 30          # per socket operation, so a dead mirror fails in 30 s, not hours
_CHUNK = 1 << 20
_TMP_PREFIX = ".resnet-cifar-tmp-"   # + the dataset's folder name: every temp file/dir we create

Log = Callable[[str], None] | None


def _say(log: Log, line: str) -> None:
    if log is not None:
        log(line)


def _source(name: str, sources: dict | None) -> dict:
    sources = SOURCES if sources is None else sources
    if name not in sources:
        raise UsageError(f"unknown CIFAR dataset {name!r}; choose one of: {', '.join(sources)}")
    return sources[name]


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected_files(src: dict) -> list[tuple[str, str]]:
    return [*src["train"], *src["test"], src["meta"]]


def _download_hint(name: str, data_dir: Path) -> str:
    return f"run `resnet-cifar data download --dataset {name} --data-dir {data_dir}` or pass --download"


def resolve_url(name: str, url: str | None = None, sources: dict | None = None) -> str:
    """The URL to fetch: `url` if given, else the dataset's env var (a mirror), else the official one.
    A plain local path is accepted too and turned into a file:// URL."""
    src = _source(name, sources)
    url = url or os.environ.get(src["env"]) or src["url"]
    if "://" not in url:
        path = Path(url).expanduser()
        if not path.is_file():
            raise UsageError(f"--url {url!r} is neither a URL (http://, https://, file://) "
                             f"nor an existing file; give the archive's URL or path")
        url = path.resolve().as_uri()
    return url


def verify_folder(folder: str | Path, src: dict) -> list[str]:
    """Every expected batch/meta file of `folder` that is missing or fails its MD5, one line each
    (empty: the folder is good). `src` is one entry of SOURCES."""
    folder = Path(folder)
    bad = []
    for fname, md5 in _expected_files(src):
        path = folder / fname
        if not path.is_file():
            bad.append(f"{path} is missing")
        elif _md5_file(path) != md5:
            bad.append(f"{path} fails its MD5 check")
    return bad


def _tmp_prefix(src: dict) -> str:
    return f"{_TMP_PREFIX}{src['folder']}-"


def _mktemp(src: dict, directory: Path, *, folder: bool, suffix: str = ""):
    try:
        if folder:
            return Path(tempfile.mkdtemp(prefix=_tmp_prefix(src), dir=directory))
        return tempfile.mkstemp(prefix=_tmp_prefix(src), suffix=suffix, dir=directory)
    except OSError as e:
        raise UsageError(f"cannot write to data directory {directory} ({e.strerror or e}); "
                         f"choose a writable --data-dir") from None


def _clean_leftovers(data_dir: Path, src: dict, log: Log) -> None:
    # Temp files/dirs from an interrupted run are never used: they only ever become real by
    # os.replace after verification, so anything still carrying the prefix is garbage.
    for p in data_dir.glob(_tmp_prefix(src) + "*"):
        _say(log, f"removing leftover {p} from an interrupted download/extraction")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _fetch(name: str, url: str, archive: Path, src: dict, log: Log) -> None:
    """Stream `url` to a temp file in the archive's folder, verify its MD5, then move it into place."""
    manual = (f"put {src['filename']} (MD5 {src['archive_md5']}) at {archive} by hand, "
              f"or use --url / {src['env']} for a mirror")
    _say(log, f"downloading {url}")
    fd, tmp_name = _mktemp(src, archive.parent, folder=False, suffix=".part")
    tmp = Path(tmp_name)
    h = hashlib.md5(usedforsecurity=False)
    size = 0
    t0 = time.perf_counter()
    try:
        try:
            with os.fdopen(fd, "wb") as out, \
                    urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
        except ValueError as e:  # malformed URL / unknown scheme
            raise UsageError(f"cannot download {name} from {url!r}: {e}; {manual}") from None
        except (urllib.error.URLError, OSError, EOFError, http.client.HTTPException) as e:
            # URLError covers HTTP errors and refused connections; OSError covers socket timeouts
            # (socket.timeout is TimeoutError) and connections dropped mid-stream.
            reason = getattr(e, "reason", None) or e
            if isinstance(e, (socket.timeout, TimeoutError)):
                reason = f"no response within {DOWNLOAD_TIMEOUT_S} s"
            raise DataError(f"download of {name} from {url} failed ({reason}); {manual}") from None
        md5 = h.hexdigest()
        if md5 != src["archive_md5"]:
            raise DataError(f"{src['filename']} downloaded from {url} is corrupt or truncated "
                            f"({size} bytes, MD5 {md5}, expected {src['archive_md5']}); it was "
                            f"deleted: download again, or {manual}")
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    _say(log, f"downloaded {size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s to {archive}")


def _extract(archive: Path, final: Path, src: dict, log: Log) -> None:
    """Extract into a temp dir beside `final`, verify every file, then rename into place."""
    tmp_root = _mktemp(src, final.parent, folder=True)
    trash = None
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                if hasattr(tarfile, "data_filter"):
                    # "data" filter: no absolute paths, no "..", no links out, no devices.
                    tar.extractall(tmp_root, filter="data")
                else:  # Python < 3.10.12 without the filter: refuse anything unusual ourselves
                    for m in tar.getmembers():
                        if (not (m.isfile() or m.isdir()) or m.name.startswith(("/", "\\"))
                                or ".." in Path(m.name).parts):
                            raise tarfile.TarError(f"unsafe member {m.name!r}")
                    tar.extractall(tmp_root)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
            raise DataError(f"cannot extract {archive}: {e}; the archive is corrupt: delete it "
                            f"and download again") from None
        except OSError as e:   # the archive is fine, writing failed (disk full, permissions)
            raise DataError(f"cannot extract {archive} into {final.parent}: "
                            f"{e.strerror or e}; free disk space or fix permissions and run "
                            f"again") from None
        extracted = tmp_root / src["folder"]
        bad = verify_folder(extracted, src)
        if bad:
            raise DataError(f"{archive} does not contain the expected files "
                            f"({bad[0].replace(str(extracted), src['folder'])}); delete the "
                            f"archive and download again")
        if final.exists():
            # A bad folder under the final name (checked by the caller): move it aside first,
            # because rename() cannot replace a non-empty directory.
            trash = _mktemp(src, final.parent, folder=True)
            os.replace(final, trash / "old")
        os.replace(extracted, final)
    finally:
        for d in (tmp_root, trash):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
    _say(log, f"extracted and verified {final}")


def download(name: str, data_dir: str | Path, url: str | None = None, log: Log = None,
             *, sources: dict | None = None) -> Path:
    """Make sure the verified batch folder of `name` exists under `data_dir`; return its path.

    Does nothing when the folder is already there and verifies; reuses a verified archive in
    `data_dir`; otherwise downloads from `url` / the env var / the official URL.
    """
    src = _source(name, sources)
    data_dir = Path(data_dir).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create data directory {data_dir}: {e.strerror}; "
                         f"choose another --data-dir") from None
    final = data_dir / src["folder"]
    archive = data_dir / src["filename"]
    _clean_leftovers(data_dir, src, log)

    if final.is_dir():
        bad = verify_folder(final, src)
        if not bad:
            _say(log, f"{name} already present and verified at {final}")
            return final
        _say(log, f"{bad[0]}; rebuilding {final} from the archive")

    if archive.is_file():
        md5 = _md5_file(archive)
        if md5 != src["archive_md5"]:
            raise DataError(f"{archive} is corrupt or truncated (MD5 {md5}, expected "
                            f"{src['archive_md5']}); delete it and download again")
        _say(log, f"using verified archive {archive}")
    else:
        _fetch(name, resolve_url(name, url, sources), archive, src, log)

    _extract(archive, final, src, log)
    return final


# --- reading ---------------------------------------------------------------------------------

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Defence in depth behind the MD5 check: the CIFAR pickles only need numpy arrays (plus
    `_codecs.encode`, which Python 3 writes for bytes in protocol-2 pickles)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _read_verified(path: Path, md5: str, name: str, data_dir: Path) -> bytes:
    """The bytes of `path`, after checking their MD5 (the same bytes are unpickled later)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} is missing (an incomplete {name} folder); delete "
                        f"{path.parent} and {_download_hint(name, data_dir)}") from None
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    got = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if got != md5:
        raise DataError(f"{path} fails its MD5 check (got {got}, expected {md5}): the file is "
                        f"corrupt; delete {path.parent} and download again "
                        f"(`resnet-cifar data download --dataset {name} --data-dir {data_dir}`)")
    return raw


def _unpickle(raw: bytes, path: Path) -> dict:
    try:
        # The real files are Python-2 pickles: encoding="bytes" keeps their str keys as bytes
        # and hands numpy the raw array bytes unchanged.
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any unpickling failure means a bad file
        raise DataError(f"{path} is not a CIFAR batch file ({e}); delete {path.parent} and "
                        f"download again") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR batch file (a {type(obj).__name__}, not a dict)")
    return obj


def _get(d: dict, key: str, path: Path):
    # Python-2 pickles loaded with encoding="bytes" have bytes keys; pickles written by
    # Python 3 have str keys. Accept both.
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path} has no {key!r} entry; it is not a CIFAR batch file of this dataset")


def _read_batches(folder: Path, raws: dict, files, src, num_classes):
    xs, ys = [], []
    for fname, _ in files:
        path = folder / fname
        d = _unpickle(raws.pop(fname), path)    # pop: free each file's bytes once decoded
        data = np.asarray(_get(d, "data", path))
        labels = np.asarray(_get(d, src["label_key"], path), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                or labels.shape != (data.shape[0],):
            raise DataError(f"{path} has data of shape {data.shape} ({data.dtype}) and "
                            f"{labels.shape[0]} labels; expected (N, 3072) uint8 and N labels")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{path} has labels outside 0..{num_classes - 1}")
        # Each row is R(1024) G(1024) B(1024), row-major 32x32 planes: exactly (3, 32, 32).
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs)))
    y = torch.from_numpy(np.concatenate(ys))
    return x, y


def find_folder(name: str, data_dir: str | Path, *, sources: dict | None = None) -> Path:
    """The batch folder: DATA_DIR/<official folder name>, or DATA_DIR itself if it is that folder."""
    src = _source(name, sources)
    data_dir = Path(data_dir).expanduser()
    for cand in (data_dir / src["folder"], data_dir):
        if (cand / src["meta"][0]).is_file():
            return cand
    if (data_dir / src["folder"]).is_dir():
        return data_dir / src["folder"]   # exists but incomplete: reading names the missing file
    raise UsageError(f"{name} not found in {data_dir} (no {src['folder']}/ folder); "
                     f"{_download_hint(name, data_dir)}")


def read_cifar(name: str, data_dir: str | Path, *, sources: dict | None = None,
               log: Log = None) -> Dataset:
    """Read the extracted, MD5-verified batches of cifar10/cifar100 into a Dataset."""
    src = _source(name, sources)
    data_dir = Path(data_dir).expanduser()
    folder = find_folder(name, data_dir, sources=sources)
    # Verify every file before unpickling any of them: a bad file anywhere stops everything.
    raws = {fname: _read_verified(folder / fname, md5, name, data_dir)
            for fname, md5 in _expected_files(src)}
    meta_path = folder / src["meta"][0]
    meta = _unpickle(raws.pop(src["meta"][0]), meta_path)
    classes = [c.decode() if isinstance(c, bytes) else str(c)
               for c in _get(meta, src["names_key"], meta_path)]
    train_x, train_y = _read_batches(folder, raws, src["train"], src, len(classes))
    test_x, test_y = _read_batches(folder, raws, src["test"], src, len(classes))
    mean, std = {"cifar10": (constants.CIFAR10_MEAN, constants.CIFAR10_STD),
                 "cifar100": (constants.CIFAR100_MEAN, constants.CIFAR100_STD)}[name]
    _say(log, f"read {len(train_y)} train and {len(test_y)} test images from {folder}")
    return Dataset(name=name, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                   classes=classes, mean=mean, std=std)
