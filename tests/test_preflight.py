"""Up-front checks: the torchrun environment, float ranges, and signals outside the training loop."""

from __future__ import annotations

import os
import signal
import time

import pytest

from resnet_cifar.errors import Interrupted, UsageError
from resnet_cifar.interrupts import signals_interrupt
from resnet_cifar.preflight import check_float_ranges, check_torchrun_env

GOOD = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_a_whole_torchrun_environment_and_none_at_all_pass():
    check_torchrun_env(GOOD)
    check_torchrun_env({})
    check_torchrun_env({"WORLD_SIZE": "1", "RANK": "0"})


@pytest.mark.parametrize("change, needle", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' must be between 1 and"),
    ({"WORLD_SIZE": "99999999999"}, "must be between 1 and"),
    ({"RANK": "2"}, "RANK='2' must be below WORLD_SIZE=2"),
    ({"RANK": None}, "RANK='' must be set when WORLD_SIZE=2"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK='-1' must be between 0 and"),
    ({"LOCAL_WORLD_SIZE": "3"}, "must not exceed WORLD_SIZE=2"),
    ({"LOCAL_RANK": "2"}, "must be below LOCAL_WORLD_SIZE=2"),
    ({"MASTER_ADDR": None}, "MASTER_ADDR='' must be set when WORLD_SIZE=2"),
    ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000' must be between 1 and 65535"),
    ({"MASTER_PORT": "http"}, "is not an integer"),
])
def test_a_broken_torchrun_environment_is_one_line(change, needle):
    env = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(UsageError) as e:
        check_torchrun_env(env)
    assert needle in str(e.value) and "unset it to train in one process" in str(e.value)


def test_float_upper_limits():
    check_float_ranges({"lr": 100.0, "gamma": 1.0, "weight_decay": 5e-4})
    for name, value in (("lr", 1e308), ("swa_lr", 1e39), ("gamma", 2.0), ("weight_decay", 11.0)):
        with pytest.raises(UsageError, match=f"--{name.replace('_', '-')} must be <= "):
            check_float_ranges({name: value})


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_outside_the_training_loop_is_an_interrupted_error(sig):
    before = signal.getsignal(sig)
    with pytest.raises(Interrupted) as e:
        with signals_interrupt(lambda s: f"stopped by signal {s} during the final test"):
            os.kill(os.getpid(), sig)
            time.sleep(30)                  # the handler raises at once
    assert e.value.exit_code == 128 + sig and f"signal {int(sig)} during the final test" in str(e.value)
    assert signal.getsignal(sig) is before
