"""The alignment encoder's training state: the trained heads and their AdamW (the frozen networks live apart)."""

from __future__ import annotations

import ml_collections
import optax
from flax import nnx

from pikagen_jax.training.alignment_scorer import build_heads

CHECKPOINT_ITEMS = ("heads", "opt")  # the frozen networks are rebuilt from their offline packages


class AlignmentState(nnx.Module):
    """Everything one alignment step reads or updates."""

    def __init__(self, config: ml_collections.ConfigDict, text_dim: int, *, rngs: nnx.Rngs):
        self.heads = build_heads(config, text_dim, rngs)
        o = config.optim
        self.opt = nnx.Optimizer(self.heads, optax.adamw(o.lr, weight_decay=o.weight_decay), wrt=nnx.Param)

    def checkpoint_items(self) -> dict:
        return {name: getattr(self, name) for name in CHECKPOINT_ITEMS}
