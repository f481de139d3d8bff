#!/usr/bin/env bash
# Refresh the lock on purpose: resolve pyproject.toml's ranges (the dev extra, which
# pulls in every other) to today's newest releases with pip-tools, hashes included,
# and write
#   requirements/lock.txt               every dependency but torch, exact, hashed
#   requirements/torch-cpu.txt          torch, the CPU build (GPU users bring a CUDA build)
#   requirements/build-constraints.txt  what building the sdists installs
# Then run ./install.sh and the test suite before committing the new files.
#
#   tools/lock.sh                 every package to the newest release the ranges allow
#   tools/lock.sh NAME [NAME…]    only these move (pip-compile's --upgrade-package NAME or NAME==VER)
#
# Made for CPython 3.11 on x86_64 Linux (the machines CI runs on); pip resolves,
# so pip's own configuration (find-links, constraints) applies as at install time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TOOLS=$(mktemp -d "${TMPDIR:-/tmp}/korani-lock.XXXXXX")
trap 'rm -rf "$TOOLS"' EXIT
"$PYTHON" -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/python" -m pip install --quiet "pip-tools==7.7.0"
upgrade=(--upgrade)
if [ $# -gt 0 ]; then upgrade=(); for spec in "$@"; do upgrade+=(--upgrade-package "$spec"); done; fi
# The current lock (torch included) is the starting point, so only what is asked moves.
cat requirements/lock.txt requirements/torch-cpu.txt > "$TOOLS/previous.txt" 2>/dev/null || true
"$TOOLS/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras --extra dev \
    --no-emit-index-url --no-emit-find-links "${upgrade[@]}" \
    --output-file "$TOOLS/previous.txt" pyproject.toml
"$TOOLS/venv/bin/python" tools/lock.py split "$TOOLS/previous.txt"
"$TOOLS/venv/bin/pip-compile" --quiet --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
    --constraint requirements/lock.txt "${upgrade[@]}" \
    --output-file requirements/build-constraints.txt requirements/build.in
echo "lock refreshed: now ./install.sh && .venv/bin/python -m pytest, then commit requirements/"
