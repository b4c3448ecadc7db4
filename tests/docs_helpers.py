"""Reading the docs' code blocks: the fenced blocks of a Markdown file and the `resnet-cifar`
commands of a bash block (shared by the tutorial's and the recipes' tests)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

NOT_RUN = "# not run in tests"   # a command marked so is parsed and validated, not run

FENCE = re.compile(r"^```(\w[\w.+-]*)?[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    return [(lang or "", body) for lang, body in FENCE.findall(text)]


def commands(body: str) -> list[tuple[list[str], bool]]:
    """(argv without the leading `resnet-cifar`, runnable?) for each command of a bash block."""
    out, pending = [], ""
    for raw in body.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        stripped = line.strip()
        if not stripped.startswith("resnet-cifar "):
            continue
        argv = shlex.split(stripped, comments=True)
        out.append((argv[1:], NOT_RUN not in stripped))
    assert not pending, f"a bash block ends with a line continuation: {body!r}"
    return out
