"""Numbers going wrong: NaN/Inf losses (case 9) and CUDA out-of-memory (case 10).

Faults are injected by patching the model class's forward: from step k it returns NaN/Inf logits,
or it raises torch.cuda.OutOfMemoryError (which exists on CPU builds too) for micro-batches larger
than some size, after running the real forward so that BatchNorm statistics were already touched.
"""

from __future__ import annotations

import pytest
import torch

from reliability_helpers import (
    all_finite,
    assert_one_line_error,
    assert_same_tensors,
    run_main,
    tiny_config,
    tiny_dataset,
    train_argv,
    write_folder,
)
from resnet_cifar import checkpoint as ckpt
from resnet_cifar import engine
from resnet_cifar.errors import WorkError
from resnet_cifar.models.resnet import CifarResNet
from resnet_cifar.progress import Silent

REAL_FORWARD = CifarResNet.forward


class _Crash(Exception):
    pass


class _Log(Silent):
    def __init__(self):
        self.lines = []

    def log(self, message):
        self.lines.append(message)


def _patch_forward(monkeypatch, rule):
    """rule(call_index, batch_size, out) -> out or raise; called for training-mode forwards only."""
    calls = {"n": 0}

    def forward(self, x):
        out = REAL_FORWARD(self, x)
        if not self.training:
            return out
        calls["n"] += 1
        return rule(calls["n"], x.shape[0], out)

    monkeypatch.setattr(CifarResNet, "forward", forward)
    return calls


def _fit(tmp, name, data=None, progress=None, resume_state=None, **over):
    cfg = tiny_config(out=str(tmp / name), **over)
    return engine.fit(cfg, data or tiny_dataset(n_per_class=10), tmp / name, progress=progress,
                      resume_state=resume_state)


# --------------------------------------------------------------------------- case 9: NaN / Inf
# 16 training images, batch 4: 4 steps per epoch. Step 3 is mid-epoch, step 4 ends epoch 1,
# step 6 is mid-epoch 2 (after best.pt was written at the end of epoch 1).
@pytest.mark.parametrize("k, bad, every", [(1, float("nan"), 1), (3, float("nan"), 1), (4, float("inf"), 0),
                                           (6, float("nan"), 0), (6, float("-inf"), 2)])
def test_non_finite_loss_stops_within_one_step_and_saves_nothing_non_finite(tmp_path, monkeypatch, k, bad, every):
    calls = _patch_forward(monkeypatch, lambda n, b, out: out * bad if n >= k else out)
    with pytest.raises(WorkError) as e:
        _fit(tmp_path, "run", checkpoint_every=every)
    msg = str(e.value)
    assert f"step {k}" in msg and "non-finite" in msg and "\n" not in msg
    assert calls["n"] == k  # no step after the bad one was taken
    for name in ("last.pt", "best.pt"):
        path = tmp_path / "run" / "checkpoints" / name
        if path.exists():
            state = ckpt.load(path)
            assert all_finite(state["model"]), name
            assert state["step"] < k
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists() == (k > 1 and (every > 0 or k > 4))


def test_non_finite_loss_through_the_cli_is_exit_1_and_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _patch_forward(monkeypatch, lambda n, b, out: out * float("nan") if n >= 2 else out)
    data = write_folder(tmp_path / "data", n_per_class=10)
    code, _, err = run_main(train_argv(data, tmp_path / "run", checkpoint_every=1), capsys)
    assert code == 1
    assert_one_line_error(err, "non-finite", "step 2")
    assert all_finite(ckpt.load(tmp_path / "run" / "checkpoints" / "last.pt")["model"])


