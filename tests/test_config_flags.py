"""`train`'s flags come from the Config fields' metadata: every field has one, with help text and the
presets' values; the double negative is gone (its old spelling still works); --print-config."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

import pytest
import yaml

from resnet_cifar.cli import build_parser, main
from resnet_cifar.config import Config, from_dict, resolve
from resnet_cifar.errors import UsageError


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def _parse(*argv):
    return _train_parser().parse_args(list(argv))


def test_every_config_field_has_a_flag_with_help_and_every_shown_flag_has_help():
    p = _train_parser()
    dests = {a.dest for a in p._actions}
    assert {f.name for f in fields(Config)} - {"preset"} <= dests
    assert "preset" in dests
    for a in p._actions:
        if a.option_strings and a.help != argparse.SUPPRESS:
            assert a.help and len(a.help) > 8, a.option_strings


def test_help_shows_the_presets_values():
    text = _train_parser().format_help()
    flat = " ".join(text.split())
    assert "training epochs (tutorial: 250, fast: 30, speedrun: 18)" in flat
    assert "SGD momentum (tutorial: 0.9, fast: 0.9, speedrun: 0.85)" in flat
    assert "padding is filled (default: reflect)" in flat     # --pad-mode: the same in every preset
    assert "--no-no-bn-decay" not in text and "--bn-decay" in text


@pytest.mark.parametrize("argv, expected", [
    ((), None), (("--no-bn-decay",), True), (("--bn-decay",), False), (("--no-no-bn-decay",), False)])
def test_bn_decay_flags_and_the_old_double_negative(argv, expected):
    args = _parse(*argv)
    assert args.no_bn_decay is expected
    flags = {"no_bn_decay": args.no_bn_decay} if expected is not None else {}
    cfg = resolve(flag_values=flags, preset="fast")
    assert cfg.no_bn_decay is (True if expected is None else expected)   # fast's default: no decay on BN


def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "fast", "--lr", "0.2", "--model", "resnet20", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert from_dict(printed) == resolve(flag_values={"lr": 0.2, "model": "resnet20"}, preset="fast")
    assert list(tmp_path.iterdir()) == []


def test_print_config_checks_the_values_first(capsys):
    assert main(["train", "--lr", "-1", "--print-config"]) == 2
    assert "--lr must be >= 0" in capsys.readouterr().err


def test_the_library_runs_seeds_like_the_command_line(png_folder, tmp_path):
    from resnet_cifar import run

    cfg = resolve(flag_values=dict(dataset="folder", data_dir=str(png_folder), model="resnet20", width=0.125,
                                   epochs=1, batch_size=16, val_size=6, scheduler="cosine", device="cpu",
                                   swa=False, compile="off", report=False, out=str(tmp_path / "seeds")))
    plan = run.train(cfg, seeds=[3, 4])
    assert [r.run_dir.name for r in plan.runs] == ["seed-3", "seed-4"]
    summary = json.loads((tmp_path / "seeds" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(plan.summary)) and summary["seeds"] == [3, 4]
    assert [json.loads((r.run_dir / "results.json").read_text())["seed"] for r in plan.runs] == [3, 4]
    with pytest.raises(UsageError, match="exists and is not empty"):   # the same run-directory rule
        run.train(cfg)
