"""One run per run directory: an exclusive lock that names its holder.

An `flock` on `RUN_DIR/.resnet-cifar.lock`, taken without waiting. The file also holds the
holder's pid, host, start time and command (JSON with the format tag), so a second run is told
who has the directory. The kernel drops the lock when its process dies, so the lock of a killed
run is never in the way; the holder info it left lacks `released`, and the next holder names it
(`stale_note`). The file is kept when released: it is also the proof that resnet-cifar made the
directory (see rundir.proof). POSIX only (fcntl), like the rest of the package's process handling.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .checkpoint import FORMAT
from .errors import UsageError, WorkError

LOCK_NAME = ".resnet-cifar.lock"
HOLDER_MAX_BYTES = 4096


def os_reason(e: OSError) -> str:
    """The reason of an OSError for a one-line message ('Permission denied')."""
    return e.strerror or type(e).__name__

def describe_holder(info: dict | None) -> str:
    if not info:
        return "a process that has not written its details yet"
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {when} ({info.get('command', '?')})"


def _read_holder(fd: int) -> dict | None:
    try:
        raw = os.pread(fd, HOLDER_MAX_BYTES, 0)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT else None


def holder_of(path: str | Path) -> dict | None:
    """The holder info in a lock file (without taking the lock); None when absent or not ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


class RunLock:
    """An exclusive, non-blocking lock on one run directory, held by this process until `release`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.previous: dict | None = None     # the holder info found when the lock was taken
        self.created_file = False              # this lock created the file (a refused claim removes it)
        self._fd: int | None = None
        self._info: dict = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, command: str) -> None:
        """Take the lock or raise UsageError naming its holder. `previous` tells of the last holder."""
        import fcntl

        for _ in range(10):   # the file may be removed (by a releasing claim) between open and flock
            try:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    self.created_file = True
                except FileExistsError:
                    fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise UsageError(f"cannot write in run directory {str(self.directory)!r} ({os_reason(e)}); "
                                 "choose a writable --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UsageError(f"{str(self.directory)!r} is in use by another run: {describe_holder(holder)}; "
                                 "wait for it to end or stop it, or choose another directory") from None
            except OSError as e:
                os.close(fd)
                raise UsageError(f"cannot lock run directory {str(self.directory)!r} ({os_reason(e)}: the file "
                                 "system has no locks); choose an --out on a local disk") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise WorkError(f"could not lock {str(self.path)!r}: it keeps being replaced; is another tool "
                            "deleting files in that directory?")
        self._fd = fd
        self.previous = _read_holder(fd)
        self._info = {"format": FORMAT, "pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.time(), "command": command[:200]}
        self._write(self._info)

    def stale_note(self) -> str | None:
        """One line about a previous holder that died holding the lock (killed, power cut), if any."""
        p = self.previous
        if not p or p.get("released"):
            return None
        return (f"{self.directory}: the previous run here ({describe_holder(p)}) ended without releasing its "
                "lock (killed?); taking it over")

    def _write(self, info: dict) -> None:
        data = json.dumps(info).encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self, remove: bool = False) -> None:
        """Let go; the file keeps the holder info marked released (or is removed with `remove`)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if remove:
                self.path.unlink(missing_ok=True)
            else:
                self._info["released"] = time.time()
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(self._info).encode("utf-8"), 0)
        except OSError:
            pass   # a vanished or full directory: the kernel lock still goes with the close
        finally:
            os.close(fd)