def test_save_refuses_non_finite_weights_raw_and_averaged(tmp_path):
    cfg = tiny_config(out=str(tmp_path))
    t = engine.Trainer(cfg, tiny_dataset(), tmp_path)
    t.save("last.pt")
    good = ckpt.load(tmp_path / "checkpoints" / "last.pt")["model"]
    with torch.no_grad():
        next(t.model.parameters()).fill_(float("nan"))
    with pytest.raises(WorkError, match="non-finite"):
        t.save("last.pt")
    bad_ema = {k: v.clone() for k, v in t.model.state_dict().items()}
    with pytest.raises(WorkError, match="non-finite"):
        t.save("best.pt", bad_ema, "ema")  # weights handed in (EMA/SWA) are checked too
    assert_same_tensors(ckpt.load(tmp_path / "checkpoints" / "last.pt")["model"], good)
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


def test_fp16_skipped_steps_are_tolerated_up_to_the_limit(tmp_path):
    """fp16 semantics (GradScaler is CUDA-only here): a non-finite step is a skipped step; only
    more than max_skipped_steps of them in a row stop the run, with the count in the message.
    The flags are counted on the device and read now and then: a run of bad steps carries over a
    read, and a good step ends it."""
    cfg = tiny_config(out=str(tmp_path), max_skipped_steps=3)
    t = engine.Trainer(cfg, tiny_dataset(), tmp_path)
    t.amp = "fp16"
    bad, good = torch.tensor(False), torch.tensor(True)
    for step, flag in enumerate([bad, bad, bad, good, bad, bad, bad], 1):  # two runs of 3
        t.watch.add(flag, step)
        if step in (2, 5):  # reads that fall inside a run
            t.check_finite()
    t.check_finite()
    assert t.state.skipped_steps == 6
    t.watch.add(bad, 8)  # the 4th in a row, across the last read
    with pytest.raises(WorkError, match=r"4 consecutive fp16 steps"):
        t.check_finite()


def test_without_a_scaler_the_first_non_finite_step_is_named_even_when_read_later(tmp_path):
    t = engine.Trainer(tiny_config(out=str(tmp_path)), tiny_dataset(), tmp_path)
    for step, ok in [(9, True), (10, False), (11, True), (12, False)]:
        t.watch.add(torch.tensor(ok), step)
    with pytest.raises(WorkError, match="non-finite at step 10 "):
        t.check_finite()


def test_a_nan_is_found_within_check_every_steps_and_never_saved(tmp_path, monkeypatch):
    """As on a GPU, where the watch is read every CHECK_EVERY_ASYNC steps: the run still fails
    at the next read and checkpoints/last.pt is never written with the bad weights."""
    cfg = tiny_config(out=str(tmp_path), epochs=3)
    t = engine.Trainer(cfg, tiny_dataset(), tmp_path)
    t.check_every = 1000   # longer than the run: only the epoch-end read can catch it
    real = t.guarded_step
    calls = []

    def poisoned(x, y, n):
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(t.model.parameters()).fill_(float("nan"))
        return real(x, y, n)

    monkeypatch.setattr(t, "guarded_step", poisoned)
    with pytest.raises(WorkError, match="non-finite at step 2 "):
        t.run()
    assert len(calls) == t.steps_per_epoch      # found at the end of epoch 1, not later
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


