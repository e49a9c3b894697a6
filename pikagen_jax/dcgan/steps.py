"""The DCGAN's jitted training step: `loss.n_critic` discriminator (critic) updates, then one generator update.

    bce:      D: BCE(D(x), 1) + BCE(D(G(z)), 0), real and fake in separate batch-norm batches (as DCGAN)
              G: non-saturating BCE(D(G(z)), 1)
    wgan_gp:  C: E[C(G(z))] - E[C(x)] + 10 * gradient penalty (+ drift * E[C(x)^2]);  G: -E[C(G(z))]
              logged: the Wasserstein estimate, the penalty, the mean scores and `pair_distance` (see below)

A step consumes `n_critic` real batches (the loader's batch is n_critic x train.batch_size; each critic
update gets its own real batch and noise, as in WGAN-GP's Algorithm 1). The critic updates run in a
`lax.scan`, so the program compiles once whatever n_critic is. Noise comes from `fold_in(key(seed), step)`;
a step with a non-finite loss or gradient leaves every parameter and optimizer state unchanged.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from pikagen_jax.dcgan.state import DcganState
from pikagen_jax.losses.dcgan import (
    bce_discriminator_loss,
    bce_generator_loss,
    wgan_generator_loss,
    wgan_gp_critic_loss,
)
from pikagen_jax.training.guards import all_finite, restore_nodes_if_nonfinite, snapshot_state
from pikagen_jax.training.jitted_step import make_jitted_step
from pikagen_jax.training.mesh import Mesh

Metrics = dict[str, jax.Array]


def critic_batches(images: jax.Array, n_critic: int) -> jax.Array:
    """[n_critic * B, ...] -> [n_critic, B, ...]; batch i takes rows i, i + n, i + 2n, ... so that every
    device's contiguous block of the (data-sharded) input stays on that device."""
    if images.shape[0] % n_critic:
        raise ValueError(f"a step's batch of {images.shape[0]} is not n_critic={n_critic} equal batches")
    batch = images.shape[0] // n_critic
    return jnp.swapaxes(images.reshape(batch, n_critic, *images.shape[1:]), 0, 1)


def _discriminator_loss(disc: nnx.Module, real: jax.Array, fake: jax.Array, key: jax.Array,
                        config: ml_collections.ConfigDict) -> tuple[jax.Array, Metrics]:
    if config.loss.kind == "bce":
        real_logits, fake_logits = disc(real, train=True), disc(fake, train=True)
        return bce_discriminator_loss(real_logits, fake_logits), {
            "d_real_prob": jnp.mean(jax.nn.sigmoid(real_logits)), "d_fake_prob": jnp.mean(jax.nn.sigmoid(fake_logits))}
    loss, parts = wgan_gp_critic_loss(lambda x: disc(x, train=True), real, fake, key,
                                      gp_weight=config.loss.gp_weight, drift_weight=config.loss.drift_weight)
    # E||x_i - G(z_i)||_2 over the batch's (random) real-fake pairs: an upper bound d of the Wasserstein-1
    # distance, which a 1-Lipschitz critic's estimate cannot exceed (the soft penalty allows up to
    # (1 + d / (2 lambda)) d; see tests/test_dcgan_train.py).
    distance = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(real - fake), axis=(1, 2, 3))))
    return loss, {**parts, "pair_distance": distance}


def dcgan_step(state: DcganState, batch: dict[str, jax.Array], step: jax.Array,
               config: ml_collections.ConfigDict) -> Metrics:
    """Updates `state` in place for one step's batch; returns scalar metrics."""
    n_critic, latent_dim = int(config.loss.n_critic), config.model.latent_dim
    reals = critic_batches(batch["image"], n_critic)
    batch_size = reals.shape[1]
    key_d, key_g = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), step))
    old = snapshot_state(state)
    graph, variables = nnx.split((state.generator, state.discriminator, state.opt_d))

    def critic_update(carry, inputs):
        gen, disc, opt_d = nnx.merge(graph, carry)
        real, key = inputs
        key_z, key_penalty = jax.random.split(key)
        z = jax.random.normal(key_z, (batch_size, latent_dim), jnp.float32)
        fake = jax.lax.stop_gradient(gen(z, train=True))  # train mode: batch statistics, as in DCGAN
        grad_fn = nnx.value_and_grad(lambda d: _discriminator_loss(d, real, fake, key_penalty, config), has_aux=True)
        (loss, parts), grads = grad_fn(disc)
        opt_d.update(disc, grads)
        return nnx.state((gen, disc, opt_d)), ({"d_loss": loss, **parts, "grad_norm_d": optax.tree.norm(grads)},
                                               all_finite(grads))

    keys = jax.random.split(key_d, n_critic)
    variables, (d_metrics, d_grads_finite) = jax.lax.scan(critic_update, variables, (reals, keys))
    nnx.update((state.generator, state.discriminator, state.opt_d), variables)
    d_metrics = {name: jnp.mean(values) for name, values in d_metrics.items()}  # mean over the critic updates

    z = jax.random.normal(key_g, (batch_size, latent_dim), jnp.float32)

    def g_loss_fn(gen, disc):
        scores = disc(gen(z, train=True), train=True)
        loss = bce_generator_loss(scores) if config.loss.kind == "bce" else wgan_generator_loss(scores)
        return loss, jnp.mean(scores)

    grad_fn = nnx.value_and_grad(g_loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (g_loss, fake_score), g_grads = grad_fn(state.generator, state.discriminator)
    state.opt_g.update(state.generator, g_grads)
    finite = jnp.where(jnp.all(d_grads_finite), 0.0, jnp.nan)  # NaN marks a non-finite critic gradient
    skipped = restore_nodes_if_nonfinite((d_metrics["d_loss"], g_loss, finite, g_grads), old, state)
    return {**d_metrics, "g_loss": g_loss, "g_fake_score": fake_score, "grad_norm_g": optax.tree.norm(g_grads),
            "skipped": skipped.astype(jnp.int32)}


def make_train_step(state: DcganState, config: ml_collections.ConfigDict, mesh: Mesh
                    ) -> Callable[[dict[str, jax.Array], int], Metrics]:
    """The host callable `(sharded batch, step) -> metrics`: the jitted step on the donated, replicated state."""
    return make_jitted_step(state, lambda model, batch, step: dcgan_step(model, batch, step, config), mesh,
                            batch_keys=("image",))
