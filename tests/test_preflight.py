"""Up-front checks: the torchrun environment, float upper bounds, and signals after the training loop."""

from __future__ import annotations

import os
import signal
import time

import pytest

from resnet_cifar.engine.signals import signals_interrupt
from resnet_cifar.errors import Interrupted, UsageError
from resnet_cifar.preflight import check_rendezvous_env, check_torchrun_env

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
    ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000' must be between 1 and 65535"),
    ({"MASTER_PORT": "http"}, "is not an integer"),
])
def test_a_broken_torchrun_environment_is_one_line(change, needle):
    env = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(UsageError) as e:
        check_torchrun_env(env)
    assert needle in str(e.value) and "unset it to train in one process" in str(e.value)


def test_the_rendezvous_address_is_needed_to_join_a_group():
    check_rendezvous_env(GOOD)
    for change, needle in (({"MASTER_ADDR": ""}, "MASTER_ADDR='' must be set when WORLD_SIZE > 1"),
                           ({"MASTER_PORT": "x"}, "MASTER_PORT='x' is not an integer")):
        with pytest.raises(UsageError, match=needle):
            check_rendezvous_env({**GOOD, **change})


@pytest.mark.parametrize("argv, needle", [
    (["--lr", "1e308"], "--lr must be <= 100 (a learning rate: the tutorial's is 0.1), got 1e+308"),
    (["--swa-lr", "1e39"], "--swa-lr must be <= 100"),
    (["--min-lr", "500"], "--min-lr must be <= 100"),
    (["--weight-decay", "11"], "--weight-decay must be <= 10"),
    (["--gamma", "2"], "--gamma must be <= 1"),
    (["--swa-start", "1e300"], "--swa-start must be <= 1e+09"),
])
def test_floats_have_upper_limits(argv, needle):
    from resnet_cifar.config import resolve

    flag = argv[0][2:].replace("-", "_")
    with pytest.raises(UsageError) as e:
        resolve(flag_values={flag: float(argv[1])})
    assert needle in str(e.value)
    resolve(flag_values={"lr": 100.0, "gamma": 1.0, "weight_decay": 10.0})


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
