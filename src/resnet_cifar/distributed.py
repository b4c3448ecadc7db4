"""Process-group plumbing for torchrun/DDP. A single process is a world of size 1.

Only rank 0 writes (logs, metrics, checkpoints, reports); every rank takes the same decisions,
because each decision is made either from all-reduced numbers or by rank 0 and broadcast
(`on_main`). Where one rank could otherwise wait for a collective that another rank never
enters, the ranks first agree (`agree_step`, `any_true`).

The process group has one backend per device: gloo for CPU tensors and for the small object
messages (decisions, checkpoint state), NCCL for CUDA tensors when CUDA is there. So it can be
started before the training device is known.

See docs/distributed.md for launch commands and the global-batch rules.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import ResnetCifarError, UsageError, WorkError

T = TypeVar("T")

RESTART_MARKER = ".torchrun-run-id"   # in RUN_DIR: which torchrun job (rendezvous id) owns it


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1     # processes on this node

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def single_node(self) -> bool:
        return self.local_size >= self.size


def world_from_env() -> World:
    """The torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE), or a single process;
    a UsageError naming the variable when they are not whole numbers that fit together."""
    from .preflight import check_torchrun_env

    check_torchrun_env()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")), size=size,
                 local_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(size))))


# ------------------------------------------------------------------------------- torchrun facts
def _env_int(name: str) -> int:
    """An integer torchrun sets, 0 when it is unset or not a number."""
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


def restart_count() -> int:
    """How often torchrun has restarted this job's workers (0 on the first attempt, or without torchrun)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT")


def max_restarts() -> int:
    return _env_int("TORCHELASTIC_MAX_RESTARTS")


def run_id() -> str | None:
    """The rendezvous id of this torchrun job (a fresh UUID with --standalone), the same on every restart."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def mark_run_dir(run_dir: Path) -> None:
    """Record that this torchrun job owns run_dir, so that its restarts may resume there.

    Only written when torchrun may restart the workers (--max-restarts > 0).
    """
    rid = run_id()
    if rid is None or max_restarts() <= 0:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESTART_MARKER).write_text(rid + "\n", encoding="utf-8")


def is_restart_of(run_dir: Path) -> bool:
    """True in a torchrun restart (TORCHELASTIC_RESTART_COUNT > 0) of the job that created run_dir."""
    rid = run_id()
    if restart_count() <= 0 or rid is None:
        return False
    try:
        return (run_dir / RESTART_MARKER).read_text(encoding="utf-8").strip() == rid
    except OSError:
        return False


# ---------------------------------------------------------------------------------- the group
def init(world: World, device: torch.device | None = None) -> None:
    """Join the process group (once), and make `device` this rank's current CUDA device."""
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
    if not world.distributed or dist.is_initialized():
        return
    from .preflight import check_rendezvous_env

    check_rendezvous_env()   # else init_process_group fails with a traceback
    if world.single_node and platform.system() == "Linux" and os.path.isdir("/sys/class/net/lo"):
        # All ranks are on this machine: keep gloo's data sockets on the loopback interface
        # instead of whatever the host name resolves to. (torchrun's own store is not affected.)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    backend = "cpu:gloo,cuda:nccl" if (torch.cuda.is_available() and dist.is_nccl_available()) else "gloo"
    store = _attempt_store(world)
    if store is None:
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    else:
        dist.init_process_group(backend=backend, store=store, rank=world.rank, world_size=world.size)


