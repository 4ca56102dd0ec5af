#!/usr/bin/env bash
# Runs every command shown in README.md and docs/*.md exactly as written, the slow ones included
# (CI runs them as written too; a plain local pytest run renders 3 frames of the 100-frame dataset example, --frames 0:3).  Needs an installed
# environment in .venv (scripts/run_tests.sh makes .venv-test: VENV=.venv-test scripts/check_docs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
NB_DOCS_ALL=1 exec "$VENV/bin/python" -m pytest -q tests/test_docs_commands.py "$@"
