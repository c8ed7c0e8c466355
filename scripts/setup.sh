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
.venv/bin/python -m pip install -q -e ".[test,ray]"  # ray: the optional --ray sweep backend, tested too
