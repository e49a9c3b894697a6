"""The trained part of the sprite-caption alignment encoder (DAMSM-style, sentence level): two small MLPs that
map frozen pretrained features — the FID Inception-v3's pool3 features of a sprite, the masked mean of the text
backbone's token states for a caption — into one space, and the contrastive temperature.

    heads = AlignmentHeads(image_dim=2048, text_dim=384, embed_dim=256, rngs=nnx.Rngs(0))
    image_emb, text_emb = heads.embed_images(features), heads.embed_texts(pooled)   # unit length
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


class ProjectionMLP(nnx.Module):
    """LayerNorm -> Linear -> GELU -> dropout -> Linear, then L2 normalisation."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, *, dropout: float, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(in_dim, rngs=rngs)
        self.hidden = nnx.Linear(in_dim, hidden, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.out = nnx.Linear(hidden, out_dim, rngs=rngs)

    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        h = self.dropout(nnx.gelu(self.hidden(self.norm(x.astype(jnp.float32)))), deterministic=deterministic)
        y = self.out(h)
        return y * jax.lax.rsqrt(jnp.maximum(jnp.sum(y * y, axis=-1, keepdims=True), 1e-12))


class AlignmentHeads(nnx.Module):
    """Image and text projection MLPs and the learnable log logit scale (CLIP's, initialised to 1/0.07)."""

    def __init__(self, *, image_dim: int, text_dim: int, embed_dim: int = 256, hidden: int = 512,
                 dropout: float = 0.1, rngs: nnx.Rngs):
        self.image_head = ProjectionMLP(image_dim, hidden, embed_dim, dropout=dropout, rngs=rngs)
        self.text_head = ProjectionMLP(text_dim, hidden, embed_dim, dropout=dropout, rngs=rngs)
        self.log_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))

    def embed_images(self, features: Array, *, deterministic: bool = True) -> Array:
        return self.image_head(features, deterministic=deterministic)

    def embed_texts(self, pooled: Array, *, deterministic: bool = True) -> Array:
        return self.text_head(pooled, deterministic=deterministic)
