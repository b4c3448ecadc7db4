"""Checkpoints: atomic, durable saves and safe loads.

Save: write to a temporary file in the same directory, flush + fsync, `os.replace` onto the final
name, fsync the directory. A crash at any moment leaves either the old file or the new one under
the final name, never a partial one.

Load: always `torch.load(weights_only=True)`: a checkpoint is data (tensors, numbers, strings,
lists, dicts), never code. There is no fallback to an unsafe load. Before that, every member of
the zip archive is checked against its CRC-32 (torch's own reader does not check them), so a
flipped bit or a bad copy is refused instead of loading silently wrong weights.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, UsageError, first_line

FORMAT = "resnet-cifar/1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems/platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write) -> None:
    """Call `write(fileobj)` on a temp file beside `path`, then atomically move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
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
    _fsync_dir(path.parent)


def remove_leftover_temps(directory: str | Path) -> list[Path]:
    """Delete the temp files of saves that were killed mid-write (kill -9, power loss).

    `atomic_write` names them `.NAME.XXXXXXXX.tmp` beside NAME; a run directory has one writer,
    so any that exist when a run (re)starts are leftovers. Returns what was removed.
    """
    removed = []
    for p in sorted(Path(directory).glob(".*.tmp")):
        if p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


class _Writer:
    """File wrapper that keeps the OSError of a failed write: torch's zip writer reports it as a
    bare RuntimeError ("unexpected pos ..."), which would hide e.g. "No space left on device"."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, b):
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        return self.f.flush()


def save(state: dict[str, Any], path: str | Path) -> None:
    """Atomically save a checkpoint dict. Any failure raises CheckpointError; the old file stays."""
    state = {"format": FORMAT, **state}
    writers = []

    def write(f):
        writers.append(_Writer(f))
        torch.save(state, writers[-1])

    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as e:
        cause = writers[-1].error if writers and writers[-1].error is not None else e
        reason = (cause.strerror if isinstance(cause, OSError) else None) or first_line(cause, 160, type(cause).__name__)
        raise CheckpointError(f"could not write checkpoint {path}: {reason}; "
                              "the previous checkpoint is intact (free disk space or choose another --out)") from None


def _verify_zip(p: Path) -> None:
    """Read every member of a zip checkpoint so zipfile checks its CRC-32; raise on any damage."""
    if not zipfile.is_zipfile(p):
        return  # not a zip at all: torch.load refuses it below with its own message
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if info.CRC == 0 and info.file_size:
                    continue  # written without CRCs (torch.serialization.set_crc32_options(False))
                with zf.open(info) as f:
                    while f.read(1 << 22):
                        pass
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, OSError) as e:
        raise CheckpointError(f"checkpoint {str(p)!r} is corrupt ({first_line(e, 160, type(e).__name__)}: a flipped bit or an incomplete "
                              "copy); use another checkpoint (e.g. checkpoints/best.pt or an earlier copy)") from None


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"checkpoint {str(p)!r} does not exist; pass a .pt file or a run directory")
    if p.is_dir():
        candidate = p / "checkpoints" / "best.pt"
        if not candidate.is_file():
            raise UsageError(f"{str(p)!r} is a directory without checkpoints/best.pt; pass a checkpoint file")
        p = candidate
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(p)!r} is empty (an interrupted copy?); use another checkpoint")
    return p


def read(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, Any]:
    """(the file, its content) read safely: CRCs checked, torch.load(weights_only=True), one-line errors."""
    p = _resolve(path)
    _verify_zip(p)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            return p, torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = first_line(e, 160, "unsupported content")
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "Unsupported operand" in str(e):
            raise CheckpointError(f"refusing to load {str(p)!r}: it contains code or objects that are not "
                                  "plain tensors and values (weights_only=True); only load checkpoints you trust "
                                  "to have been written by resnet-cifar") from None
        raise CheckpointError(f"checkpoint {str(p)!r} is corrupt ({first})") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, IndexError,
            TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {str(p)!r} is truncated or corrupt ({first_line(e, 160, type(e).__name__)}); "
                              "use another checkpoint (e.g. checkpoints/best.pt or an earlier copy)") from None


def _ours(state: Any, p: Path, hint: str = "") -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a resnet-cifar checkpoint (no '{FORMAT}' format tag){hint}")
    for key, kind in (("model", dict), ("model_args", dict), ("classes", (list, tuple)), ("mean", (list, tuple)),
                      ("std", (list, tuple))):
        if key not in state:
            raise CheckpointError(f"checkpoint {str(p)!r} lacks {key!r}; it is incomplete or from another tool")
        if not isinstance(state[key], kind):
            raise CheckpointError(f"checkpoint {str(p)!r} has a malformed {key!r} entry "
                                  f"({type(state[key]).__name__}); it is corrupt or from another tool")
    state["path"] = str(p)
    return state


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Safely load a checkpoint file written by `save`; every failure is one CheckpointError line."""
    p, state = read(path, map_location)
    return _ours(state, p)


