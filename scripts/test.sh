#!/usr/bin/env bash
# Install everything the tests need and run them: `bash scripts/test.sh [pytest args]`.
#
# Which Python runs the tests:
# * the ACTIVE virtual environment ($VIRTUAL_ENV, or the python3 on PATH when it is a venv's) when it
#   already has what requirements-test.txt and the project's dependencies ask for (checked below:
#   versions from the package metadata, then a real import of each test package). Nothing is installed
#   into it; the checkout under test comes first on PYTHONPATH. So a user who did
#   `pip install -e '.[test]'` does not download torch a second time.
# * otherwise a cached venv outside the checkout, keyed on the dependency files and this script, so a
#   rerun (or CI, which has no venv active) does not reinstall the 5 GB torch build. Override its
#   location with RESNET_CIFAR_VENV.
# RESNET_CIFAR_TEST_SH_DRY_RUN=1 prints the choice and exits (what tests/test_test_sh.py checks).
# Exits non-zero on any failure, including "no tests ran" (pytest's exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."

# Prints nothing and exits 0 when `python` satisfies the test requirements; else one line saying what is missing.
check_requirements() {
    "$1" - requirements-test.txt pyproject.toml <<'PY'
import importlib
import re
import sys
from importlib import metadata

def numbers(version):
    """'2.14.1+cu130' -> (2, 14, 1): the release numbers, local label and pre-release tags dropped."""
    out = []
    for part in version.split("+")[0].split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        out.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(out)

def pad(t, n):
    return t + (0,) * (n - len(t))

wanted = []
for line in open(sys.argv[1], encoding="utf-8"):
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(==|>=)\s*([0-9][0-9A-Za-z.+]*)", line.split("#")[0])
    if m:
        wanted.append(m.groups())
project = open(sys.argv[2], encoding="utf-8").read().split("[project]", 1)[-1].split("\n[", 1)[0]
for m in re.finditer(r'"([A-Za-z0-9_.-]+)\s*(==|>=)\s*([0-9][0-9.]*)"', project):
    wanted.append(m.groups())
for name, op, version in wanted:
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        sys.exit(f"{name} is not installed")
    a, b = numbers(have), numbers(version)
    n = max(len(a), len(b))
    if (op == "==" and pad(a, n) != pad(b, n)) or (op == ">=" and pad(a, n) < pad(b, n)):
        sys.exit(f"{name} {have} does not satisfy {op}{version}")
for module in ("torch", "torchvision", "pytest", "hypothesis", "onnx", "onnxruntime", "tensorboard"):
    try:
        importlib.import_module(module)
    except Exception as e:  # a broken install counts as missing
        sys.exit(f"import {module} fails ({type(e).__name__}: {e})")
PY
}

install_cached_venv() {
    echo "test.sh: creating $1 (first run: installs torch, a few minutes)" >&2
    rm -rf "$1"
    python3 -m venv "$1"
    "$1/bin/pip" install -q --upgrade pip "setuptools>=77"   # the editable reinstall below builds without isolation
    # The pinned test stack first, then the project's own dependencies (resolved against it).
    "$1/bin/pip" install -q -r requirements-test.txt
    "$1/bin/pip" install -q -e ".[test]"
    touch "$1/.complete"
}

# The active venv's python, or nothing when no venv is active.
active_venv_python() {
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        echo "$VIRTUAL_ENV/bin/python"
    elif command -v python3 >/dev/null 2>&1 \
            && python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
        command -v python3
    fi
}

python=""
active=$(active_venv_python)
if [ -n "$active" ]; then
    if why=$(check_requirements "$active" 2>&1); then
        python=$active
        echo "test.sh: using the active virtual environment ($python): it has the test requirements" >&2
    else
        echo "test.sh: the active virtual environment ($active) does not have the test requirements" \
             "(${why##*$'\n'}); using the cached one" >&2
    fi
fi

# The cache key: the dependency files, the install recipe (not the rest of this script) and the Python.
key=$( (cat pyproject.toml requirements-test.txt; sed -n '/^install_cached_venv() {/,/^}/p' scripts/test.sh;
        python3 --version) | sha256sum | cut -c1-16)
venv=${RESNET_CIFAR_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/resnet-cifar/venv-$key}
if [ -n "${RESNET_CIFAR_TEST_SH_DRY_RUN:-}" ]; then
    echo "python: ${python:-$venv/bin/python}"
    exit 0
fi

if [ -n "$python" ]; then
    # The checkout under test, without touching the user's environment.
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    [ -f "$venv/.complete" ] || install_cached_venv "$venv"
    python=$venv/bin/python
    # The project itself is cheap to (re)install and must be the checkout under test.
    "$venv/bin/pip" install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
fi
"$python" -c "import pathlib, sys, resnet_cifar; sys.exit(pathlib.Path(resnet_cifar.__file__).resolve().parents[1] != pathlib.Path('src').resolve())" \
    || { echo "test.sh: resnet_cifar does not import from this checkout's src/" >&2; exit 1; }

# Lint first (pyproject's [tool.ruff]: pyflakes, isort, bugbear); a finding fails the run like a test.
"$python" -m ruff check src tests benchmarks scripts

# The report's browser test drives headless Chromium (Debian package). Install it where we can;
# the test itself skips with the reason if it is still missing.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing chromium for the browser test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "test.sh: chromium could not be installed; the browser test will skip" >&2
fi

exec "$python" -m pytest "$@"
