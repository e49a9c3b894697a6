"""The XLA:CPU flags the package sets on import: which, when not, and that XLA accepts them."""

from __future__ import annotations

import os
import subprocess
import sys

from pikagen_jax.xla_defaults import DEFAULT_FLAGS, default_flags
from tests.conftest import REPO


def test_default_flags_added_kept_or_skipped():
    assert default_flags("", "0.10.2") == " ".join(DEFAULT_FLAGS)
    assert default_flags("--xla_cpu_multi_thread_eigen=false", "0.10.2").split() == [
        "--xla_cpu_multi_thread_eigen=false", *DEFAULT_FLAGS]
    user = "--xla_cpu_experimental_ynn_fusion_type="  # the user's own YNNPACK choice wins
    assert default_flags(user, "0.10.2") == user
    assert default_flags("", "0.11.0") == ""  # not measured with that jaxlib: an unknown flag would abort XLA
    assert default_flags("--foo", "0.10.2", opt_out="0") == "--foo"


def test_import_sets_flags_that_xla_accepts_and_opt_out():
    code = ("import os, pikagen_jax, jax, jax.numpy as jnp; "
            "x = jnp.ones((1, 8, 8, 2)); k = jnp.ones((3, 3, 2, 4)); "
            "y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')); "
            "print(os.environ.get('XLA_FLAGS', '')); print(float(y[0, 4, 4, 0]))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PIKAGEN_JAX_XLA_DEFAULTS")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    flags, value = out.stdout.split("\n")[:2]
    assert flags.split() == list(DEFAULT_FLAGS) and float(value) == 18.0  # 3·3 taps × 2 channels of ones
    env["PIKAGEN_JAX_XLA_DEFAULTS"] = "0"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split("\n")[0] == "", out.stderr[-2000:]