def is_ours(state: Any) -> bool:
    return isinstance(state, dict) and state.get("format") == FORMAT


def load_any(path: str | Path, *, model: str | None = None, mean=None, std=None,
             stats_required: bool = True) -> dict[str, Any]:
    """A resnet-cifar checkpoint, or another tool's (`foreign.convert`: kuangliu/pytorch-cifar,
    a state_dict of a registry model, ...) in the same shape; `model`/`mean`/`std` name what a
    foreign file does not say. Ours carry their own and refuse a different --model."""
    from . import foreign

    p, raw = read(path)
    if not is_ours(raw):
        return foreign.convert(raw, str(p), model=model, mean=mean, std=std, stats_required=stats_required)
    state = _ours(raw, p)
    if mean is not None or std is not None:
        raise UsageError(f"{str(p)!r} is a resnet-cifar checkpoint: it carries its own mean/std; drop --mean/--std "
                         "(they are for other tools' checkpoints)")
    name = state["model_args"].get("name")
    if model is not None and model != name:
        raise UsageError(f"{str(p)!r} is a resnet-cifar checkpoint of {name!r}, not {model!r}; drop --model "
                         "(it is for other tools' checkpoints) or pass the matching one")
    return state


def init_weights_from(model: torch.nn.Module, path: str | Path, name: str) -> None:
    """Load the weights of checkpoint `path` (ours or another tool's) into `model` (registry `name`);
    a mismatch is one line naming the first differing key."""
    from .foreign import first_difference

    state = load_any(path, model=name, stats_required=False)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    diff = first_difference(expected, state["model"])
    if diff:
        raise UsageError(f"--init-from {str(path)!r} does not fit --model {name} here: {diff}")
    model.load_state_dict(state["model"], strict=False)  # strict up to num_batches_tracked of old files


def build_from_checkpoint(state: dict[str, Any], device: str | torch.device = "cpu",
                          num_classes: int | None = None, channels_last: bool = False) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode); channels_last
    matches the memory format the engine trains and evaluates in."""
    from .models import build_model

    args = dict(state["model_args"])
    if num_classes is not None and num_classes != args.get("num_classes"):
        raise CheckpointError(f"checkpoint {state.get('path', '')!r} has {args.get('num_classes')} classes, "
                              f"but the data has {num_classes}; use a checkpoint trained on this dataset")
    try:
        model = build_model(args["name"], num_classes=int(args["num_classes"]), width=float(args.get("width", 1.0)))
        model.load_state_dict(state["model"])
        if len(state["classes"]) != int(args["num_classes"]):
            raise RuntimeError(f"it names {len(state['classes'])} classes for {args['num_classes']} outputs")
    except (RuntimeError, KeyError, TypeError, ValueError, UsageError) as e:
        raise CheckpointError(f"checkpoint {state.get('path', '')!r} does not fit model "
                              f"{args.get('name')!r}: {first_line(e, 200, type(e).__name__)}") from None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=fmt).eval()
