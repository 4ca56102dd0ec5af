#!/usr/bin/env bash
# Create a fresh virtual environment, install nanobragg-torch with its test dependencies, run the tests.
# Usage: scripts/run_tests.sh [pytest args]      (VENV=path to choose where the environment goes)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-test}"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# the CPU build of torch pinned here; the package itself accepts torch>=2.3
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test]"
# byte-compile the package as a regular pip install does (an editable install leaves it to the
# first import, and none is written when PYTHONDONTWRITEBYTECODE is set)
"$VENV/bin/python" -m compileall -q src/nanobragg_torch >/dev/null
# the fused CPU kernel is compiled with the system C compiler on first use; its tests need one
if ! command -v "${CC:-cc}" >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq gcc >/dev/null; } || true
  fi
  command -v "${CC:-cc}" >/dev/null 2>&1 || echo "note: no C compiler (${CC:-cc}): the fused CPU kernel's tests skip (fail with CI=true)" >&2
fi
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
