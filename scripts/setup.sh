#!/usr/bin/env bash
# Set up a local virtual environment with everything comptune needs (CPU torch).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# the CPU wheel of torch 2.13.0 (an unpinned torch would pull a multi-GB CUDA build);
# the project itself only asks for a range
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,ray,autointerp]"  # ray, autointerp: optional backends, tested too
# headless Chromium for the browser tests of `comptune browse` (Debian's package; needs root or sudo)
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; }; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: no chromium and no way to install it here (apt-get as root); the browser tests will be skipped" >&2
  fi
fi
