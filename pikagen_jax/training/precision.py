"""The compute dtype every system derives from `train.mixed_precision` (parameters stay float32)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections


def compute_dtype(config: ml_collections.ConfigDict):
    """bfloat16 compute for `train.mixed_precision='bfloat16'`, else float32 (params are always float32)."""
    precision = config.train.mixed_precision
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"train.mixed_precision must be 'float32' or 'bfloat16', got {precision!r}")
    return jnp.bfloat16 if precision == "bfloat16" else jnp.float32
