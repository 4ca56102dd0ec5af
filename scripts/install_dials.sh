#!/usr/bin/env bash
# Install DIALS (with dxtbx) from the distribution's package when dials.import is missing.
# Debian/Ubuntu: apt-get install dials (needs root, or sudo without a password).
set -euo pipefail
if command -v dials.import >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_dials.sh: no apt-get here; install DIALS (https://dials.github.io) by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo -n"
fi
for attempt in 1 2 3; do
    if $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dials; then
        break
    fi
    echo "install_dials.sh: apt-get failed (attempt $attempt), retrying" >&2
    sleep $((attempt * 10))
done
command -v dials.import >/dev/null 2>&1 || { echo "install_dials.sh: dials.import still missing" >&2; exit 1; }
