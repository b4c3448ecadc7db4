"""Distributed data parallel on the CPU with gloo: sharding, agreement, equivalence (torchrun: test_ddp_torchrun.py).

The process tests start real processes (torch.multiprocessing with gloo, and torchrun itself);
each is bounded by a timeout and kills what it started.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ddp_helpers import EQ, _epochs, _eq_data, _free_port, _no_bn, _spawn, _summary
from helpers import TINY, tiny_dataset
from resnet_cifar import checkpoint as ckpt
from resnet_cifar import distributed as distm
from resnet_cifar import engine
from resnet_cifar.config import from_dict, resolve
from resnet_cifar.data.loader import Augment, DeviceLoader
from resnet_cifar.errors import Interrupted, UsageError, WorkError

MEAN, STD = (0.45, 0.45, 0.45), (0.25, 0.25, 0.25)


# ------------------------------------------------------------------------------ no processes
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shards_are_disjoint_and_rebuild_the_global_batch(synthetic_images, world_size):
    x, y = synthetic_images(10, 4)                      # 40 images; batch 12 -> 12, 12, 12, 4
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    kw = dict(batch_size=12, mean=MEAN, std=STD, seed=3, augment=Augment(crop_padding=4, flip=True, cutout=8),
              channels_last=False)
    for epoch in (1, 2):
        whole = list(DeviceLoader(x, y, **kw).batches(epoch))
        shards = [list(DeviceLoader(x, y, rank=r, world_size=world_size, **kw).batches(epoch))
                  for r in range(world_size)]
        assert all(len(s) == len(whole) for s in shards)
        for b, (_, xb, yb) in enumerate(whole):
            parts = [s[b] for s in shards]
            assert [p[0] for p in parts] == [b] * world_size
            # same images, same augmentation, same order: the global batch does not depend on the world size
            assert torch.equal(torch.cat([p[1] for p in parts]), xb)
            assert torch.equal(torch.cat([p[2] for p in parts]), yb)
    # every image once per epoch, on exactly one rank
    order = torch.cat([torch.cat([xb for _, xb, _ in s]).flatten(1) for s in shards])
    assert len(order) == len(x)


def test_global_batch_must_divide_over_processes_and_micro_steps():
    w2 = distm.World(rank=0, local_rank=0, size=2, local_size=2)
    distm.validate(16, 2, False, w2, torch.device("cpu"))
    distm.validate(3, 1, False, distm.World(), torch.device("cpu"))    # one process: no constraint here
    with pytest.raises(UsageError, match=r"divide by processes x --accum-steps = 2 x 3 = 6"):
        distm.validate(16, 3, False, w2, torch.device("cpu"))
    with pytest.raises(UsageError, match="--sync-bn needs CUDA"):
        distm.validate(16, 1, True, w2, torch.device("cpu"))


def test_the_last_batch_must_feed_every_rank_every_micro_step():
    w4 = distm.World(rank=1, local_rank=1, size=4, local_size=4)
    distm.validate_last_batch(64, 16, 1, w4)            # no remainder
    distm.validate_last_batch(68, 16, 1, w4)            # remainder 4: one image per rank
    with pytest.raises(UsageError, match="last batch of each epoch has 2 image"):
        distm.validate_last_batch(66, 16, 1, w4)
    with pytest.raises(UsageError, match=">= 8"):
        distm.validate_last_batch(68, 16, 2, w4)


def test_trainer_refuses_an_unfeedable_last_batch_before_creating_the_run_dir(tmp_path, monkeypatch):
    data = tiny_dataset(n_per_class=40)                                     # 160 images
    world = distm.World(rank=0, local_rank=0, size=2, local_size=2)
    monkeypatch.setattr(distm, "init", lambda *a, **k: None)               # no process group needed
    cfg = resolve(flag_values={**TINY, "batch_size": 32, "val_size": 31})   # 129 train: remainder 1 < 2
    with pytest.raises(UsageError, match="last batch"):
        engine.fit(cfg, data, tmp_path / "run", world=world)
    assert not (tmp_path / "run").exists()


def test_single_process_helpers_are_plain_calls():
    w = distm.World()
    assert distm.on_main(lambda: 41 + 1, w) == 42
    assert distm.main_first(lambda: "x", w) == "x"
    flags = distm.agree_step(torch.tensor(False), True, w)
    assert flags.tolist() == [1, 1]
    assert distm.any_true(True, w) and not distm.any_true(False, w)
    with pytest.raises(UsageError):
        distm.on_main(lambda: (_ for _ in ()).throw(UsageError("no")), w)


def test_world_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    w = distm.world_from_env()
    assert (w.rank, w.local_rank, w.size, w.local_size) == (3, 1, 4, 2)
    assert w.distributed and not w.is_main and not w.single_node
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distm.world_from_env() == distm.World()


def test_restart_marker_only_matches_a_restart_of_the_same_job(tmp_path, monkeypatch):
    from resnet_cifar.rundir import check_out as _check_out

    run = tmp_path / "run"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    distm.mark_run_dir(run)
    assert not run.exists()                       # no restarts possible: no marker
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    distm.mark_run_dir(run)
    assert (run / distm.RESTART_MARKER).is_file()
    _check_out(run, overwrite=False)              # the marker alone does not make --out "not empty"
    assert not distm.is_restart_of(run)           # first attempt
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert distm.is_restart_of(run)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    assert not distm.is_restart_of(run)           # another job's run directory is never taken over


def test_torchrun_attempts_get_their_own_keys_in_the_agent_store(monkeypatch):
    """torchrun's agent store outlives worker restarts: a restarted worker must not read the
    addresses that the previous attempt's (killed) workers published there."""
    import torch.distributed as dist

    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)   # the agent's server
    one_node = distm.World(rank=0, local_rank=0, size=2, local_size=2)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = distm._attempt_store(one_node)
    first.set("default_pg/rank_1", b"127.0.0.1:8071")          # published by the worker later killed
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = distm._attempt_store(one_node)
    assert not second.check(["default_pg/rank_1"])              # the restart waits for a fresh address
    second.set("default_pg/rank_1", b"127.0.0.1:9000")
    assert first.get("default_pg/rank_1") == b"127.0.0.1:8071"

    # without the agent's store (plain env://), or over several nodes (where the agents count
    # restarts separately), torch's own env:// store is used
    assert distm._attempt_store(distm.World(rank=0, local_rank=0, size=4, local_size=2)) is None
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert distm._attempt_store(one_node) is None


