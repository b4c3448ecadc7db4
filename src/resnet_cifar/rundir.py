"""The run directory as a claimed place: can it be written, who holds it, may --overwrite replace it.

- `claim(path, ...)` checks an `--out` or `--resume` path up front (a symbolic link, a file, a path
  that cannot be created), creates the directory and takes its lock, all before any data loads.
  A refused or abandoned claim removes what it created, so a failed start leaves nothing behind.
- One run per directory: the claim holds its `runlock.RunLock` until the run ends.
- The `--overwrite` rule: a directory is replaced only when resnet-cifar provably made it (its
  lock, a checkpoint or results carrying the format tag) and it holds nothing else than what a
  run writes (`foreign_entries`). A folder of yours that merely has a `config.yaml` is refused.
- `config_edits`: which keys of `RUN_DIR/config.yaml` were edited by hand since the run wrote it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import FORMAT
from .distributed import RESTART_MARKER
from .errors import UsageError, WorkError
from .runlock import LOCK_NAME, RunLock, holder_of, os_reason

SEEDS_FILE = "seeds.json"     # in a --seeds parent: the seeds and the base config (see run.py)
# What a run writes at the top of its directory; a --seeds parent also holds seed-N/ run directories.
RUN_FILES = frozenset({"config.yaml", "metrics.csv", "results.json", "predictions.npz", "summary.json",
                       SEEDS_FILE, LOCK_NAME, RESTART_MARKER})
FILE_DIRS = frozenset({"checkpoints", "report", "tensorboard"})   # folders of plain files only
SEED_DIR = re.compile(r"seed-\d+")
TEMP_FILE = re.compile(r"\..+\.tmp")                              # an atomic write (or folder) cut short
PROOF_JSON = ("results.json", "summary.json", SEEDS_FILE)
PROOF_CHECKPOINTS = ("checkpoints/last.pt", "checkpoints/best.pt")


# ------------------------------------------------------------------------- what made this folder
def _json_tagged(path: Path) -> bool:
    try:
        if path.stat().st_size > (16 << 20):
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _checkpoint_tagged(path: Path) -> bool:
    """True when `path` is a checkpoint saved by this package (read without loading its tensors)."""
    if not path.is_file():
        return False
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # anything unreadable is simply no proof
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def proof(directory: str | Path, lock_info: dict | None | bool = True) -> str | None:
    """What shows that resnet-cifar made `directory` (a path relative to it), or None.

    Its lock file with holder info, results/summary/seeds JSON with the format tag, or a
    checkpoint with it; a --seeds parent also by its seed-N run directories, each proven.
    `lock_info`: the holder info the lock held before this process took it (True: read the file).
    """
    d = Path(directory)
    had_holder = (holder_of(d / LOCK_NAME) is not None) if lock_info is True else bool(lock_info)
    if had_holder:   # a run of this tool claimed it (perhaps killed before its first checkpoint)
        return LOCK_NAME
    for name in PROOF_JSON:
        if _json_tagged(d / name):
            return name
    for name in PROOF_CHECKPOINTS:
        if _checkpoint_tagged(d / name):
            return name
    seeds = sorted(p for p in d.iterdir() if p.is_dir() and SEED_DIR.fullmatch(p.name)) if d.is_dir() else []
    children = [proof(s) for s in seeds]
    if seeds and all(children):
        return f"{seeds[0].name}/{children[0]}"
    return None


def _kind(entry: os.DirEntry) -> str:
    if entry.is_symlink():
        return "link"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    return "file" if entry.is_file(follow_symlinks=False) else "other"


def foreign_entries(directory: str | Path, _prefix: str = "") -> list[str]:
    """Everything in `directory` that no run writes (relative paths; links and special files too)."""
    found = []
    for e in sorted(os.scandir(directory), key=lambda e: e.name):
        kind, name = _kind(e), _prefix + e.name
        if (kind == "file" and e.name in RUN_FILES) or (kind in ("file", "dir") and TEMP_FILE.fullmatch(e.name)):
            continue   # temp dirs: a report build cut short
        if kind == "dir" and e.name in FILE_DIRS:
            found += [f"{name}/{s.name}" for s in sorted(os.scandir(e.path), key=lambda s: s.name)
                      if _kind(s) != "file" or (e.name == "checkpoints" and not (
                          s.name.endswith(".pt") or TEMP_FILE.fullmatch(s.name)))]
            continue
        if kind == "dir" and not _prefix and SEED_DIR.fullmatch(e.name):
            found += foreign_entries(e.path, name + "/")
            continue
        found.append(name + {"dir": "/", "link": " (a symbolic link)", "other": " (not a regular file)"}.get(kind, ""))
    return found


def check_replaceable(directory: str | Path, lock_info: dict | None | bool = True) -> None:
    """Raise UsageError unless --overwrite may delete `directory` (see the module's docstring);
    `lock_info` as for `proof`."""
    d = str(directory)
    foreign = foreign_entries(directory)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise UsageError(f"--overwrite refuses to delete {d!r}: it is not a resnet-cifar run directory (it holds "
                         f"{', '.join(foreign[:3])}{more}, which no run writes); move those away, or choose another --out")
    if proof(directory, lock_info) is None:
        raise UsageError(f"--overwrite refuses to delete {d!r}: it is not a resnet-cifar run directory (nothing in "
                         f"it shows that resnet-cifar made it: no checkpoint or results with the {FORMAT!r} tag); "
                         "delete it yourself if it is one, or choose another --out")


def clear(directory: str | Path) -> None:
    """Delete everything in a run directory except its lock (which the caller holds)."""
    for e in os.scandir(directory):
        if e.name == LOCK_NAME:
            continue
        if _kind(e) == "dir":
            shutil.rmtree(e.path)
        else:
            os.unlink(e.path)


def _names(directory: Path) -> frozenset:
    return frozenset(os.listdir(directory)) - {LOCK_NAME}


def is_empty(directory: Path) -> bool:
    """No entries but the lock and the torchrun restart marker."""
    return all(e.name in (LOCK_NAME, RESTART_MARKER) for e in os.scandir(directory))


# ------------------------------------------------------------------------------------ the claim
def _make_dirs(path: Path, flag: str) -> list[Path]:
    """Create `path` and its missing parents; return those created (outermost first)."""
    missing, p = [], path
    while not (p.exists() or p.is_symlink()):
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise UsageError(f"{flag} {str(path)!r}: {str(p)!r} is a file, not a directory; choose a path in a directory")
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except OSError as e:
            _remove_dirs(created)
            raise UsageError(f"{flag} {str(path)!r}: cannot create {str(d)!r} ({os_reason(e)}); "
                             "choose a writable path") from None
        created.append(d)
    return created


def _remove_dirs(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            return


@dataclass
class Claim:
    """A run directory this process holds: locked, checked, and created if it was missing."""
    path: Path
    locks: list[RunLock]
    created: list[Path] = field(default_factory=list)
    replace: bool = False      # --overwrite of an existing run: `replace_old()` deletes it
    names: frozenset = frozenset()   # what the directory held when it was claimed (the lock aside)

    def notes(self) -> list[str]:
        return [n for n in (lock.stale_note() for lock in self.locks) if n]

    def replace_old(self) -> None:
        """Carry out --overwrite (call it once the data has loaded, so a bad start loses nothing)."""
        if self.replace:
            clear(self.path)
            self.replace = False

    def check_alive(self) -> None:
        """Raise WorkError when the run directory was deleted, moved or replaced while the run held it."""
        if not (self.path / LOCK_NAME).is_file():
            raise _gone(self.path)

    def release(self, refused: bool = False) -> None:
        """Unlock. When the run wrote nothing, leave the place as it was found: a lock file this claim
        created is removed, and so are the directories it created. `refused`: the claim failed."""
        own = self.locks[0]
        try:
            bare = is_empty(self.path)
            untouched = _names(self.path) == self.names
        except OSError:
            bare = untouched = False
        for lock in reversed(self.locks[1:]):
            lock.release(remove=refused and lock.created_file)
        own.release(remove=bare or (untouched and own.created_file))
        if bare and self.created:
            _remove_dirs(self.created)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _gone(path: Path) -> WorkError:
    return WorkError(f"the run directory {str(path)!r} was deleted or moved while the run was going; "
                     "stopping (it is not re-created)")


def check_alive(run_dir: str | Path) -> None:
    """Raise WorkError when `run_dir` is gone (before a write that would silently create it again)."""
    if not Path(run_dir).is_dir():
        raise _gone(Path(run_dir))


def _refuse_link(path: Path, flag: str) -> None:
    if path.is_symlink():
        raise UsageError(f"{flag} {str(path)!r} is a symbolic link (to {os.readlink(path)!r}); pass the real "
                         "directory instead")


def _refuse_link_or_file(path: Path) -> None:
    _refuse_link(path, "--out")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {str(path)!r} is a file; choose a directory path")


def _seeds_parent(path: Path) -> Path | None:
    parent = path.parent
    return parent if _json_tagged(parent / SEEDS_FILE) else None


def check_out(path: str | Path, overwrite: bool, lock_info: dict | None | bool = True) -> None:
    """May a new run write into `path`? Missing or empty: yes; a run directory: only with --overwrite, and
    only one that resnet-cifar provably made (`check_replaceable`). Nothing is written here."""
    path = Path(path)
    _refuse_link_or_file(path)
    if path.is_dir() and not is_empty(path):
        if not overwrite:
            raise UsageError(f"--out {str(path)!r} exists and is not empty; pass --overwrite to replace it, "
                             f"--resume {path} to continue it, or choose another --out")
        check_replaceable(path, lock_info)


def claim(path: str | Path, *, command: str, overwrite: bool = False, resume: bool = False) -> Claim:
    """Claim `path` for one run (see the module's docstring). UsageError, with nothing left behind, when
    it cannot be: a link or a file, not creatable or writable, locked by another run, not empty
    (without --overwrite), or not provably a run directory (with it). `resume`: an existing run."""
    path = Path(path)
    if resume:
        _refuse_link(path, "--resume")
        if not path.is_dir():
            raise UsageError(f"--resume {str(path)!r}: no checkpoints/last.pt there (the directory does not exist); "
                             "pass the run directory of an earlier `resnet-cifar train`")
    else:
        _refuse_link_or_file(path)
        if path.is_dir() and holder_of(path / LOCK_NAME) is None:
            check_out(path, overwrite)   # a folder no run has claimed is refused without a file put into it
    c = Claim(path, [RunLock(path)], _make_dirs(path, "--resume" if resume else "--out"))
    try:
        c.locks[0].acquire(command)
        c.names = _names(path)
        parent = _seeds_parent(path)
        if parent is not None:   # a seed of a --seeds run: its parent must not be running either
            c.locks.append(RunLock(parent))
            c.locks[1].acquire(command)
        if not resume:
            check_out(path, overwrite, c.locks[0].previous)
            c.replace = not is_empty(path)
    except BaseException:
        c.release(refused=True)
        raise
    return c


# ------------------------------------------------------------------------------ config.yaml edits
def _short(value, limit: int = 60) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    return r.repr(value)


def config_edits(run_dir: str | Path, saved: dict, ignore: tuple[str, ...] = ("device",)) -> list[str]:
    """Keys of RUN_DIR/config.yaml that differ from `saved` (the checkpoint's config), one 'key: old -> new'
    each; ['config.yaml: ...'] when it cannot be read as a mapping; [] when it is missing or unedited."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return []
    import yaml

    try:
        if path.stat().st_size > (1 << 20):
            return ["config.yaml: larger than 1 MiB, not the file a run writes"]
        now = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return [f"config.yaml: unreadable ({type(e).__name__})"]
    if not isinstance(now, dict):
        return [f"config.yaml: not a mapping of keys ({type(now).__name__})"]
    keys = [k for k in saved if k not in ignore] + [k for k in now if k not in saved and k not in ignore]
    out = []
    for k in keys:
        if k not in now:
            out.append(f"{k}: removed (was {_short(saved[k])})")
        elif k not in saved:
            out.append(f"{_short(k)}: added ({_short(now[k])})")
        elif now[k] != saved[k] or isinstance(now[k], bool) != isinstance(saved[k], bool):
            out.append(f"{k}: {_short(saved[k])} -> {_short(now[k])}")
    return out


def check_config_unedited(run_dir: str | Path, saved: dict) -> None:
    """Raise UsageError naming the hand edits of RUN_DIR/config.yaml (a resume would overwrite them)."""
    edits = config_edits(run_dir, saved)
    if edits:
        more = f" and {len(edits) - 5} more" if len(edits) > 5 else ""
        raise UsageError(f"{Path(run_dir) / 'config.yaml'} was edited after the run wrote it ({'; '.join(edits[:5])}"
                         f"{more}); --resume continues with the run's own config (saved in its checkpoint) and "
                         "would overwrite the edit: undo it, or start a new run from it with "
                         f"--config {Path(run_dir) / 'config.yaml'} --out NEW_DIR")
