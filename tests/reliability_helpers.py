"""Helpers shared by the test_reliability_* files (this module holds no tests).

Everything is tiny: ResNet-20 at width 0.25, a few dozen 32x32 images, 1-3 epochs, one thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_images
from resnet_cifar import checkpoint as ckpt
from resnet_cifar.config import resolve
from resnet_cifar.data import Dataset

PY = sys.executable
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

# The flags of a tiny deterministic CPU run; the CLI tests and the in-process tests share them.
TINY = dict(model="resnet20", width=0.25, epochs=2, batch_size=4, val_size=4, device="cpu",
            deterministic=True, scheduler="cosine", warmup_epochs=0.0, ema=0.0, swa=False, tta=False,
            compile="off", report=False, lr=0.05, label_smoothing=0.0)


def tiny_config(**over):
    values = {**TINY, **over}
    return resolve(flag_values=values, preset="fast")


def tiny_dataset(n_per_class: int = 6, num_classes: int = 2, seed: int = 0) -> Dataset:
    x, y = make_images(n_per_class, num_classes, seed=seed)
    return Dataset(name="folder", train_x=torch.from_numpy(x), train_y=torch.from_numpy(y), test_x=None,
                   test_y=None, classes=[f"c{i}" for i in range(num_classes)], mean=MEAN, std=STD)


def write_folder(root: Path, n_per_class: int = 6, num_classes: int = 2, seed: int = 0) -> Path:
    """root/train/<class>/*.png from make_images (a real folder dataset for CLI-level tests)."""
    x, y = make_images(n_per_class, num_classes, seed=seed)
    for i, (im, label) in enumerate(zip(x, y, strict=True)):
        d = root / "train" / f"c{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(im.transpose(1, 2, 0))).save(d / f"{i:04d}.png")
    return root


def train_argv(data_dir: Path, out: Path, **over) -> list[str]:
    """`train` argv for the TINY run on a folder dataset; over: flag=value (None drops, True = bare)."""
    values = {**TINY, **over}
    argv = ["train", "--preset", "fast", "--dataset", "folder", "--data-dir", str(data_dir), "--out", str(out)]
    for key, v in values.items():
        flag = "--" + key.replace("_", "-")
        if v is None:
            continue
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(v)]
    return argv


def run_main(argv, capsys) -> tuple[int, str, str]:
    """resnet_cifar.cli.main in-process: (exit code, stdout, stderr); argparse exits included."""
    from resnet_cifar.cli import main

    capsys.readouterr()
    # `train` sets torch's thread count from the CPU count unless OMP_NUM_THREADS is set: keep this
    # process at one thread (bitwise comparisons with the subprocess runs, no oversubscription).
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        finally:
            torch.set_num_threads(1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> str:
    """stderr is exactly one `resnet-cifar: error: ...` line (no traceback) containing the needles."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def assert_one_line_stop(err: str, signame: str, *needles: str) -> str:
    """stderr holds exactly one stop line, `resnet-cifar: stopped by SIGNAME ...`, that reads as a stop
    (no `error:` label), with the needles in it; no traceback."""
    assert "Traceback" not in err, err
    stops = [ln for ln in err.splitlines() if "stopped by" in ln]
    assert len(stops) == 1, err
    assert stops[0].startswith(f"resnet-cifar: stopped by {signame} "), stops[0]
    assert "error" not in stops[0], stops[0]
    for needle in needles:
        assert needle in stops[0], (needle, stops[0])
    return stops[0]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RESNET_CIFAR_NO_PROGRESS="1", PYTHONHASHSEED="0")
    return env


def start_cli(argv, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "resnet_cifar", *map(str, argv)], cwd=cwd, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll until `path` exists (True) or the process ended (False)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists():
            return True
        if proc.poll() is not None:
            return path.exists()
        time.sleep(0.005)
    raise AssertionError(f"{path} did not appear within {timeout}s")


def model_state(path: Path) -> dict:
    return ckpt.load(path)["model"]


def assert_same_tensors(a: dict, b: dict, atol: float = 0.0) -> None:
    """Every tensor equal; with atol, floats within it (another CPU's rounding), integers still exactly."""
    assert a.keys() == b.keys()
    for k in a:
        if atol and a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), f"{k} differs"


def all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())
