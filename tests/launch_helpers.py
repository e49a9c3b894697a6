"""Helpers for end-to-end tests that train on the small real-data subsets (see conftest.small_data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from pikagen_jax.config_utils import load_config
from tests.conftest import REPO

# Tests build many small random-init networks: the non-partitionable threefry compiles them faster.
FAST_INIT_ENV = {**os.environ, "JAX_THREEFRY_PARTITIONABLE": "false", "JAX_PLATFORMS": "cpu"}


def kaggle_overrides(small_data: dict) -> list[str]:
    """Config overrides that point a config at the small Kaggle subset."""
    return [f"data.data_dir={small_data['data_dir']}", f"data.dataset={small_data['kaggle']}"]


def small_config(config: str, small_data: dict, *overrides: str):
    """`load_config(config)` on the small Kaggle subset, with extra 'key=value' overrides."""
    return load_config(config, kaggle_overrides(small_data) + list(overrides))


def launch(config: str, workdir: Path, small_data: dict) -> str:
    """Runs `launch.py --config=<config>` on the small Kaggle subset in a subprocess, as a user does; returns
    its log (stderr) and fails the test with the log's tail when it exits non-zero."""
    cmd = [sys.executable, "launch.py", f"--config={config}", f"--workdir={workdir}",
           *(f"--config.{item}" for item in kaggle_overrides(small_data))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=FAST_INIT_ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def as_numpy(leaf) -> np.ndarray:
    """A state leaf as numpy (PRNG keys as their key data), for exact comparisons of saved states."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf)