# ----------------------------------------------------------------- 2 processes vs 1 process
def _eq_worker(rank, world_size, port, tmp, accum):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    engine.parts.build_model = _no_bn
    world = distm.World(rank=rank, local_rank=rank, size=world_size, local_size=world_size)
    tmp = Path(tmp)
    cfg = resolve(flag_values={**EQ, "accum_steps": accum})
    engine.setup(cfg, world)   # the process group, seeds and flags, as an entry point makes them
    fresh = engine.Trainer(cfg, _eq_data(), tmp / "ddp", world=world)
    out = _summary(fresh, _epochs(fresh, keep_mid=tmp / "ddp_mid.pt"))
    # a single-process mid-epoch checkpoint, continued by 2 processes
    state = ckpt.load(tmp / "ref_mid.pt")
    cont = engine.Trainer(from_dict(state["config"]), _eq_data(), tmp / "ddp_cont", world=world, resume_state=state)
    out["cont"] = _summary(cont, _epochs(cont))
    # a stop signal that only rank 1 catches (after step 1): both ranks stop at the same step
    sig = engine.Trainer(replace(cfg, checkpoint_every=0), _eq_data(), tmp / "ddp_sig", world=world)
    stop = engine.StopFlag()
    real_step = sig.guarded_step

    def step_then_signal(*a):
        finite = real_step(*a)
        if rank == 1 and sig.state.step == 1:
            stop.signum = signal.SIGTERM
        return finite

    sig.guarded_step = step_then_signal
    try:
        sig.train_epoch(1, stop)
        out["signal"] = None
    except Interrupted as e:
        out["signal"] = [sig.state.batch, sig.state.step, e.exit_code]
    # a non-finite loss on rank 1 only (step 1): both ranks fail at the same check
    nan = engine.Trainer(replace(cfg, checkpoint_every=0), _eq_data(), tmp / "ddp_nan", world=world)
    real_nan_step = nan.guarded_step

    def step_then_nan(*a):
        result = real_nan_step(*a)
        return replace(result, finite=torch.tensor(False)) if (rank == 1 and nan.state.step == 1) else result

    nan.guarded_step = step_then_nan
    try:
        nan.train_epoch(1, engine.StopFlag())
        out["nan"] = None
    except WorkError as e:
        out["nan"] = [nan.state.step, str(e).split(";")[0]]
    torch.save(out, tmp / f"rank{rank}.pt")
    distm.barrier(world)
    distm.shutdown(world)


