import json
import math

import pytest
import torch

from resnet_cifar.config import PRESET_VALUES, Config, from_dict, load_config_file, resolve, swa_start_epoch
from resnet_cifar.errors import UsageError
from resnet_cifar.schedule import LRSchedule


def test_precedence_defaults_preset_file_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.05\nepochs: 7\nbatch-size: 64\n")
    cfg = resolve(load_config_file(f), {"lr": 0.01}, preset="fast")
    assert cfg.lr == 0.01             # flag beats file
    assert cfg.epochs == 7            # file beats preset
    assert cfg.batch_size == 64
    assert cfg.nesterov is True       # preset beats default
    assert cfg.preset == "fast"


def test_tutorial_is_the_default_preset():
    cfg = resolve()
    for key, value in PRESET_VALUES["tutorial"].items():
        assert getattr(cfg, key) == value
    assert (cfg.model, cfg.scheduler, cfg.epochs, cfg.batch_size, cfg.swa) == ("resnet18", "plateau", 250, 128, True)


def test_json_config_and_round_trip(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": "resnet20", "ema": 0.99}))
    cfg = resolve(load_config_file(f))
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("values, match", [
    ({"lrr": 0.1}, "did you mean 'lr'"),
    ({"lr": float("nan")}, "finite"),
    ({"lr": -1}, ">= 0"),
    ({"batch_size": 0}, "batch-size"),
    ({"model": "resnet19"}, "resnet18"),
    ({"dataset": "mnist"}, "cifar10"),
    ({"val_size": 0}, "plateau"),
    ({"batch_size": 100, "accum_steps": 3}, "divisible"),
    ({"epochs": "many"}, "int"),
])
def test_bad_values_are_refused_with_one_line(values, match):
    with pytest.raises(UsageError, match=match) as e:
        resolve(file_values=values)
    assert "\n" not in str(e.value)


def test_bad_config_files(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "broken.json").write_text("{")
    for name in ("list.yaml", "broken.json", "missing.yaml"):
        with pytest.raises(UsageError):
            load_config_file(tmp_path / name)


def test_swa_start_fraction_or_epoch():
    assert swa_start_epoch(Config(epochs=250, swa_start=0.75)) == 188
    assert swa_start_epoch(Config(epochs=10, swa_start=4)) == 4


def lrs(kind, epochs=10, steps=10, **kw):
    s = LRSchedule(Config(scheduler=kind, epochs=epochs, lr=0.1, **kw), steps)
    return [s.lr(i) for i in range(epochs * steps)]


def test_cosine_warmup_and_decay():
    v = lrs("cosine", warmup_epochs=1)
    assert v[0] == pytest.approx(0.01) and v[9] == pytest.approx(0.1)   # linear warm-up over 10 steps
    assert max(v) == pytest.approx(0.1)
    assert v[-1] < 1e-3 and all(a >= b for a, b in zip(v[10:], v[11:], strict=False))


def test_multistep_drops_at_milestones():
    v = lrs("multistep")
    # milestones at 50% and 75% of 10 epochs: epochs 5 and 8 (rounded), 10 steps each
    assert v[49] == pytest.approx(0.1) and v[50] == pytest.approx(0.01)
    assert v[79] == pytest.approx(0.01) and v[80] == pytest.approx(0.001)


def test_onecycle_rises_then_anneals():
    v = lrs("onecycle")
    peak = v.index(max(v))
    assert peak == 30 and v[0] == pytest.approx(0.1 / 25) and v[-1] < 1e-4


def test_constant():
    assert set(lrs("constant")) == {0.1}


def test_plateau_matches_torch_reduce_lr_on_plateau():
    losses = [1.0, 0.9, 0.9, 0.95, 0.91, 0.9, 0.89, 0.89, 0.9, 0.7, 0.71, 0.72, 0.73]
    ours = LRSchedule(Config(scheduler="plateau", lr=0.1, plateau_patience=2, plateau_factor=0.5), 1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min", factor=0.5, patience=2)
    for loss in losses:
        ours.epoch_end(loss)
        ref.step(loss)
        assert math.isclose(ours.lr(0), opt.param_groups[0]["lr"])
    assert ours.lr(0) < 0.1


def test_speedrun_preset_validates_and_its_triangle_schedule():
    cfg = resolve(preset="speedrun")
    assert cfg.scheduler == "triangle" and from_dict(cfg.to_dict()) == cfg
    s = LRSchedule(cfg, steps_per_epoch=44)          # 18 epochs = 792 steps: peak at int(0.23 * 792) = 182
    assert cfg.epochs == 18
    assert s.lr(0) == pytest.approx(0.2 * cfg.lr) and s.lr(182) == pytest.approx(cfg.lr)
    assert s.lr(792) == pytest.approx(0.07 * cfg.lr) and s.lr(90) < s.lr(180) and s.lr(540) > s.lr(720)
    with pytest.raises(UsageError, match="--bias-lr-scale"):
        resolve(flag_values={"bias_lr_scale": 0.0}, preset="speedrun")
