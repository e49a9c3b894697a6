"""Losses of the seed 000/001 model: pixel L1, CLIP alignment loss, and their sum (seed 000 §2.3.2, §3.3).

The CLIP embeddings come from the caller (a CLIP image/text model is a separate component); this module
holds the loss arithmetic and CLIP's image preprocessing, so that generated images in [−1, 1] can be fed
to a CLIP image tower differentiably.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
COSINE_EPS = 1e-8


def l1_loss(pred: Array, target: Array) -> Array:
    """Mean absolute error over all elements (float32 scalar)."""
    if pred.shape != target.shape:
        raise ValueError(f"L1 loss needs equal shapes, got pred {pred.shape} and target {target.shape}")
    return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def cosine_similarity(a: Array, b: Array) -> Array:
    """Row-wise cosine similarity of [B, E] embeddings -> [B] (float32)."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    dot = jnp.sum(a * b, axis=-1)
    return dot / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), COSINE_EPS)


def clip_loss(image_emb: Array, text_emb: Array) -> Array:
    """mean(1 − cos(image_emb, text_emb)) over the batch; embeddings [B, E] (need not be normalised)."""
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"CLIP loss needs [batch, dim] embeddings of equal shape, got image {image_emb.shape} "
                         f"and text {text_emb.shape}")
    return jnp.mean(1.0 - cosine_similarity(image_emb, text_emb))


def combined(pred: Array, target: Array, image_emb: Array, text_emb: Array, lam: float) -> Array:
    """L1(pred, target) + lam · CLIP(image_emb, text_emb) (the seed's proposed L1 + CLIP loss)."""
    return l1_loss(pred, target) + lam * clip_loss(image_emb, text_emb)


def clip_image_preprocess(images: Array, size: int = 224) -> Array:
    """CLIP's image preprocessing on NHWC images in [−1, 1] -> normalised [B, size, size, 3] float32.

    As OpenAI/Hugging Face CLIP: bicubic resize of the shorter side to `size`, centre crop to size×size,
    values in [0, 1] (clipped, as after PIL's 8-bit resize), then (x − CLIP_MEAN) / CLIP_STD. Differentiable.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be NHWC RGB [batch, height, width, 3], got shape {images.shape}")
    batch, height, width, _ = images.shape
    short, long = min(height, width), max(height, width)
    long_resized = int(size * long / short)
    new_h, new_w = (size, long_resized) if height <= width else (long_resized, size)
    x = (images.astype(jnp.float32) + 1.0) / 2.0
    if (new_h, new_w) != (height, width):
        x = jax.image.resize(x, (batch, new_h, new_w, 3), method="bicubic", antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = jnp.clip(x[:, top:top + size, left:left + size], 0.0, 1.0)
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
