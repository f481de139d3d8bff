#!/usr/bin/env bash
# Set up korani for development on a fresh machine: a virtual environment in
# .venv with korani and everything its tests need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
# llama-cpp-python compiles llama.cpp from source: use every core.
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install -e ".[dev]"
.venv/bin/korani --version