# --------------------------------------------------------------------------- case 10: out of memory
def _oom_above(limit, first_only=False):
    """Raise CUDA OOM (after the real forward ran) for training micro-batches larger than `limit`."""
    fired = {"n": 0}

    def rule(n, b, out):
        if b > limit and not (first_only and fired["n"]):
            fired["n"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return out

    return rule


def test_oom_without_auto_batch_says_which_batch_and_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _patch_forward(monkeypatch, _oom_above(2))
    data = write_folder(tmp_path / "data", n_per_class=10)
    code, _, err = run_main(train_argv(data, tmp_path / "run", batch_size=8), capsys)
    assert code == 1
    line = assert_one_line_error(err, "out of memory", "micro-batch of 8", "--accum-steps 2", "--auto-batch")
    assert "Traceback" not in err and "Tried to allocate" not in line


def test_auto_batch_halves_until_it_fits_and_equals_that_accumulation_from_the_start(tmp_path, monkeypatch):
    """batch 8: micro-batches of 8 and 4 fail (after their forward touched BN statistics), so the
    first step is redone twice and the run goes on with accum_steps 4. It must equal, bit for bit,
    a run that used --accum-steps 4 from the start: weights, BN statistics and the train metrics."""
    reference = _fit(tmp_path, "ref", batch_size=8, accum_steps=4)
    ref_state = ckpt.load(tmp_path / "ref" / "checkpoints" / "last.pt")

    log = _Log()
    _patch_forward(monkeypatch, _oom_above(2))
    results = _fit(tmp_path, "auto", progress=log, batch_size=8, auto_batch=True)
    state = ckpt.load(tmp_path / "auto" / "checkpoints" / "last.pt")
    assert state["accum_steps"] == 4 and results["accum_steps"] == 4  # recorded for resume
    assert_same_tensors(state["model"], ref_state["model"])
    for a, b in zip(state["history"], ref_state["history"], strict=True):
        assert (a["train_loss"], a["train_acc"], a["val_loss"]) == (b["train_loss"], b["train_acc"], b["val_loss"])
    assert results["best_val_acc"] == reference["best_val_acc"]
    assert len([ln for ln in log.lines if "--auto-batch" in ln]) == 2, log.lines


def test_auto_batch_retry_on_a_later_micro_batch_does_not_double_count(tmp_path, monkeypatch):
    """accum_steps 2: the first micro-batch of step 1 succeeds (counted, BN updated), the second
    fails once; the step is redone with accum_steps 4 from a clean slate."""
    _fit(tmp_path, "ref", batch_size=8, accum_steps=4)
    ref_state = ckpt.load(tmp_path / "ref" / "checkpoints" / "last.pt")

    def rule(n, b, out):
        if n == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return out

    _patch_forward(monkeypatch, rule)
    _fit(tmp_path, "auto", batch_size=8, accum_steps=2, auto_batch=True)
    state = ckpt.load(tmp_path / "auto" / "checkpoints" / "last.pt")
    assert state["accum_steps"] == 4
    assert_same_tensors(state["model"], ref_state["model"])
    assert [h["train_acc"] for h in state["history"]] == [h["train_acc"] for h in ref_state["history"]]
    assert [h["train_loss"] for h in state["history"]] == [h["train_loss"] for h in ref_state["history"]]


def test_auto_batch_choice_survives_a_resume(tmp_path, monkeypatch):
    _fit(tmp_path, "ref", batch_size=8, accum_steps=2, epochs=3)
    ref_state = ckpt.load(tmp_path / "ref" / "checkpoints" / "last.pt")

    def rule(n, b, out):
        if b > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        if n == 6:  # training dies for another reason after the checkpoint of step 2
            raise _Crash()
        return out

    with monkeypatch.context() as m:
        _patch_forward(m, rule)
        with pytest.raises(_Crash):
            _fit(tmp_path, "auto", batch_size=8, auto_batch=True, checkpoint_every=1, epochs=3)
    state = ckpt.load(tmp_path / "auto" / "checkpoints" / "last.pt")
    assert (state["step"], state["accum_steps"], state["config"]["accum_steps"]) == (2, 2, 1)
    # The resumed run (no memory trouble now) keeps accum_steps 2 and ends where the reference did.
    _fit(tmp_path, "auto", batch_size=8, auto_batch=True, checkpoint_every=1, epochs=3, resume_state=state)
    final = ckpt.load(tmp_path / "auto" / "checkpoints" / "last.pt")
    assert final["accum_steps"] == 2
    assert_same_tensors(final["model"], ref_state["model"])


def test_auto_batch_gives_up_at_a_micro_batch_of_one(tmp_path, monkeypatch):
    _patch_forward(monkeypatch, _oom_above(0))
    with pytest.raises(WorkError) as e:
        _fit(tmp_path, "run", batch_size=4, auto_batch=True)
    assert "micro-batch of 1" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
