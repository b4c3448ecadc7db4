"""The training loop's body makes no host-device syncs between two reads of the finite watch.

On CUDA a sync stops the host from queueing the next step while the device still runs this one:
benchmarks/gpu_session.py counted five a step on an H200 (2026-12-04: two tensors built from host
values in `normalize`, one in `Sums.of`, two in torch's AveragedModel for the EMA). A CPU cannot
sync, but the operations that would are visible in the dispatcher: `aten._local_scalar_dense` is
every read of a device value on the host (`.item()`, `bool(t)`, `int(t)`), `aten.lift_fresh` is
every tensor made from host data (`torch.tensor(...)`, a copy from host memory on CUDA), and
`aten.nonzero` (boolean-mask indexing too) waits for its output's size. What a CPU cannot show: a
`.to("cuda")` of a host tensor, or a copy back to the host (`.cpu()`, `.tolist()`); the loop has none
today, and gpu_session.py's count on a GPU is the check for those.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import tiny_dataset
from resnet_cifar.config import resolve
from resnet_cifar.ema import DeviceEMA
from resnet_cifar.engine import Trainer

SYNCING = ("aten._local_scalar_dense", "aten.lift_fresh", "aten.nonzero")


class RecordSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(SYNCING):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


class Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.mark.parametrize("preset,extra", [("fast", dict(model="resnet20", width=0.25)),   # EMA, no_bn_decay
                                          ("speedrun", dict(width=0.125))],            # whitening, lookahead
                         ids=["fast-ema", "speedrun-lookahead"])
def test_loop_body_reads_nothing_back(tmp_path, preset, extra):
    cfg = resolve(flag_values=dict(dataset="folder", device="cpu", epochs=1, batch_size=16, val_size=0,
                                   report=False, compile="off", **extra), preset=preset)
    trainer = Trainer(cfg, tiny_dataset(n_per_class=24, num_classes=3), tmp_path, progress=Quiet())
    trainer.check_every = 10**9          # the watch's read is the loop's one planned sync
    batches = trainer.train_loader.batches(1)
    for _ in range(2):                   # warm-up: the first EMA update may read its count once
        _, x, y = next(batches)
        trainer.loop_step(x, y, len(y), False)
    with RecordSyncs() as rec:           # the loader's batch too: normalize and the augmentation run in it
        for _ in range(2):
            _, x, y = next(batches)
            trainer.loop_step(x, y, len(y), False)
    assert rec.ops == []
    if preset == "fast":
        assert isinstance(trainer.parts.step.ema, DeviceEMA)


def _steps(model, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
            for b in model.buffers():
                if b.is_floating_point():
                    b.mul_(0.9).add_(torch.rand(b.shape, generator=g))
                else:
                    b.add_(1)
        yield


def test_device_ema_equals_torchs_averaged_model_bitwise_and_resumes():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 3))
    ours, torchs = DeviceEMA(net, 0.9), AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for _ in _steps(net, 3, seed=0):
        ours.update_parameters(net)
        torchs.update_parameters(net)
    saved = copy.deepcopy(ours.state_dict())
    assert saved.keys() == torchs.state_dict().keys() and int(saved["n_averaged"]) == 3

    # a resumed EMA (a fresh one loaded from the saved state) goes on exactly as the uninterrupted one
    resumed = DeviceEMA(net, 0.9)
    resumed.load_state_dict(saved)
    for _ in _steps(net, 3, seed=1):
        for ema in (ours, torchs, resumed):
            ema.update_parameters(net)
    for a, b, c in zip(ours.state_dict().values(), torchs.state_dict().values(), resumed.state_dict().values(),
                       strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    # and it did average: neither the net's weights nor those it held when saved
    w = ours.module[0].weight
    assert not torch.equal(w, net[0].weight) and not torch.equal(w, saved["module.0.weight"])
