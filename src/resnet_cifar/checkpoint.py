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

import pickle
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from . import bounds
from .errors import CheckpointError, UsageError, first_line
from .fsutil import atomic_write

FORMAT = "resnet-cifar/1"


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


def _corrupt(p: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {str(p)!r} is corrupt ({why}: a flipped bit or an incomplete copy); "
                           "use another checkpoint (e.g. checkpoints/best.pt or an earlier copy)")


def _verify_zip(p: Path) -> None:
    """Read every member of a zip checkpoint so zipfile checks its CRC-32; raise on any damage.

    A member whose CRC field is 0 is checked too (its data must then hash to 0): a zeroed field
    is exactly what a damaged or doctored central directory looks like, so it buys no exemption.
    """
    if not zipfile.is_zipfile(p):
        return  # not a zip at all: torch.load refuses it below with its own message
    zero_crc = False
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                zero_crc = info.CRC == 0 and info.file_size > 0
                with zf.open(info) as f:
                    crc = 0
                    while chunk := f.read(1 << 22):
                        crc = zlib.crc32(chunk, crc)
                if crc != info.CRC:   # zipfile checks this too; kept explicit so no member is exempt
                    raise zipfile.BadZipFile(f"bad CRC-32 for {info.filename[:80]!r}")
    except zipfile.BadZipFile as e:
        if zero_crc and "CRC" in str(e):
            raise CheckpointError(f"checkpoint {str(p)!r} has members without a CRC-32 (field 0), so it cannot "
                                  "be verified: it is damaged, or was saved with torch.serialization."
                                  "set_crc32_options(False); re-save it with torch.save's defaults") from None
        raise _corrupt(p, first_line(e, 160, type(e).__name__)) from None
    except (zlib.error, EOFError, ValueError, NotImplementedError, OSError) as e:
        raise _corrupt(p, first_line(e, 160, type(e).__name__)) from None


def _torch_load(p: Path, map_location) -> Any:
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = first_line(e, 160, "unsupported content")
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "Unsupported operand" in str(e):
            raise CheckpointError(f"refusing to load {str(p)!r}: it contains code or objects that are not "
                                  "plain tensors and values (weights_only=True); only load checkpoints you trust "
                                  "to have been written by resnet-cifar") from None
        raise CheckpointError(f"checkpoint {str(p)!r} is corrupt ({first})") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, IndexError,
            TypeError, AttributeError, RecursionError, MemoryError) as e:
        raise CheckpointError(f"checkpoint {str(p)!r} is truncated or corrupt ({first_line(e, 160, type(e).__name__)}); "
                              "use another checkpoint (e.g. checkpoints/best.pt or an earlier copy)") from None


