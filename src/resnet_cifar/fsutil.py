"""Atomic writes: the one way this package puts a file (or a folder of files) in place.

`atomic_write(path, write)` calls `write(fileobj)` on a temporary file in the same directory
(`.NAME.XXXXXXXX.tmp`), flushes and fsyncs it, renames it onto `path` (`os.replace`, atomic on
POSIX and Windows) and fsyncs the directory. A crash, a full disk or any exception at any moment
leaves either the old file or the new one under the final name, never a partial one, and removes
the temp file. `write_text`, `write_bytes` and `write_npz` wrap it and turn an OSError into one
WorkError line (exit 1) that says the previous file is intact.

`replace_dir(build, final)` does the same for a folder: the caller fills a temp folder beside
`final`; only when it is complete does it take `final`'s name (the old folder is renamed aside
first and deleted after), so a failure while building leaves the old folder as it was.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import WorkError

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable (best effort: some file systems cannot open folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    """The permissions a plain open() would give (0666 minus the umask); mkstemp makes 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable) -> None:
    """Call `write(fileobj)` on a temp file beside `path`, then atomically move it into place.

    Exceptions (OSError for a full disk, or whatever `write` raises) propagate unchanged after
    the temp file is removed; the previous file under `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def write_error(path: str | Path, e: OSError, what: str = "file") -> WorkError:
    """The one-line error for a failed atomic write (the old file is intact by construction)."""
    return WorkError(f"cannot write {path}: {e.strerror or e}; the previous {what} is intact "
                     f"(free disk space or check the folder is writable)")


def write_bytes(path: str | Path, data: bytes, what: str = "file") -> Path:
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise write_error(path, e, what) from None
    return Path(path)


def write_text(path: str | Path, text: str, what: str = "file") -> Path:
    return write_bytes(path, text.encode("utf-8"), what)


def write_npz(path: str | Path, what: str = "file", **arrays) -> Path:
    """np.savez into memory first (so numpy never sees a half-written file), then atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_bytes(path, buf.getvalue(), what)


def remove_leftover_temps(directory: str | Path) -> list[Path]:
    """Delete the temp files of writes that were killed mid-write (kill -9, power loss).

    `atomic_write` names them `.NAME.XXXXXXXX.tmp` beside NAME; a directory this package writes
    has one writer at a time, so any that exist when it (re)starts are leftovers.
    """
    removed = []
    for p in sorted(Path(directory).glob(f".*{TMP_SUFFIX}")):
        if p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def temp_dir_beside(final: str | Path) -> Path:
    """A fresh empty folder next to `final` (same file system, so a rename can move it)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent))


def replace_dir(build: str | Path, final: str | Path) -> None:
    """Move the complete folder `build` onto `final`, replacing what was there.

    The old folder is first renamed aside (one rename), the new one takes its name (a second),
    and the old one is deleted after. Between the two renames `final` is briefly absent, never
    half-written; if the second rename fails the old folder is moved back.
    """
    build, final = Path(build), Path(final)
    aside = None
    if final.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", suffix=TMP_SUFFIX, dir=final.parent))
        os.replace(final, aside / final.name)
    try:
        os.replace(build, final)
    except BaseException:
        if aside is not None:
            os.replace(aside / final.name, final)
            shutil.rmtree(aside, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def remove_leftover_dirs(parent: str | Path, name: str) -> None:
    """Delete temp folders of `replace_dir`/`temp_dir_beside` for `name` left by a killed build."""
    for p in Path(parent).glob(f".{name}.*{TMP_SUFFIX}"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
