"""The alignment encoder's training state: frozen FID Inception-v3 and text backbone, trained heads, AdamW."""

from __future__ import annotations

import ml_collections
import optax
from flax import nnx

from pikagen_jax.training.alignment_scorer import build_frozen_networks, build_heads

CHECKPOINT_ITEMS = ("heads", "opt")  # the frozen networks are rebuilt from their offline packages


class AlignmentState(nnx.Module):
    """Everything one alignment step reads or updates; only `heads` trains."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.inception, self.backbone = build_frozen_networks(config)
        self.heads = build_heads(config, self.backbone.config.hidden_size, rngs)
        o = config.optim
        self.opt = nnx.Optimizer(self.heads, optax.adamw(o.lr, weight_decay=o.weight_decay), wrt=nnx.Param)

    def checkpoint_items(self) -> dict:
        return {name: getattr(self, name) for name in CHECKPOINT_ITEMS}
