"""Losses of the unconditional GAN of seed 004: DCGAN binary cross-entropy and WGAN-GP.

BCE (Goodfellow et al. 2014, DCGAN): D minimises BCE(D(x), 1) + BCE(D(G(z)), 0) on logits; G minimises the
non-saturating BCE(D(G(z)), 1) = -log sigmoid(D(G(z))).

WGAN-GP (Gulrajani et al. 2017): the critic minimises E[C(G(z))] - E[C(x)] + lambda E[(||grad C(x_hat)||_2 - 1)^2]
with x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per sample, lambda = 10; G minimises -E[C(G(z))].

Why the seed's WGAN diverged, and what differs here. Its log (seed 004, Figure 11) shows the critic's
scores drifting linearly and without bound in opposite directions, D(x) 23.5 -> 56.6 and D(G(z)) -23.5 ->
-54.3 within two epochs, with noise as output. The printed Loss_G equals D(G(z)) after the G step, i.e.
the generator minimised +C(G(z)) (the wrong sign: it should minimise -C(G(z))), so generator and critic
pushed the fake score the same way and nothing opposed the drift (the printed Loss_D, D(x) + D(G(z)),
is no Wasserstein estimate either); and no Lipschitz constraint (neither weight clipping nor
a gradient penalty) bounded the critic, whose scale could grow freely. Its critic was the DCGAN
discriminator, with batch norm. Here: G loss -E[C(G(z))] (`wgan_generator_loss`); a gradient penalty
lambda = 10 on random interpolates (`gradient_penalty`), computed in float32 per sample; a critic without
batch norm (`Discriminator(norm='layer' | 'none')`, which the per-sample penalty requires); the WGAN-GP
paper's optimiser and schedule, `WGAN_GP_RECOMMENDED` (Adam lr 1e-4, betas (0, 0.9) or (0.5, 0.9),
n_critic = 5 critic steps per G step); and an optional drift term eps_drift E[C(x)^2] (Karras et al. 2018)
that keeps the critic's offset near 0.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

# Hyper-parameters of WGAN-GP (Gulrajani et al. 2017, Algorithm 1) for configs/dcgan.py.
WGAN_GP_RECOMMENDED = {"learning_rate": 1e-4, "b1": 0.0, "b2": 0.9, "n_critic": 5, "gp_weight": 10.0}
# DCGAN (Radford et al. 2016): Adam lr 2e-4, betas (0.5, 0.999), one D step per G step.
DCGAN_RECOMMENDED = {"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999, "n_critic": 1}


def bce_discriminator_loss(real_logits: Array, fake_logits: Array) -> Array:
    """BCE(real, 1) + BCE(fake, 0) on logits = mean softplus(-real) + mean softplus(fake)."""
    real_logits, fake_logits = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def bce_generator_loss(fake_logits: Array) -> Array:
    """Non-saturating generator loss BCE(fake, 1) = mean softplus(-fake) = -mean log sigmoid(fake)."""
    return jnp.mean(jax.nn.softplus(-fake_logits.astype(jnp.float32)))


def wgan_critic_loss(real_scores: Array, fake_scores: Array) -> Array:
    """Wasserstein critic loss E[C(fake)] - E[C(real)] (without the penalty)."""
    return jnp.mean(fake_scores.astype(jnp.float32)) - jnp.mean(real_scores.astype(jnp.float32))


def wgan_generator_loss(fake_scores: Array) -> Array:
    """Wasserstein generator loss -E[C(G(z))]."""
    return -jnp.mean(fake_scores.astype(jnp.float32))


def interpolate(real: Array, fake: Array, key: Array) -> Array:
    """x_hat = eps real + (1 - eps) fake with one eps ~ U[0, 1] per sample (float32)."""
    if real.shape != fake.shape:
        raise ValueError(f"real {real.shape} and fake {fake.shape} batches must have the same shape")
    eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), jnp.float32)
    return eps * real.astype(jnp.float32) + (1.0 - eps) * fake.astype(jnp.float32)


def gradient_penalty(critic_fn: Callable[[Array], Array], real: Array, fake: Array, key: Array, *,
                     weight: float = 10.0) -> Array:
    """weight * mean over samples of (||d critic(x_hat) / d x_hat||_2 - 1)^2 on random interpolates.

    critic_fn maps images [B, ...] to scores [B] and must treat samples independently (no batch norm):
    the per-sample gradients are taken as the gradient of the summed scores. Fake images are treated
    as constants.
    """
    x_hat = interpolate(real, jax.lax.stop_gradient(fake), key)
    grads = jax.grad(lambda x: jnp.sum(critic_fn(x).astype(jnp.float32)))(x_hat)
    norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1) + 1e-12)
    return weight * jnp.mean(jnp.square(norms - 1.0))


def wgan_gp_critic_loss(critic_fn: Callable[[Array], Array], real: Array, fake: Array, key: Array, *,
                        gp_weight: float = 10.0, drift_weight: float = 0.0) -> tuple[Array, dict[str, Array]]:
    """Full WGAN-GP critic objective: E[C(fake)] - E[C(real)] + gradient penalty (+ drift E[C(real)^2]).

    Returns:
      (loss, {'wasserstein': E[C(real)] - E[C(fake)], 'gradient_penalty', 'drift', 'real_score': E[C(real)],
      'fake_score': E[C(fake)]}).
    """
    real_scores = critic_fn(real).astype(jnp.float32)
    fake_scores = critic_fn(jax.lax.stop_gradient(fake)).astype(jnp.float32)
    penalty = gradient_penalty(critic_fn, real, fake, key, weight=gp_weight)
    drift = jnp.mean(jnp.square(real_scores))
    loss = wgan_critic_loss(real_scores, fake_scores) + penalty + drift_weight * drift
    return loss, {"wasserstein": jnp.mean(real_scores) - jnp.mean(fake_scores), "gradient_penalty": penalty,
                  "drift": drift, "real_score": jnp.mean(real_scores), "fake_score": jnp.mean(fake_scores)}
