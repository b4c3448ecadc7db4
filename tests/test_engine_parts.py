"""The engine's small parts on their own: Sums, RunState, the resume validation, BestWeights, setup,
and the public step."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from helpers import TINY, tiny_dataset
from resnet_cifar.config import resolve
from resnet_cifar.engine import BestWeights, RunState, StepSetup, Sums, build_parts, setup, train_step, validate_resume
from resnet_cifar.errors import CheckpointError


def test_sums_add_read_and_round_trip_through_a_checkpoint_dict():
    s = Sums.zeros()
    s.add(Sums.of(torch.tensor(1.5), torch.tensor(3), 4)).add(Sums.of(torch.tensor(0.5), torch.tensor(1), 2))
    assert s.as_dict() == {"loss_sum": 2.0, "correct": 4.0, "count": 6.0}
    loss, correct, count = s                      # what a progress sink unpacks
    assert (float(loss), float(correct), float(count)) == (2.0, 4.0, 6.0)
    assert Sums.from_dict(s.as_dict()).as_dict() == s.as_dict()
    from resnet_cifar.distributed import World

    reduced = s.all_reduce(World())               # one process: a copy, not the same tensor
    reduced.add(s)
    assert s.as_dict()["count"] == 6.0 and reduced.as_dict()["count"] == 12.0


def test_run_state_round_trips_and_records_time_to_accuracy():
    st = RunState(accum_steps=2)
    st.step, st.batch, st.partial["count"] = 7, 3, 24.0
    st.reached(0.935, elapsed=12.0)
    st.reached(0.96, elapsed=20.0)
    assert st.time_to_acc == {"0.90": 12.0, "0.93": 12.0, "0.94": 20.0, "0.95": 20.0}
    back = RunState()
    back.load_state_dict(st.state_dict())
    assert back == st
    st.end_epoch(1)
    assert (st.epoch, st.batch, st.partial["count"]) == (1, 0, 0.0)


def _resumable(**over) -> dict:
    st = RunState().state_dict()
    return {**st, "optimizer": {}, "schedule": {}, "scaler": {}, "config": {}, "elapsed": 0.0,
            "rng": {"torch": torch.get_rng_state(), "numpy": {}, "python": {}}, **over}


@pytest.mark.parametrize("over, needle", [({"rng": {}}, "RNG"), ({"batch": 5}, "data position"),
                                          ({"epoch": 9}, "data position"), ({"accum_steps": 0}, "position state"),
                                          ({"history": None}, "'history'")])
def test_resume_validation_refuses_in_one_line(over, needle):
    validate_resume(_resumable(), steps_per_epoch=5, epochs=3)
    with pytest.raises(CheckpointError, match=needle) as e:
        validate_resume(_resumable(**over), steps_per_epoch=5, epochs=3)
    assert "\n" not in str(e.value)


class _Saved:
    def __init__(self):
        self.calls = []

    def __call__(self, name, state, source):
        self.calls.append((name, source))


def test_best_weights_choose_among_raw_ema_and_swa_on_validation():
    st, saved = RunState(), _Saved()
    best = BestWeights(st, saved)
    raw, ema, swa = nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1)
    for epoch, (r, e) in enumerate([(0.5, 0.4), (0.6, 0.7), (0.65, 0.66)], 1):
        row = {"val_acc": r, "ema_val_acc": e, "elapsed_seconds": float(epoch)}
        best.epoch_end(epoch, row, {"raw": raw, "ema": ema})
        st.history.append(row)
    # raw 0.5, raw 0.6, then EMA 0.7 in the same epoch; epoch 3's 0.65 and 0.66 are not better
    assert saved.calls == [("best.pt", "raw"), ("best.pt", "raw"), ("best.pt", "ema")]
    assert st.best == {"val_acc": 0.7, "epoch": 2, "source": "ema"}
    best.finish(3, has_val=True, swa=(0.69, swa), final=("ema", ema))    # SWA below the best: kept
    assert st.best["source"] == "ema" and len(saved.calls) == 3
    best.finish(3, has_val=True, swa=(0.71, swa), final=("ema", ema))
    assert st.best == {"val_acc": 0.71, "epoch": 3, "source": "swa"} and saved.calls[-1] == ("best.pt", "swa")
    assert best.results()["candidates"] == {"raw": 0.65, "swa": 0.71, "ema": 0.7}


def test_without_validation_the_final_weights_are_the_result():
    st, saved = RunState(), _Saved()
    best = BestWeights(st, saved)
    best.finish(4, has_val=False, swa=None, final=("ema", nn.Linear(1, 1)))
    assert st.best == {"val_acc": None, "epoch": 4, "source": "ema"} and saved.calls == [("best.pt", "ema")]


def test_setup_makes_the_same_start_twice_and_the_step_returns_device_sums():
    cfg = resolve(flag_values={**TINY, "val_size": 0, "scheduler": "constant"})
    data = tiny_dataset(n_per_class=8)
    device = setup(cfg)
    a = build_parts(cfg, data, device)
    setup(cfg)
    b = build_parts(cfg, data, device)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(),
                                                  strict=True))
    s: StepSetup = a.step
    _, x, y = next(a.loader.batches(1))
    before = next(a.model.parameters()).detach().clone()
    out = train_step(s, x, y, len(y), lr=0.1)
    assert out.sums.values.device == device and out.sums.as_dict()["count"] == len(y)
    assert bool(out.finite) and not torch.equal(before, next(a.model.parameters()))
