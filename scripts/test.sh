#!/usr/bin/env bash
# Install everything the tests need and run them: `bash scripts/test.sh [pytest args]`.
#
# The virtual environment lives outside the checkout, keyed on the dependency files and this
# script, so a rerun (or CI on the same machine) does not reinstall the 5 GB torch build.
# Override the location with RESNET_CIFAR_VENV. Exits non-zero on any failure, including "no tests ran" (pytest's exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."

key=$( (cat pyproject.toml requirements-test.txt scripts/test.sh; python3 --version) | sha256sum | cut -c1-16)
venv=${RESNET_CIFAR_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/resnet-cifar/venv-$key}

if [ ! -f "$venv/.complete" ]; then
    echo "test.sh: creating $venv (first run: installs torch, a few minutes)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip "setuptools>=77"   # the editable reinstall below builds without isolation
    # The pinned test stack first, then the project's own dependencies (resolved against it).
    "$venv/bin/pip" install -q -r requirements-test.txt
    "$venv/bin/pip" install -q -e ".[test]"
    touch "$venv/.complete"
fi
# The project itself is cheap to (re)install and must be the checkout under test.
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
"$venv/bin/python" -c "import resnet_cifar" || { echo "test.sh: resnet_cifar does not import" >&2; exit 1; }

# The report's browser test drives headless Chromium (Debian package). Install it where we can;
# the test itself skips with the reason if it is still missing.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing chromium for the browser test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "test.sh: chromium could not be installed; the browser test will skip" >&2
fi

exec "$venv/bin/python" -m pytest "$@"
