"""The torchrun environment, checked before the process group is joined (`world_from_env`, `init`).

A one-line UsageError (exit 2) names the variable, with no side effect. It is a pure function of
the environment, as the config's validation is of the flags, so every rank reaches the same verdict
on its own, without a collective: bad input stops all ranks at once instead of leaving some of them
waiting in `init_process_group` for peers that already exited.
"""

from __future__ import annotations

import os
from typing import Mapping

from .errors import UsageError

# The variables torchrun (and `torch.distributed.launch`) set for each worker, with the smallest
# value each may hold. MAX_PROCESSES bounds the sizes: far above any real job.
INT_VARS = {"WORLD_SIZE": 1, "RANK": 0, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": 1, "GROUP_RANK": 0,
            "MASTER_PORT": 1, "TORCHELASTIC_RESTART_COUNT": 0, "TORCHELASTIC_MAX_RESTARTS": 0}
MAX_PROCESSES = 1 << 20
MAX_PORT = 65535



def _env_error(name: str, value: str, rule: str) -> UsageError:
    return UsageError(f"environment variable {name}={value!r} {rule}; torchrun sets it for each process "
                      "(unset it to train in one process)")


def _env_int(env: Mapping[str, str], name: str, low: int) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise _env_error(name, raw, "is not an integer") from None
    high = MAX_PORT if name == "MASTER_PORT" else MAX_PROCESSES
    if not low <= value <= high:
        raise _env_error(name, raw, f"must be between {low} and {high}")
    return value


def check_torchrun_env(env: Mapping[str, str] | None = None) -> None:
    """The distributed environment is whole and consistent, or one line says which variable is not."""
    env = os.environ if env is None else env
    v = {name: _env_int(env, name, low) for name, low in INT_VARS.items()}
    size = v["WORLD_SIZE"] or 1
    if size == 1:
        return
    if v["RANK"] is None:
        raise _env_error("RANK", "", f"must be set when WORLD_SIZE={size}")
    if v["RANK"] >= size:
        raise _env_error("RANK", env["RANK"], f"must be below WORLD_SIZE={size}")
    local_size = v["LOCAL_WORLD_SIZE"] or size
    if local_size > size:
        raise _env_error("LOCAL_WORLD_SIZE", env["LOCAL_WORLD_SIZE"], f"must not exceed WORLD_SIZE={size}")
    if v["LOCAL_RANK"] is not None and v["LOCAL_RANK"] >= local_size:
        raise _env_error("LOCAL_RANK", env["LOCAL_RANK"], f"must be below LOCAL_WORLD_SIZE={local_size}")


def check_rendezvous_env(env: Mapping[str, str] | None = None) -> None:
    """MASTER_ADDR and MASTER_PORT, which joining a process group of more than one process needs."""
    env = os.environ if env is None else env
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name, "").strip():
            raise _env_error(name, env.get(name, ""), "must be set when WORLD_SIZE > 1 (the address of "
                             "rank 0's rendezvous)")
    _env_int(env, "MASTER_PORT", INT_VARS["MASTER_PORT"])
