"""Every command and code block of docs/tutorial.md (and its Chinese translation) runs.

Convention (also stated at the end of each tutorial):
* Every line of a ```bash block that starts with `resnet-cifar ` is a command (a trailing `\\`
  continues it); other lines (pip, mkdir, tar) are setup for a reader and are not run here.
* Every ```python block is executed, in document order with the commands, in one namespace.
* A command whose line, or a Python block whose first line, carries `# not run in tests` is only
  checked (commands: parsed by the real argument parser; Python: compiled, its imports run).
* Commands run in-process through `resnet_cifar.cli.main(argv)`, in a temporary working directory
  that holds what the tutorial assumes: `data/` gets a tiny CIFAR-10 in the official format (its
  MD5s swapped into the data layer, so `data download` really downloads, from a file:// URL),
  `data/cifar10-jpeg/` a tiny image folder, and `photos/` two images. Each `train` command
  (except --resume) gets TINY_TRAIN appended; later flags win in argparse.
* The translation must hold the same commands and the same code (Python compared by AST, so
  comments may be translated); the commands then run once, from the English file.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import shlex
from pathlib import Path

import numpy as np
import pytest

from docs_helpers import NOT_RUN, blocks, commands

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "tutorial.md", ROOT / "docs" / "tutorial.zh-CN.md"]
MAX_NOT_RUN = 4
TINY_TRAIN = ["--epochs", "1", "--warmup-epochs", "0", "--width", "0.125", "--val-size", "10",
              "--train-subset", "0", "--batch-size", "16", "--eval-batch-size", "64",
              "--device", "cpu", "--amp", "off", "--compile", "off", "--no-report"]

def steps(path: Path) -> list[tuple[str, object, bool]]:
    """("cmd", argv, run) and ("py", source, run) in document order."""
    out = []
    for lang, body in blocks(path):
        if lang == "bash":
            out += [("cmd", argv, run) for argv, run in commands(body)]
        elif lang == "python":
            first = body.lstrip().splitlines()[0] if body.strip() else ""
            out.append(("py", body, NOT_RUN not in first))
    return out


def _normal(step):
    kind, payload, run = step
    if kind == "py":
        return kind, ast.dump(ast.parse(payload)), run
    return kind, tuple(payload), run


# ------------------------------------------------------------------------------- cheap checks

@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_doc_has_commands_for_every_step(path):
    s = steps(path)
    cmds = [argv for kind, argv, _ in s if kind == "cmd"]
    first_words = {argv[0] for argv in cmds}
    assert {"env", "data", "summary", "train", "evaluate", "report", "predict", "export"} <= first_words
    assert sum(1 for kind, _, _ in s if kind == "py") >= 8
    not_run = [p for _, p, run in s if not run]
    assert len(not_run) <= MAX_NOT_RUN, f"too many `{NOT_RUN}` steps: {not_run}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_command_parses_and_every_python_block_compiles(path):
    from resnet_cifar.cli import build_parser

    parser = build_parser()
    for kind, payload, _ in steps(path):
        if kind == "cmd":
            try:
                parser.parse_args(payload)
            except SystemExit as e:
                pytest.fail(f"{path.name}: `resnet-cifar {shlex.join(payload)}` does not parse (exit {e.code})")
        else:
            compile(payload, f"{path.name}:python", "exec")


def test_translation_has_the_same_commands_and_code():
    en, zh = (steps(p) for p in DOCS)
    assert [_normal(s) for s in zh] == [_normal(s) for s in en]


def test_tutorial_claims_match_the_code():
    from resnet_cifar.constants import CIFAR10_MEAN, CIFAR10_STD
    from resnet_cifar.summary import summarize

    s = summarize("resnet18")
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        assert f"{s['total_params']:,}" in text
        assert f"{s['macs_per_image'] / 1e9:.2f} G" in text
        for v in (*CIFAR10_MEAN, *CIFAR10_STD):
            assert f"{v:.4f}" in text


# ------------------------------------------------------------------------- running the tutorial

def _write_tutorial_world(root: Path, monkeypatch):
    from PIL import Image

    from cifar_fixtures import make_fake_cifar
    from helpers import make_images
    from resnet_cifar.data import cifar

    fake = make_fake_cifar(root / "downloads", "cifar10", per_batch=12)
    monkeypatch.setattr(cifar, "SOURCES", {**cifar.SOURCES, **fake.sources})
    monkeypatch.delenv("RESNET_CIFAR_CIFAR10_URL", raising=False)

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    x, y = make_images(4, len(classes), seed=3)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = root / "data" / "cifar10-jpeg" / "train" / classes[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i:04d}.jpg", quality=90)

    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photos / "cat.jpg")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), "RGBA").save(photos / "ship.png")


def _run_command(argv: list[str]) -> tuple[int, str]:
    from resnet_cifar.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            rc = main(argv)
        except SystemExit as e:     # argparse errors
            rc = e.code if isinstance(e.code, int) else 1
    return rc, buf.getvalue()


def _run_python(source: str, namespace: dict) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        exec(compile(source, "tutorial-snippet", "exec"), namespace)
    return buf.getvalue()


def _imports_only(source: str) -> str:
    tree = ast.parse(source)
    tree.body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return ast.unparse(tree)


def _needs_onnx(kind, payload) -> bool:
    if kind == "cmd":
        return payload[:1] == ["export"] and "onnx" in payload
    return "onnxruntime" in payload or ".onnx" in payload


@pytest.mark.slow
def test_tutorial_runs_end_to_end(tmp_path, monkeypatch):
    for name in ("train", "evaluate", "report"):
        pytest.importorskip(f"resnet_cifar.cli.{name}_cmd", reason=f"`{name}` is not built yet")
    has_onnx = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")      # train keeps the test's one thread
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(tmp_path / "cache"))
    _write_tutorial_world(tmp_path, monkeypatch)

    namespace: dict = {"__name__": "__tutorial__"}
    ran = 0
    for kind, payload, run in steps(DOCS[0]):
        if not has_onnx and _needs_onnx(kind, payload):
            continue        # the ONNX extra is optional; test_export skips with the reason too
        if kind == "py":
            source = payload if run else _imports_only(payload)
            try:
                _run_python(source, namespace)
            except Exception as e:  # report which snippet failed
                pytest.fail(f"python block failed ({type(e).__name__}: {e}):\n{payload}")
            ran += 1
            continue
        if not run:
            continue
        argv = list(payload)
        if argv[0] == "train" and "--resume" not in argv:
            argv += TINY_TRAIN
        rc, output = _run_command(argv)
        assert rc == 0, f"`resnet-cifar {shlex.join(argv)}` exited {rc}:\n{output[-3000:]}"
        ran += 1

    assert ran >= 30
    for produced in ("preview.png", "preview-augmented.png", "runs/tutorial/results.json",
                     "runs/tutorial/report/index.html", "runs/fast-seeds/summary.json",
                     "runs/jpeg/checkpoints/best.pt", "resnet18.ts"):
        assert (tmp_path / produced).is_file(), produced
    if has_onnx:
        assert (tmp_path / "resnet18.onnx").is_file()
