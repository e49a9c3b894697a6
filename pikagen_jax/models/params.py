"""Parameter counting for NNX modules (concrete or abstract, e.g. from `nnx.eval_shape`)."""

from __future__ import annotations

import jax
from flax import nnx


def count_params(module: nnx.Module, filter_=nnx.Param) -> int:
    """Number of scalars in `module`'s variables matching `filter_` (default: all `nnx.Param`s)."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, filter_)))