def _attempt_store(world: World) -> dist.Store | None:
    """A key-value store for the process group that no earlier torchrun attempt has written to.

    Under torchrun's c10d rendezvous the workers' env:// store is the agent's own TCPStore
    (TORCHELASTIC_USE_AGENT_STORE=True), which outlives worker restarts (PyTorch 2.14.1 keeps
    one server for the whole job). init_process_group keys it by group name only, so a restarted
    worker may read the address that a killed worker of the previous attempt published there,
    before its new peer has overwritten it: gloo then fails with "connectFullMesh failed ...
    Connection refused" (or NCCL with a stale unique id). Here every attempt gets its own prefix.

    Only on one node, where a single agent restarts all workers together, so that
    TORCHELASTIC_RESTART_COUNT is the same on every rank. On several nodes the agents count
    restarts separately (a node restarted for a membership change does not count one), and
    different prefixes would leave the ranks waiting for each other; there None keeps torch's
    plain env:// store (see docs/distributed.md: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not world.single_node:
        return None
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    from torch.distributed.constants import default_pg_timeout

    # a client only: the agent serves the store (as torch's env:// does with the agent store)
    client = dist.TCPStore(addr, int(port), world.size, is_master=False, timeout=default_pg_timeout)
    return dist.PrefixStore(f"resnet-cifar/{run_id() or 'job'}/attempt{restart_count()}", client)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(world: World):
    """The process group for the duration of a `with` (a no-op for a single process)."""
    init(world)
    try:
        yield world
    finally:
        shutdown(world)


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, world: World):
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


# ------------------------------------------------------------------------------ agreement
def _on_main(fn, world: World, share: bool):
    """fn() on rank 0; broadcast (ok, result if share) or (error, exception); raise it everywhere."""
    box = result = None
    if world.is_main:
        try:
            result = fn()
            box = ("ok", result if share else None)
        except ResnetCifarError as e:
            box = ("error", e)
        except Exception as e:
            broadcast_object(("error", WorkError(f"rank 0 failed: {type(e).__name__}: {e}")), world)
            raise
    kind, value = broadcast_object(box, world)
    if kind == "error":
        raise value
    return result if world.is_main else value


def on_main(fn: Callable[[], T], world: World) -> T:
    """Run fn() on rank 0 only; every rank gets its result, or every rank raises its error.

    For decisions about files only rank 0 may see or touch (the run directory, checkpoints).
    """
    if not world.distributed:
        return fn()
    return _on_main(fn, world, share=True)


def main_first(fn: Callable[[], T], world: World) -> T:
    """fn() on every rank, rank 0 first, then the first rank of each other node, then the rest.

    For work that fills a shared cache (downloads, decoded images): the later ranks find it done.
    An error on rank 0 is raised on every rank; only the outcome is sent, never the result.
    """
    if not world.distributed:
        return fn()
    result = _on_main(fn, world, share=False)
    if world.local_rank == 0 and not world.is_main:
        result = fn()
    barrier(world)
    if world.local_rank != 0:
        result = fn()
    barrier(world)
    return result


def agree_step(finite: torch.Tensor, stopping: bool, world: World) -> torch.Tensor:
    """[ranks whose loss was not finite, ranks that caught a stop signal], summed over the ranks.

    One tiny all-reduce queued behind the step (no host sync); it is read one step later, where
    the engine reads the finite flag anyway, so every rank stops (or fails) at the same step.
    """
    flags = torch.zeros(2, dtype=torch.int64, device=finite.device)
    flags[0] = (~finite.bool()).to(torch.int64)
    flags[1] = int(stopping)
    if world.distributed:
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    return flags


def any_true(flag: bool, world: World) -> bool:
    """True on every rank when it is true on any rank (a blocking collective)."""
    if not world.distributed:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int64)   # CPU tensor: goes over gloo
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item()) > 0


# ------------------------------------------------------------------------------ validation
def validate(batch_size: int, accum_steps: int, sync_bn: bool, world: World,
             device: torch.device | None = None) -> None:
    """What a DDP run needs of the config; the same UsageError on every rank (no hang)."""
    if not world.distributed:
        return
    per_step = world.size * accum_steps
    if batch_size % per_step:
        raise UsageError(
            f"--batch-size {batch_size} is the global batch and must divide by processes x --accum-steps "
            f"= {world.size} x {accum_steps} = {per_step}; use e.g. --batch-size "
            f"{max(per_step, batch_size // per_step * per_step)} (the lr is not rescaled for you)")
    if device is not None and device.type == "cuda" and world.local_rank >= torch.cuda.device_count():
        raise UsageError(f"local rank {world.local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                         "use --nproc-per-node <= the number of GPUs per node")
    if sync_bn and device is not None and device.type != "cuda":
        raise UsageError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernels); "
                         "drop --sync-bn for a CPU run")


def validate_last_batch(num_images: int, batch_size: int, accum_steps: int, world: World) -> None:
    """Every rank must get at least one image per micro-step of every batch, the last one included.

    Otherwise one rank runs fewer forward/backward passes than another and the gradient
    all-reduce never completes.
    """
    if not world.distributed:
        return
    last = num_images % batch_size
    need = world.size * accum_steps
    if last and last < need:
        raise UsageError(
            f"the last batch of each epoch has {last} image(s) ({num_images} training images, global batch "
            f"{batch_size}); split over {world.size} processes x {accum_steps} accumulation step(s) it needs "
            f">= {need}: change --batch-size, --val-size or --train-subset so that the remainder is 0 or >= {need}")
