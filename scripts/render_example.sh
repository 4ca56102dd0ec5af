#!/usr/bin/env bash
# Create a virtual environment (if needed), install nanobragg-torch, and render an example image
# into ./example/ (float image, SMV image, noise image, PGM preview).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/nanoBragg" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e .
  # byte-compile the package as a regular pip install does (see scripts/run_tests.sh)
  "$VENV/bin/python" -m compileall -q src/nanobragg_torch >/dev/null
fi
mkdir -p example
cd example
exec "../$VENV/bin/nanoBragg" -cell 70 80 90 75 85 95 -default_F 100 -N 5 -lambda 1.0 -distance 100 \
  -detpixels 512 -pixel 0.1 -misset 10 5 3 -mosaic 0.2 -mosaic_dom 5 \
  -floatfile example.bin -intfile example.img -noisefile example_noise.img -pgmfile example.pgm -seed 1 "$@"
