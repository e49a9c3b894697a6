"""The trained part of the sprite-caption alignment encoder (DAMSM-style, sentence level): two small MLPs that
map frozen pretrained features — the FID Inception-v3's pool3 features of a sprite, the masked mean of the text
backbone's token states for a caption — into one space, and the contrastive temperature. With `model.colour_bins`
the image side also gets a foreground colour histogram (`colour_histogram_features`), beside pool3.

    heads = AlignmentHeads(image_dim=2048, text_dim=384, embed_dim=256, rngs=nnx.Rngs(0))
    image_emb, text_emb = heads.embed_images(features), heads.embed_texts(pooled)   # unit length
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.data.colours import BACKGROUND_MIN  # the white background, as the colour metrics see it

Array = jax.Array


def colour_histogram_features(images: Array, bins: int) -> Array:
    """Colour features of sprites [B, H, W, 3] in [-1, 1]: the share of the non-background pixels in each of
    `bins`³ RGB cells, and the foreground's share of the image -> [B, bins³ + 1] float32.

    Inception-v3's pool3 features are trained to be nearly colour-blind (ImageNet classes do not change with
    hue), while captions and types name colours ("blue", "Fire"); these features keep what pool3 drops."""
    rgb = jnp.clip((images.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)
    foreground = jnp.any(rgb < BACKGROUND_MIN, axis=-1).astype(jnp.float32)  # [B, H, W]
    cell = jnp.minimum(jnp.floor(rgb * bins), bins - 1).astype(jnp.int32)
    index = (cell[..., 0] * bins + cell[..., 1]) * bins + cell[..., 2]
    counts = jnp.einsum("bhwc,bhw->bc", jax.nn.one_hot(index, bins ** 3, dtype=jnp.float32), foreground)
    pixels = jnp.sum(foreground, axis=(1, 2))
    shares = counts / jnp.maximum(pixels, 1.0)[:, None]
    return jnp.concatenate([shares, (pixels / (images.shape[1] * images.shape[2]))[:, None]], axis=-1)


def colour_feature_dim(bins: int) -> int:
    """Width of `colour_histogram_features` (0 when `bins` is 0: no colour features)."""
    return bins ** 3 + 1 if bins else 0


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
