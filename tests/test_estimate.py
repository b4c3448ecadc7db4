"""CPU-aware start: device naming, the quick throughput probe, the long-run advice."""

from __future__ import annotations

import math

import pytest
import torch

from resnet_cifar.compute import train_flops
from resnet_cifar.estimate import (
    SPEEDRUN_MEASURED,
    device_description,
    estimated_seconds,
    long_run_advice,
    probe_flops_per_second,
)
from resnet_cifar.models import build_model


def test_device_description_names_the_cpu():
    text = device_description(torch.device("cpu"))
    assert text.startswith("CPU ") and "cores" in text and len(text) > len("CPU  (1 logical cores, 1 threads)")


def test_probe_leaves_model_and_rng_untouched():
    torch.manual_seed(0)
    model = build_model("speedrun_resnet", width=0.125)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    rate = probe_flops_per_second(model, torch.device("cpu"), batch=4)
    assert math.isfinite(rate) and rate > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_estimate_and_advice():
    assert estimated_seconds(1_000, 10, 6e4) == train_flops(1_000, 10) / 6e4 == 1.0
    cpu = torch.device("cpu")
    assert long_run_advice(3600, cpu, "folder", "data/jpeg") is None
    advice = long_run_advice(3 * 3600 + 600, cpu, "folder", "data/jpeg")
    assert "3h10m" in advice and "--preset speedrun --dataset folder --data-dir data/jpeg" in advice
    assert "90.9%" in SPEEDRUN_MEASURED and "min" in SPEEDRUN_MEASURED and SPEEDRUN_MEASURED in advice and "\n" not in advice
    assert long_run_advice(10 * 3600, torch.device("cuda"), "cifar10", "data") is None


@pytest.mark.parametrize("found,amp,device,says", [
    (["AVX512_BF16", "AMX"], "auto", "cpu", True),
    (["AVX512_BF16"], "auto", "cpu", True),
    ([], "auto", "cpu", False),                 # emulated bf16 is slower: nothing to suggest
    (None, "auto", "cpu", False),               # torch cannot tell: nothing to suggest
    (["AMX"], "off", "cpu", False),             # the user chose fp32
    (["AMX"], "bf16", "cpu", False),            # already on
    (["AMX"], "auto", "cuda", False),           # auto is bf16 there anyway
])
def test_bf16_hint_only_where_native_bf16_is_left_unused(monkeypatch, found, amp, device, says):
    import resnet_cifar.estimate as est

    monkeypatch.setattr(est.runtime, "cpu_bf16_instructions", lambda: found)
    hint = est.bf16_hint(amp, torch.device(device))
    if not says:
        assert hint is None
    else:
        assert f"native bf16 ({', '.join(found)})" in hint and "--amp bf16" in hint and "\n" not in hint