def _assert_same_run(a, b, what):
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=2e-5, msg=f"{what}: {k}")
    assert a["step"] == b["step"], what
    for e in a["rows"]:
        assert a["rows"][e]["train_loss"] == pytest.approx(b["rows"][e]["train_loss"], rel=1e-5), (what, e)
        assert a["rows"][e]["train_acc"] == pytest.approx(b["rows"][e]["train_acc"], abs=1.5 / 40), (what, e)


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_across_world_sizes(tmp_path, monkeypatch):
    """2 ranks x 8 images (x 2 micro-steps of 4, no_sync on the first) == 1 process x 16, for 6 steps
    with momentum, nesterov, weight decay, warm-up and augmentation; checkpoints move between the two."""
    monkeypatch.setattr(engine.parts, "build_model", _no_bn)
    engine.setup(resolve(flag_values=EQ))
    ref = engine.Trainer(resolve(flag_values=EQ), _eq_data(), tmp_path / "ref")
    ref_out = _summary(ref, _epochs(ref, keep_mid=tmp_path / "ref_mid.pt"))

    _spawn(_eq_worker, (2, _free_port(), str(tmp_path), 2), nprocs=2, timeout=240)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    for k in r0["model"]:   # DDP keeps the replicas identical
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    _assert_same_run(ref_out, r0, "2 processes from scratch")
    _assert_same_run(ref_out, r0["cont"], "1-process checkpoint continued by 2 processes")

    # the DDP checkpoint: unwrapped keys, and partial sums of the whole global batch (all-reduced)
    mid = ckpt.load(tmp_path / "ddp_mid.pt")
    ref_mid = ckpt.load(tmp_path / "ref_mid.pt")
    assert not any(k.startswith("module.") for k in mid["model"])
    assert mid["world_size"] == 2 and (mid["epoch"], mid["batch"]) == (0, 2)
    assert mid["partial"]["count"] == ref_mid["partial"]["count"] == 32
    assert mid["partial"]["loss_sum"] == pytest.approx(ref_mid["partial"]["loss_sum"], rel=1e-5)
    assert mid["partial"]["correct"] == ref_mid["partial"]["correct"]

    # a signal caught by rank 1 only (during step 1): read with the next step's finite check, so both
    # ranks stop after step 2 and rank 0 checkpoints there
    assert r0["signal"] == r1["signal"] == [2, 2, 128 + signal.SIGTERM]
    sig = ckpt.load(tmp_path / "ddp_sig" / "checkpoints" / "last.pt")
    assert (sig["epoch"], sig["batch"], sig["step"], sig["partial"]["count"]) == (0, 2, 2, 32)
    # a non-finite loss seen by rank 1 only fails both ranks at the same check (no rank left waiting)
    assert r0["nan"] == r1["nan"] == [1, "loss became non-finite at step 1 (epoch 1, batch 1)"]

    cont = engine.Trainer(from_dict(mid["config"]), _eq_data(), tmp_path / "cont", resume_state=mid)
    _assert_same_run(ref_out, _summary(cont, _epochs(cont)), "2-process checkpoint continued by 1 process")
