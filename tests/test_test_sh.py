"""scripts/test.sh picks the active virtual environment when it already has the test requirements,
else its cached one (CI: no venv active). Only the decision is run (RESNET_CIFAR_TEST_SH_DRY_RUN):
nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or os.name != "posix", reason="needs bash")


def _wrapper(path: Path, target: str) -> Path:
    """An executable `python` that is `target` (so sys.prefix is that interpreter's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
    path.chmod(0o755)
    return path


def _base_python() -> str:
    for name in ("python3", f"python{sys.version_info.major}.{sys.version_info.minor}"):
        cand = Path(sys.base_prefix) / "bin" / name
        if cand.exists():
            return str(cand)
    pytest.skip("no base interpreter beside this venv")


def _decide(tmp_path: Path, root: Path = ROOT, **env) -> tuple[str, str]:
    """Run test.sh's decision with a PATH whose python3 is not a venv's (unless overridden)."""
    plain = tmp_path / "plain" / "bin"
    _wrapper(plain / "python3", _base_python())
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CI", "RESNET_CIFAR_VENV")}
    base.update(PATH=f"{plain}:/usr/bin:/bin", RESNET_CIFAR_TEST_SH_DRY_RUN="1",
                RESNET_CIFAR_VENV=str(tmp_path / "cached"))
    base.update(env)
    r = subprocess.run(["bash", str(root / "scripts" / "test.sh")], env=base, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), r.stderr


def test_ci_without_a_venv_uses_the_cached_one(tmp_path):
    out, err = _decide(tmp_path, CI="true")
    assert out == f"python: {tmp_path / 'cached' / 'bin' / 'python'}" and "active virtual environment" not in err


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the tests do not run in a venv")
def test_the_active_venv_on_path_is_reused_when_it_has_the_requirements(tmp_path):
    """This very venv has the pinned test stack: as the python3 on PATH it is chosen."""
    venv_bin = tmp_path / "myvenv" / "bin"
    _wrapper(venv_bin / "python3", sys.executable)
    out, err = _decide(tmp_path, PATH=f"{venv_bin}:/usr/bin:/bin")
    assert out == f"python: {venv_bin / 'python3'}" and "using the active virtual environment" in err


def test_a_venv_with_other_versions_falls_back_to_the_cached_one(tmp_path):
    """Same venv, but the checkout pins another torch: the check names the mismatch, the cached venv is used."""
    copy = tmp_path / "checkout"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "test.sh", copy / "scripts" / "test.sh")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    reqs = (ROOT / "requirements-test.txt").read_text()
    (copy / "requirements-test.txt").write_text(reqs.replace("torch==", "torch==0.0.1\n# was torch==", 1))
    venv = tmp_path / "venv"
    _wrapper(venv / "bin" / "python", sys.executable)
    out, err = _decide(tmp_path, root=copy, VIRTUAL_ENV=str(venv))
    assert out == f"python: {tmp_path / 'cached' / 'bin' / 'python'}"
    assert "does not have the test requirements (torch" in err and "does not satisfy ==0.0.1" in err


def test_a_broken_venv_python_falls_back_to_the_cached_one(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\necho 'import torch fails (ImportError: libcuda)' >&2\nexit 1\n")
    (venv / "bin" / "python").chmod(0o755)
    out, err = _decide(tmp_path, VIRTUAL_ENV=str(venv))
    assert out == f"python: {tmp_path / 'cached' / 'bin' / 'python'}" and "(import torch fails" in err
