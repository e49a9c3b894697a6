"""Losses of the DF-GAN-style cGAN (seed 002, section 3.4): hinge losses and the matching-aware gradient penalty.

All functions are pure and return `(loss, parts)`, where `parts` is a dict of float32 scalars to log.

    L_D = mean(relu(1 - D(x, s))) + ½ mean(relu(1 + D(G(z, s), s))) + ½ mean(relu(1 + D(x, s_mis)))
          + λ · mean(||[∇_x D(x, s), ∇_s D(x, s)]||₂⁶)                      (λ = 1.5 in the seed)
    L_G = -mean(D(G(z, s), s))

Mismatched text is the batch's sentence embeddings rolled by one (`mismatched_sentences`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
LossParts = dict[str, Array]


def mismatched_sentences(sentence: Array) -> Array:
    """Pairs each example with another example's text: the batch rolled by one along axis 0."""
    if sentence.shape[0] < 2:
        raise ValueError(f"mismatched text needs a batch of at least 2 examples, got {sentence.shape[0]}")
    return jnp.roll(sentence, 1, axis=0)


def d_hinge_loss(real_logits: Array, fake_logits: Array, mismatch_logits: Array) -> tuple[Array, LossParts]:
    """Discriminator hinge loss on (real, matching text), (fake, matching text) and (real, mismatched text)."""
    real = jnp.mean(jax.nn.relu(1.0 - real_logits.astype(jnp.float32)))
    fake = jnp.mean(jax.nn.relu(1.0 + fake_logits.astype(jnp.float32)))
    mismatch = jnp.mean(jax.nn.relu(1.0 + mismatch_logits.astype(jnp.float32)))
    loss = real + 0.5 * fake + 0.5 * mismatch
    return loss, {"d_hinge": loss, "d_real": real, "d_fake": fake, "d_mismatch": mismatch}


def g_hinge_loss(fake_logits: Array) -> tuple[Array, LossParts]:
    """Generator hinge loss: -mean(D(G(z, s), s))."""
    loss = -jnp.mean(fake_logits.astype(jnp.float32))
    return loss, {"g_adv": loss}


def ma_gp(d_apply: Callable[[Array, Array], Array], images: Array, sentence: Array, *, weight: float = 1.5,
          power: float = 6.0, eps: float = 1e-12, include_text: bool = True) -> tuple[Array, LossParts]:
    """DF-GAN's matching-aware gradient penalty on real images with their matching text.

    `weight * mean_b(||g_b||₂ ** power)` with g_b = [∂D/∂x_b, ∂D/∂s_b] flattened and concatenated per
    example, as in DF-GAN's `MA_GP` (there: weight 2, power 6). Inputs are cast to float32; `d_apply` should
    compute in float32 too (e.g. `lambda x, s: disc(x, s, update_stats=False, compute_dtype=jnp.float32)`)
    and must not mutate module state (it runs inside `jax.vjp`). Examples must be independent in `d_apply`
    (no batch statistics), so the gradient of the summed logits gives per-example gradients.

    The penalty is computed from the squared norm, `(Σ g²) ** (power / 2)`, which is exact and has a finite
    (zero) gradient where g = 0 for power >= 2; for power < 2, `eps` is added to Σ g² to keep it finite.

    Args:
      d_apply: (images [B, H, W, 3], sentence [B, D]) -> logits [B].
      images, sentence: the real batch and its matching sentence embeddings.
      include_text: False drops ∂D/∂s from g_b (the image gradient only; DF-GAN penalises both).
    Returns:
      (penalty, {"ma_gp": penalty, "ma_gp_grad_norm": mean_b ||g_b||₂ (no gradient)}).
    """
    penalty, parts, _, _ = ma_gp_with_logits(lambda x, s: (d_apply(x, s), None), images, sentence,
                                             weight=weight, power=power, eps=eps, include_text=include_text)
    return penalty, parts


def ma_gp_with_logits(d_apply: Callable[[Array, Array], tuple[Array, Any]], images: Array, sentence: Array, *,
                      weight: float = 1.5, power: float = 6.0, eps: float = 1e-12, include_text: bool = True
                      ) -> tuple[Array, LossParts, Array, Any]:
    """`ma_gp` that also hands back the forward pass it differentiates, so the hinge loss can reuse it.

    `d_apply(images, sentence) -> (logits [B], aux)`; returns `(penalty, parts, logits, aux)`. Both
    `logits` and `aux` (e.g. the discriminator's image features) stay differentiable with respect to the
    discriminator's parameters, which is what DF-GAN does with `pred_real` (one forward pass of D on the
    real batch serves the hinge term and the penalty).
    """
    if power <= 0:
        raise ValueError(f"MA-GP power must be positive, got {power}")
    images = images.astype(jnp.float32)
    sentence = sentence.astype(jnp.float32)

    def logits_fn(x, s):
        logits, aux = d_apply(x, s)
        return logits.astype(jnp.float32), aux

    logits, vjp, aux = jax.vjp(logits_fn, images, sentence, has_aux=True)
    if logits.shape != (images.shape[0],):
        raise ValueError(f"d_apply must return one logit per example, shape ({images.shape[0]},), "
                         f"got {logits.shape}")
    grad_images, grad_sentence = vjp(jnp.ones_like(logits))
    squared_norm = jnp.sum(jnp.square(grad_images).reshape(images.shape[0], -1), axis=1)
    if include_text:
        squared_norm = squared_norm + jnp.sum(jnp.square(grad_sentence).reshape(sentence.shape[0], -1), axis=1)
    half_power = power / 2.0
    if half_power >= 1.0 and float(half_power).is_integer():
        norm_pow = squared_norm ** int(half_power)
    elif half_power >= 1.0:
        norm_pow = squared_norm ** half_power
    else:
        norm_pow = (squared_norm + eps) ** half_power
    penalty = weight * jnp.mean(norm_pow)
    grad_norm = jnp.mean(jnp.sqrt(jax.lax.stop_gradient(squared_norm)))
    return penalty, {"ma_gp": penalty, "ma_gp_grad_norm": grad_norm}, logits, aux
