"""The contrastive (InfoNCE) loss of the sprite-caption alignment encoder (CLIP's symmetric form).

    loss, parts = info_nce_loss(image_emb, text_emb, log_scale)

For a batch of N matching (image, caption) pairs with L2-normalised embeddings, logits = exp(log_scale) ·
image_emb · text_embᵀ; the loss is the mean of the cross-entropies of each image over the N captions and of
each caption over the N images, the matching pair being the target. With `groups` (e.g. the species of each
pair), another pair of the same group is not a negative: a batch drawn from several augmented views per species
may hold one species twice, and its other caption describes the image as well as its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def info_nce_loss(image_emb: Array, text_emb: Array, log_scale: Array | float, groups: Array | None = None
                  ) -> tuple[Array, dict[str, Array]]:
    """Symmetric InfoNCE of matching pairs (row i of each); embeddings [N, E], unit length; `groups` [N]: pairs
    of one group are left out of each other's negatives."""
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"InfoNCE needs [N, E] embeddings of one shape, got {image_emb.shape} and {text_emb.shape}")
    if image_emb.shape[0] < 2:
        raise ValueError("InfoNCE needs at least 2 pairs per batch (the other pairs are the negatives)")
    logits = jnp.exp(jnp.asarray(log_scale, jnp.float32)) * (image_emb.astype(jnp.float32)
                                                             @ text_emb.astype(jnp.float32).T)
    labels = jnp.arange(logits.shape[0])
    if groups is not None:
        same = (groups[:, None] == groups[None, :]) & (labels[:, None] != labels[None, :])
        logits = jnp.where(same, -jnp.inf, logits)
    image_to_text = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[labels, labels])
    text_to_image = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[labels, labels])
    loss = 0.5 * (image_to_text + text_to_image)
    accuracy = jnp.mean(jnp.argmax(logits, axis=1) == labels)
    return loss, {"info_nce": loss, "batch_top1": accuracy, "logit_scale": jnp.exp(jnp.asarray(log_scale))}
