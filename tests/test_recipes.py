"""docs/recipes.md stays true to the code: every command parses, every train command validates."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from docs_helpers import NOT_RUN, blocks, commands
from resnet_cifar.cli import build_parser, main

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def _commands():
    return [(argv, run) for lang, body in blocks(RECIPES) if lang == "bash" for argv, run in commands(body)]


def test_every_recipe_command_parses_and_every_train_command_validates():
    cmds = _commands()
    assert sum(argv[0] == "train" for argv, _ in cmds) >= 8
    parser = build_parser()
    for argv, run in cmds:
        parser.parse_args(argv)
        if argv[0] == "train" and run:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main(argv + ["--print-config"]) == 0, argv
            assert "model:" in out.getvalue()


def test_the_not_run_marker_is_only_on_commands_that_need_files():
    for argv, run in _commands():
        assert run or any(a.endswith((".pth", ".pt")) for a in argv), (argv, NOT_RUN)
