"""Short runs are honest: a preset's warm-up and SWA phase fit the run, with one line saying so."""

from __future__ import annotations

import pytest

from resnet_cifar.config import PRESET_VALUES, Config, resolve
from resnet_cifar.schedule import LRSchedule, plan


def test_a_one_epoch_tutorial_run_trains_at_its_lr_not_at_swa_lr():
    cfg = Config(epochs=1, swa=True, swa_start=0.75, lr=0.05, swa_lr=0.01)
    p = plan(cfg)
    assert p.swa_start is None and len(p.notes) == 1
    assert p.notes[0].startswith("SWA off: a 1-epoch run") and "--lr 0.05" in p.notes[0]


def test_a_two_epoch_run_with_swa_says_half_of_it_is_at_swa_lr():
    p = plan(Config(epochs=2, swa=True, swa_start=0.75))
    assert p.swa_start == 2 and p.notes == ("SWA from epoch 2 of 2: 1 epoch (2-2) at the constant --swa-lr 0.01, "
                                            "not at --lr 0.1 (plateau schedule)",)


def test_swa_never_starts_at_epoch_one_and_long_runs_stay_silent():
    p = plan(Config(epochs=3, swa=True, swa_start=1))
    assert p.swa_start == 2 and "moved from epoch 1 to 2" in p.notes[0] and "2 epochs (2-3)" in p.notes[0]
    assert plan(Config(epochs=250, swa=True, swa_start=0.75)) == plan(Config(epochs=250, swa=True))
    assert plan(Config(epochs=250, swa=True)).swa_start == 188 and plan(Config(epochs=250, swa=True)).notes == ()
    assert plan(Config(epochs=10, swa=False)).swa_start is None


def test_warm_up_is_clipped_to_a_quarter_of_the_run():
    fast = Config(**{**PRESET_VALUES["fast"], "epochs": 1, "preset": "fast"})
    p = plan(fast)
    assert p.warmup_epochs == 0.25
    assert p.notes == ("warm-up shortened from 2 to 0.25 epochs, a quarter of this 1-epoch run",)
    assert plan(resolve(preset="fast")).warmup_epochs == 2.0 and plan(resolve(preset="fast")).notes == ()
    # the schedule uses the clipped warm-up: the lr peaks after a quarter of the 8 steps, then decays
    s = LRSchedule(fast, steps_per_epoch=8)
    lrs = [s.lr(i) for i in range(8)]
    assert lrs.index(max(lrs)) == 1 and max(lrs) == pytest.approx(fast.lr, rel=0.01)
