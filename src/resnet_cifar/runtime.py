"""Where and how the math runs: device choice, seeding and RNG state, autocast, GradScaler, compile.

Everything that differs between CPU and CUDA is decided here once, so the training step itself
has no device or precision branches (nanoGPT's pattern).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError, describe


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    """The card's name on CUDA, the CPU's model name otherwise (results.json, bench)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def pick_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if cuda_available() else "cpu"
    if name == "cuda":
        if not cuda_available():
            raise UsageError("--device cuda was asked for but CUDA is not available "
                             "(check `resnet-cifar env`); use --device cpu or auto")
        return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    if name == "mps":
        if not mps_available():
            raise UsageError("--device mps was asked for but MPS is not available; use --device cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    from .config import DEVICES

    raise UsageError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")


def cpu_bf16_instructions() -> list[str] | None:
    """The x86 CPU's native bf16 instructions that oneDNN uses (AVX512_BF16, AMX tiles): [] where it has
    none, None where torch cannot tell (another architecture, e.g. an Arm CPU with its own bf16; a torch
    without these private probes). Without them bf16 is emulated and slower than fp32 (the workplace
    measured 0.11x and 0.77x for ResNet-18); with them `--amp bf16` trains the speedrun net 1.9x
    (a Zen 4) to 2.65x (an AMX Xeon) faster (benchmarks/README.md S28, S39). `auto` stays fp32 on
    every CPU all the same: the preset's accuracy under CPU bf16 rests on one run (S41), and a default
    that follows the CPU would give the same command different numbers on different machines."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i686"):
        return None
    found = []
    for name, probe in (("AVX512_BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported")):
        try:
            if getattr(torch.cpu, probe)():
                found.append(name)
        except Exception:  # a private probe: absent or failing means "cannot tell"
            return None
    return found


def resolve_amp(amp: str, device: torch.device) -> str:
    """'auto' means bf16 on CUDA cards that have it (fp16 + GradScaler on older ones), off elsewhere."""
    if amp != "auto":
        if amp != "off" and device.type == "cpu" and amp == "fp16":
            raise UsageError("--amp fp16 needs a CUDA device (fp16 on the CPU is slow and unscaled); "
                             "use --amp bf16 or off on the CPU")
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "off"


def autocast(device: torch.device, amp: str):
    """A context manager built once per run; the step just does `with ctx:`."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Only fp16 needs loss scaling; a disabled scaler passes everything through unchanged."""
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu",
                                enabled=(amp == "fp16" and device.type == "cuda"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Bitwise-reproducible kernels (slower on CUDA). cuBLAS needs its workspace fixed first."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Only touch the global switch when it changes: setting it imports torch._inductor (seconds).
    if torch.are_deterministic_algorithms_enabled() != on:
        torch.use_deterministic_algorithms(on, warn_only=False)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


def rng_state() -> dict:
    """All RNG states as plain values and tensors (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "cuda": torch.cuda.get_rng_state_all() if cuda_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if state["cuda"] and cuda_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def maybe_compile(model: torch.nn.Module, mode: str, device: torch.device, warn=None):
    """torch.compile on CUDA by default. A compile failure falls back to eager with one warning.

    Compilation is lazy: `torch.compile` itself rarely fails, the first call does. So the compiled
    module is wrapped in `CompileFallback`, which runs the eager module instead (and warns once)
    when a compiled call fails.
    """
    enabled = mode == "on" or (mode == "auto" and device.type == "cuda")
    if not enabled:
        return model
    try:
        compiled = torch.compile(model)
    except Exception as e:  # any compiler failure means "run eager"
        _warn_compile(e, warn)
        return model
    return CompileFallback(compiled, model, warn)


def _is_compiler_error(e: BaseException) -> bool:
    return any(c.__module__.startswith(("torch._dynamo", "torch._inductor", "torch._functorch"))
               for c in type(e).__mro__)


class CompileFallback(torch.nn.Module):
    """A compiled module with its eager module behind it.

    Any exception on the first compiled call, and a compiler exception (dynamo/inductor) on a
    later one (a recompile for a new shape, say), swaps in the eager module for good, with one
    warning; the failed call is rerun eagerly. Out-of-memory is never treated as a compile failure.
    The backward graph is lowered during the first forward (not lazily at the first backward), so
    a backward that cannot compile fails inside this guard too. Attributes the wrapper does not
    have (`no_sync` of DDP, ...) come from the eager module; the parameters are the eager module's.
    """

    def __init__(self, compiled, eager: torch.nn.Module, warn=None):
        super().__init__()
        self.module = eager
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: no duplicate state
        object.__setattr__(self, "_warn", warn)
        object.__setattr__(self, "_ok_calls", 0)

    @property
    def compiled_active(self) -> bool:
        return self._compiled is not None

    def forward(self, *args, **kwargs):
        compiled = self._compiled
        if compiled is not None:
            try:
                if self._ok_calls == 0:
                    with _eager_backward_lowering():
                        out = compiled(*args, **kwargs)
                else:
                    out = compiled(*args, **kwargs)
            except Exception as e:  # judged below
                if isinstance(e, torch.OutOfMemoryError) or not (self._ok_calls == 0 or _is_compiler_error(e)):
                    raise
                object.__setattr__(self, "_compiled", None)
                _warn_compile(e, self._warn)
            else:
                object.__setattr__(self, "_ok_calls", self._ok_calls + 1)
                return out
        return self.module(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module" or "module" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["module"], name)


def _eager_backward_lowering():
    try:
        from torch._functorch import config as functorch_config

        if hasattr(functorch_config, "force_non_lazy_backward_lowering"):
            return functorch_config.patch(force_non_lazy_backward_lowering=True)
    except Exception:  # an internal knob; without it the guard still covers the forward
        pass
    return contextlib.nullcontext()


def _warn_compile(e: Exception, warn) -> None:
    msg = f"warning: torch.compile failed ({describe(e, 300)}); running eager (--compile off silences this)"
    (warn or (lambda m: warnings.warn(m, stacklevel=3)))(msg)


def configure_threads() -> int:
    """Use every core for intra-op parallelism (there are no loader workers to compete with)."""
    n = os.cpu_count() or 1
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(n)
    return torch.get_num_threads()


# glibc's mallopt(3) parameter numbers, from <malloc.h>, and the values its defaults settle at.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MMAP_MAX = 65536                  # default M_MMAP_MAX
_GLIBC_MMAP_THRESHOLD_MAX = 32 << 20     # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: its dynamic threshold stops here
_KEEP_TRIM_THRESHOLD = (1 << 31) - 1     # mallopt takes an int
KEEP_HOST_MEMORY_ENV = "RESNET_CIFAR_KEEP_HOST_MEMORY"


@functools.cache
def _libc():
    """glibc, or None: other libcs' mallopt takes other numbers, or is missing."""
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if hasattr(lib, "mallopt") and hasattr(lib, "gnu_get_libc_version") else None


def keep_host_memory(keep: bool = True, device: torch.device | None = None) -> bool:
    """Let glibc keep freed CPU tensors' memory for the next step instead of unmapping it.

    Why: a CPU training step allocates and frees the same activation buffers every step, several
    of them 32 MiB or more at batch 128. glibc serves blocks that large with mmap and returns them
    with munmap, so every step page-faults its whole working set back in (about 10% of a ResNet-18
    step as system time on the 2-core machine, more for evaluation). With mmap off and a high trim
    threshold, freed blocks stay in the heap and are reused: benchmarks/README.md has what it
    bought. The cost: the heap keeps its high-water mark (measured: ResNet-18 batch 128 peak RSS
    1.76 -> 2.01 GB; ResNet-20 with mixed batch sizes 1.03 -> 1.31 GB, flat over 200 steps).

    keep=False puts back what glibc's own adaptive defaults settle at once warmed up (the
    tutorial baseline's conditions in `bench`). Setting 0 in $RESNET_CIFAR_KEEP_HOST_MEMORY turns
    keep=True into a no-op. Returns whether the setting was applied (False off glibc: macOS,
    Windows, musl). With `device`, only a CPU device gets the setting (a GPU run's host memory
    does not churn like that).
    """
    if device is not None and device.type != "cpu":
        return False
    if keep and os.environ.get(KEEP_HOST_MEMORY_ENV, "1").strip() in {"0", "false", "no", "off"}:
        return False
    lib = _libc()
    if lib is None:
        return False
    if keep:
        values = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: _KEEP_TRIM_THRESHOLD}
    else:
        values = {_M_MMAP_MAX: _GLIBC_MMAP_MAX, _M_MMAP_THRESHOLD: _GLIBC_MMAP_THRESHOLD_MAX,
                  _M_TRIM_THRESHOLD: 2 * _GLIBC_MMAP_THRESHOLD_MAX}
    return all(lib.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in values.items())
