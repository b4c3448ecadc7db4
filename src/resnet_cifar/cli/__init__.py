"""The command line: `resnet-cifar <command> ...` and `python -m resnet_cifar`.

Each subcommand lives in its own module under `resnet_cifar.cli` with two functions:
`add_parser(subparsers)` (flags and help) and `run(args) -> int` (validate, call the library,
print). Nothing here trains or loads anything itself.

Exit codes: 0 success, 2 usage or input error, 1 failure during work, 128+signal after
SIGINT/SIGTERM/SIGHUP (with a checkpoint written; the message is a stop, not an error).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import Interrupted, ResnetCifarError

# Order = order in --help. A command is listed here only once it works.
COMMANDS = ["env", "data", "models", "summary", "train", "evaluate", "report", "predict", "export", "bench"]


def one_line(text) -> str:
    """An error message as exactly one printable line: control characters that came in with user
    input (a newline in an argument, terminal escape codes in a file name) are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def _available_commands():
    for name in COMMANDS:
        try:
            yield name, importlib.import_module(f"{__name__}.{name}_cmd")
        except ModuleNotFoundError as e:  # not built yet: leave it out rather than pretend
            if e.name != f"{__name__}.{name}_cmd":
                raise


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="resnet-cifar",
                     description="Train ResNets on CIFAR-10/100 or a folder of small images.")
    parser.add_argument("--version", action="version", version=f"resnet-cifar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for _name, module in _available_commands():
        module.add_parser(sub)
    return parser


def _say_stopped(message: str) -> None:
    """The stop message on a line of its own: on a terminal, the `^C` echo (or a bar) is cleared first.
    After SIGHUP the terminal may be gone; the checkpoint is written, so a failed write is ignored."""
    try:
        start = "\r\x1b[K" if sys.stderr.isatty() else ""
        print(f"{start}resnet-cifar: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except Interrupted as e:  # a stop the user asked for, with a checkpoint: not an error
        _say_stopped(one_line(e))
        return e.exit_code
    except ResnetCifarError as e:
        print(f"resnet-cifar: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("resnet-cifar: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
