"""Parameter counting for NNX modules (concrete or abstract, e.g. from `nnx.eval_shape`), and the variable
type of frozen pretrained weights."""

from __future__ import annotations

import jax
from flax import nnx


class Pretrained(nnx.Variable):
    """A frozen weight loaded from a pretrained package when the model is built: not an `nnx.Param`, so it
    gets no optimizer state and no parameter gradient, and checkpoints leave it out (it is loaded again)."""


def count_params(module: nnx.Module, filter_=nnx.Param) -> int:
    """Number of scalars in `module`'s variables matching `filter_` (default: all `nnx.Param`s)."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, filter_)))
