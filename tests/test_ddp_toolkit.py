"""SAM, clipping and the augmentation policy under DDP: 2 processes (gloo, CPU) == 1 process.

The policy and random erasing are drawn per image position, so every rank augments its share as
one process would; SAM's two passes all-reduce their gradients, so the perturbation and the update
are the global ones. (Mixup/cutmix pair images within each rank's share: not compared here.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ddp_helpers import EQ, _epochs, _eq_data, _free_port, _no_bn, _spawn, _summary
from resnet_cifar import distributed as distm
from resnet_cifar import engine
from resnet_cifar.config import resolve

SAM_EQ = {**EQ, "optimizer": "sam", "sam_rho": 0.1, "clip_grad_norm": 0.5, "auto_augment": "randaugment",
          "random_erase": 0.5, "checkpoint_every": 0}


def _worker(rank, world_size, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    engine.parts.build_model = _no_bn
    world = distm.World(rank=rank, local_rank=rank, size=world_size, local_size=world_size)
    cfg = resolve(flag_values={**SAM_EQ, "accum_steps": 2})
    engine.setup(cfg, world)
    trainer = engine.Trainer(cfg, _eq_data(), Path(tmp) / "ddp", world=world)
    torch.save(_summary(trainer, _epochs(trainer)), Path(tmp) / f"rank{rank}.pt")
    distm.barrier(world)
    distm.shutdown(world)


@pytest.mark.slow
def test_sam_with_clipping_and_a_policy_on_two_processes_matches_one(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.parts, "build_model", _no_bn)
    cfg = resolve(flag_values=SAM_EQ)
    engine.setup(cfg)
    ref = engine.Trainer(cfg, _eq_data(), tmp_path / "ref")
    ref_out = _summary(ref, _epochs(ref))
    _spawn(_worker, (2, _free_port(), str(tmp_path)), nprocs=2, timeout=240)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == ref_out["step"] == 6
    for k in ref_out["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
        torch.testing.assert_close(r0["model"][k], ref_out["model"][k], rtol=1e-4, atol=2e-5, msg=k)
    for e in ref_out["rows"]:
        assert r0["rows"][e]["train_loss"] == pytest.approx(ref_out["rows"][e]["train_loss"], rel=1e-5)
