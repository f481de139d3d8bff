#!/usr/bin/env bash
# Set up korani for development on a fresh machine: a virtual environment in
# .venv holding exactly the locked versions in requirements/ (the environment CI
# tests), and korani itself in editable mode. Safe to run again: it brings an
# existing .venv back to the lock, removing what the lock does not list.
#
# The lock is for CPython 3.11 on x86_64 Linux. torch is its CPU build; on a CUDA
# machine install a CUDA build of the same torch version into .venv first and it
# is kept (README, "GPU users"). To move the lock: tools/lock.sh.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
# llama-cpp-python compiles llama.cpp from source: use every core.
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
PIP=("$PY" -m pip --disable-pip-version-check)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/korani-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# 1. pip itself, as locked (--build-constraint below needs a recent pip)
"$PY" tools/lock.py only pip > "$TMP/pip.txt"
"${PIP[@]}" install --quiet --require-hashes --no-deps -r "$TMP/pip.txt"
# 2. torch: the locked CPU build, unless this version is already there (a CUDA build)
"$PY" tools/lock.py has-torch || "${PIP[@]}" install --require-hashes --no-deps -r requirements/torch-cpu.txt
# 3. everything else, exactly as locked; the sdists build with pinned build tools
"${PIP[@]}" install --require-hashes --no-deps --build-constraint requirements/build-constraints.txt \
    -r requirements/lock.txt
# 4. korani itself, built with the locked setuptools
"${PIP[@]}" install --quiet --no-deps --no-build-isolation -e .
# 5. nothing else: what an earlier install or a hand left behind goes
extras=$("$PY" tools/lock.py extras)
if [ -n "$extras" ]; then
    echo "removing packages the lock does not list: $(echo $extras)"
    "${PIP[@]}" uninstall --quiet --yes $extras
fi
"${PIP[@]}" check
"$PY" tools/lock.py check
.venv/bin/korani --version