def _metadata_problem(state: dict) -> str | None:
    """Why the checkpoint's metadata is unusable (types, sizes, ranges), or None. Runs before
    anything is built or printed from it."""
    args = state["model_args"]
    problem = bounds.model_size_problem(args.get("name"), args.get("num_classes"), args.get("width", 1.0))
    if problem:
        return f"model_args: {problem}"
    classes = state["classes"]
    if len(classes) != args["num_classes"]:
        return f"it names {len(classes)} classes for {args['num_classes']} outputs"
    if not all(bounds.short_str(c) for c in classes):
        return f"class names must be strings of 1 to {bounds.MAX_NAME_CHARS} characters"
    for key in ("mean", "std"):
        vals = state[key]
        if len(vals) != 3 or not all(bounds.float_in(v, 0.0, 1e6, lo_open=key == "std") for v in vals):
            return f"{key} must be 3 finite numbers{' above 0' if key == 'std' else ''}"
    weights = state["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        return "its 'model' entry is not a dict of named tensors"
    return None


def _check_entries(p: Path, state: Any) -> None:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a resnet-cifar checkpoint (no '{FORMAT}' format tag)")
    try:
        bounds.check_plain(state, "the checkpoint")
    except bounds.TooLarge as e:
        raise CheckpointError(f"refusing checkpoint {str(p)!r}: {e}; it is damaged or not from resnet-cifar") from None
    for key, kind in (("model", dict), ("model_args", dict), ("classes", (list, tuple)), ("mean", (list, tuple)),
                      ("std", (list, tuple))):
        if key not in state:
            raise CheckpointError(f"checkpoint {str(p)!r} lacks {key!r}; it is incomplete or from another tool")
        if not isinstance(state[key], kind):
            raise CheckpointError(f"checkpoint {str(p)!r} has a malformed {key!r} entry "
                                  f"({type(state[key]).__name__}); it is corrupt or from another tool")
    problem = _metadata_problem(state)
    if problem:
        raise CheckpointError(f"refusing checkpoint {str(p)!r}: {problem}; it is damaged or not from resnet-cifar")


def _resolve(path: str | Path) -> Path:
    """The checkpoint file a path names (a run directory means its checkpoints/best.pt)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"checkpoint {str(p)!r} does not exist; pass a .pt file or a run directory")
    if p.is_dir():
        candidate = p / "checkpoints" / "best.pt"
        if not candidate.is_file():
            raise UsageError(f"{str(p)!r} is a directory without checkpoints/best.pt; pass a checkpoint file")
        p = candidate
    if not p.is_file():
        raise UsageError(f"checkpoint {str(p)!r} is not a regular file; pass a .pt file or a run directory")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(p)!r} is empty (an interrupted copy?); use another checkpoint")
    return p


def read(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, Any]:
    """(the file, its content), read safely: CRCs checked, torch.load(weights_only=True), one-line errors."""
    p = _resolve(path)
    _verify_zip(p)
    return p, _torch_load(p, map_location)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Safely load a checkpoint file written by `save`; every failure is one CheckpointError line.

    The returned state's metadata is checked: plain data of bounded size, model_args within
    `bounds`, classes/mean/std that fit them; so callers may print and use it.
    """
    p, state = read(path, map_location)
    _check_entries(p, state)
    state["path"] = str(p)
    return state


def is_ours(state: Any) -> bool:
    return isinstance(state, dict) and state.get("format") == FORMAT


def load_any(path: str | Path, *, model: str | None = None, mean=None, std=None,
             stats_required: bool = True) -> dict[str, Any]:
    """A resnet-cifar checkpoint, or another tool's (`foreign.convert`: kuangliu/pytorch-cifar,
    a state_dict of a registry model, ...) in the same shape; `model`/`mean`/`std` say what a
    foreign file does not. Ours carry their own: a different --model or any --mean/--std is refused."""
    from . import foreign

    p, raw = read(path)
    if not is_ours(raw):
        try:
            bounds.check_plain(raw, "the checkpoint")
        except bounds.TooLarge as e:
            raise CheckpointError(f"refusing checkpoint {str(p)!r}: {e}; it is damaged") from None
        state = foreign.convert(raw, str(p), model=model, mean=mean, std=std, stats_required=stats_required)
        problem = _metadata_problem(state) if state["mean"] is not None else None
        if problem:
            raise UsageError(f"checkpoint {str(p)!r}: {problem}")
        return state
    _check_entries(p, raw)
    raw["path"] = str(p)
    if mean is not None or std is not None:
        raise UsageError(f"{str(p)!r} is a resnet-cifar checkpoint: it carries its own mean/std; drop --mean/--std "
                         "(they are for other tools' checkpoints)")
    name = raw["model_args"].get("name")
    if model is not None and model != name:
        raise UsageError(f"{str(p)!r} is a resnet-cifar checkpoint of {str(name)[:64]!r}, not {model!r}; drop "
                         "--model (it is for other tools' checkpoints) or pass the matching one")
    return raw


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


def _shape_mismatch(expected: dict[str, torch.Size], stored: dict[str, torch.Tensor]) -> str | None:
    """The first differences between the weights a model needs and those stored, or None."""
    missing = [k for k in expected if k not in stored]
    extra = [k for k in stored if k not in expected]
    wrong = [f"{k} {tuple(stored[k].shape)} vs {tuple(v)}" for k, v in expected.items()
             if k in stored and tuple(stored[k].shape) != tuple(v)]
    parts = []
    if wrong:
        parts.append(f"{len(wrong)} weights have other shapes than the model args imply (first: {wrong[0][:120]})")
    if missing:
        parts.append(f"{len(missing)} weights missing (first: {missing[0][:80]})")
    if extra:
        parts.append(f"{len(extra)} unexpected weights (first: {extra[0][:80]})")
    return "; ".join(parts) or None


def build_from_checkpoint(state: dict[str, Any], device: str | torch.device = "cpu",
                          num_classes: int | None = None, channels_last: bool = False) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode); channels_last
    matches the memory format the engine trains and evaluates in.

    The model is first built on the meta device (no memory) and its weight shapes compared with
    the stored ones, so arguments that do not match the weights are refused before allocating.
    """
    from .models import build_model

    args = dict(state["model_args"])
    where = state.get("path", "")
    if num_classes is not None and num_classes != args.get("num_classes"):
        raise CheckpointError(f"checkpoint {where!r} has {args.get('num_classes')} classes, "
                              f"but the data has {num_classes}; use a checkpoint trained on this dataset")
    problem = bounds.model_size_problem(args.get("name"), args.get("num_classes"), args.get("width", 1.0))
    try:
        if problem:
            raise ValueError(problem)
        kw = {"num_classes": int(args["num_classes"]), "width": float(args.get("width", 1.0))}
        with torch.device("meta"):
            expected = {k: v.shape for k, v in build_model(args["name"], **kw).state_dict().items()}
        problem = _shape_mismatch(expected, state["model"])
        if problem:
            raise ValueError(problem)
        model = build_model(args["name"], **kw)
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError, UsageError) as e:
        raise CheckpointError(f"checkpoint {where!r} does not fit model "
                              f"{str(args.get('name'))[:64]!r}: {first_line(e, 200, type(e).__name__)}") from None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=fmt).eval()
