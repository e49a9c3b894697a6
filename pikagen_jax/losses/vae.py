"""VAE losses of seed 003 stage 1: L1 reconstruction + perceptual feature matching + KL divergence with
linear annealing (0 -> 0.1 over the first 20 epochs) and free bits (0.5 nats per latent dimension).

The perceptual term takes a pluggable feature extractor, `features_fn(images [B, S, S, 3] in [-1, 1]) ->
sequence of feature maps` (e.g. VGG16 relu1_2 ... relu4_3 loaded from a local file); it handles its own
input normalisation. With `features_fn=None` the term is left out.

    weight = kl_weight_schedule(epoch, warmup_epochs=20, max_weight=0.1)
    loss, parts = vae_loss(recon, images, mean, logvar, kl_weight=weight, features_fn=vgg_features)
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
FeaturesFn = Callable[[Array], Sequence[Array]]


def kl_divergence(mean: Array, logvar: Array) -> Array:
    """Elementwise KL( N(mean, exp(logvar)) || N(0, 1) ) in nats, same shape as mean."""
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def free_bits_kl(mean: Array, logvar: Array, free_bits: float = 0.5) -> tuple[Array, Array]:
    """KL with free bits (Kingma et al. 2016), per latent dimension.

    Every latent dimension (each position and channel of [B, h, w, C]) has its KL averaged over the batch
    and raised to at least `free_bits` nats; dimensions below the floor contribute the constant floor and
    no gradient, so the encoder is not pushed to collapse them onto the prior.

    Returns:
      (mean over dimensions of max(KL_dim, free_bits), mean over dimensions of the raw KL_dim).
    """
    if free_bits < 0:
        raise ValueError(f"free_bits must be >= 0, got {free_bits}")
    per_dim = jnp.mean(kl_divergence(mean, logvar), axis=0)
    return jnp.mean(jnp.maximum(per_dim, free_bits)), jnp.mean(per_dim)


def kl_weight_schedule(progress: float | Array, *, warmup_epochs: float = 20.0,
                       max_weight: float = 0.1) -> Array:
    """Linear KL annealing: max_weight * min(progress / warmup_epochs, 1) (0 at the start).

    `progress` is in epochs and may be fractional (step / steps_per_epoch); jit-friendly.
    """
    progress = jnp.asarray(progress, jnp.float32)
    if warmup_epochs <= 0:
        return jnp.full_like(progress, max_weight)
    return max_weight * jnp.clip(progress / warmup_epochs, 0.0, 1.0)


def perceptual_loss(features_fn: FeaturesFn, reconstruction: Array, target: Array) -> Array:
    """Mean over layers of the mean squared difference of features_fn's feature maps (target features
    are treated as constants)."""
    fake_features = features_fn(reconstruction)
    real_features = features_fn(target)
    if len(fake_features) == 0 or len(fake_features) != len(real_features):
        raise ValueError("features_fn must return the same non-empty sequence of feature maps for every input")
    terms = [jnp.mean(jnp.square(f.astype(jnp.float32) - jax.lax.stop_gradient(r).astype(jnp.float32)))
             for f, r in zip(fake_features, real_features)]
    return sum(terms) / len(terms)


def vae_loss(reconstruction: Array, target: Array, mean: Array, logvar: Array, *, kl_weight: float | Array,
             free_bits: float = 0.5, features_fn: FeaturesFn | None = None, perceptual_weight: float = 1.0,
             l1_weight: float = 1.0) -> tuple[Array, dict[str, Array]]:
    """l1_weight * L1 + perceptual_weight * perceptual (if features_fn) + kl_weight * free-bits KL.

    Args:
      reconstruction, target: images [B, S, S, 3] in [-1, 1].
      mean, logvar: posterior moments [B, h, w, C].
      kl_weight: current KL weight (see kl_weight_schedule).
      free_bits: per-dimension KL floor in nats.
      features_fn: feature extractor for the perceptual term; None leaves the term out.

    Returns:
      (loss, {'l1', 'perceptual', 'kl' (raw, nats per dim), 'kl_free_bits', 'kl_weight'}).
    """
    if reconstruction.shape != target.shape:
        raise ValueError(f"reconstruction {reconstruction.shape} and target {target.shape} shapes differ")
    l1 = jnp.mean(jnp.abs(reconstruction.astype(jnp.float32) - target.astype(jnp.float32)))
    perceptual = (perceptual_loss(features_fn, reconstruction, target) if features_fn is not None
                  else jnp.zeros((), jnp.float32))
    kl_clamped, kl_raw = free_bits_kl(mean, logvar, free_bits)
    kl_weight = jnp.asarray(kl_weight, jnp.float32)
    loss = l1_weight * l1 + perceptual_weight * perceptual + kl_weight * kl_clamped
    return loss, {"l1": l1, "perceptual": perceptual, "kl": kl_raw, "kl_free_bits": kl_clamped,
                  "kl_weight": kl_weight}
