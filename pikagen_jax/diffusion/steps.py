"""The jitted training steps of the three latent-diffusion stages (see `pikagen_jax.diffusion.state`).

    vae:   L1(x, D(z)) + w_p * perceptual(x, D(z)) + kl_weight(epoch) * free-bits KL,  z ~ q(z | x)
    unet:  Huber(eps, U(sqrt(ab_t) z + sqrt(1 - ab_t) eps, t, text or null)),  z = scale * sample of q(z | x),
           clamped to +-latent_clip; the EMA U-Net follows
    text:  Huber eps-loss through the frozen EMA U-Net + recon_weight * L1(x, D(mean of q(z | x), text))

Randomness comes from `fold_in(fold_in(key(seed), stage), step)`, so a resumed stage draws the same numbers.
A step whose loss or gradients are not finite leaves the trained network and its optimizer unchanged
(`skipped` = 1). `grad_norm` is the norm before clipping; `lr` the scheduled learning rate.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from pikagen_jax.diffusion.schedule import NoiseSchedule, denoising_loss, make_schedule
from pikagen_jax.diffusion.state import STAGES, DiffusionState, learning_rate_schedule
from pikagen_jax.losses.vae import kl_weight_schedule, vae_loss
from pikagen_jax.training.ema import ema_update, warmup_decay
from pikagen_jax.training.guards import restore_nodes_if_nonfinite, snapshot_state
from pikagen_jax.training.jitted_step import make_jitted_step
from pikagen_jax.training.mesh import Mesh

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
BATCH_KEYS = ("image", "token_ids", "attention_mask")


def stage_key(config: ml_collections.ConfigDict, stage: str, step: jax.Array) -> jax.Array:
    """The PRNG key of one step of one stage."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), STAGES.index(stage)), step)


def frozen_text(state: DiffusionState, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Token embeddings [B, T, D] of the batch's text (no gradient) and the attention mask."""
    tokens, _ = state.text_encoder(batch["token_ids"], batch["attention_mask"])
    return jax.lax.stop_gradient(tokens), batch["attention_mask"]


def scaled_latents(state: DiffusionState, images: jax.Array, key: jax.Array | None,
                   config: ml_collections.ConfigDict) -> jax.Array:
    """Diffusion-space latents: a posterior sample (or the mean, key None) times the latent scale,
    clamped to +-unet.latent_clip (the seed's latent range clamp). No gradient."""
    z = state.vae.encode_latents(images, key) * state.latent_stats.scale[...]
    return jax.lax.stop_gradient(jnp.clip(z, -config.unet.latent_clip, config.unet.latent_clip))


def noise_schedule(config: ml_collections.ConfigDict) -> NoiseSchedule:
    """The configured noise schedule (`diffusion.schedule`, `diffusion.num_timesteps`)."""
    return make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)


def _finish(loss: jax.Array, parts: Metrics, grads, old, nodes, lr: jax.Array) -> Metrics:
    skipped = restore_nodes_if_nonfinite((loss, grads), old, *nodes)
    return {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads), "lr": lr,
            "skipped": skipped.astype(jnp.int32)}


def vae_step(state: DiffusionState, batch: Batch, step: jax.Array, config: ml_collections.ConfigDict,
             steps_per_epoch: int) -> Metrics:
    """One VAE update; KL weight annealed linearly over `vae.kl_warmup_epochs` (fractional epochs)."""
    v = config.vae
    images = batch["image"]
    key = stage_key(config, "vae", step)
    context, context_mask = frozen_text(state, batch) if v.text_conditioned else (None, None)
    kl_weight = kl_weight_schedule(step / steps_per_epoch, warmup_epochs=v.kl_warmup_epochs,
                                   max_weight=v.kl_max_weight)
    old = snapshot_state(state.vae, state.opt_vae)

    def loss_fn(vae):
        recon, mean, logvar = vae(images, key, context, context_mask)
        loss, parts = vae_loss(recon, images, mean, logvar, kl_weight=kl_weight, free_bits=v.free_bits,
                               features_fn=state.perceptual, perceptual_weight=v.perceptual_weight,
                               l1_weight=v.l1_weight)
        return loss, {**parts, "latent_std": jnp.std(mean)}

    (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(state.vae)
    state.opt_vae.update(state.vae, grads)
    lr = learning_rate_schedule(config.stages.vae, config.train.num_steps)(step)
    return _finish(loss, parts, grads, old, (state.vae, state.opt_vae), lr)


def unet_step(state: DiffusionState, batch: Batch, step: jax.Array, config: ml_collections.ConfigDict) -> Metrics:
    """One U-Net update on text-conditioned latents (text dropped with prob `unet.cond_drop_prob`), then EMA."""
    u = config.unet
    key_latent, key_loss = jax.random.split(stage_key(config, "unet", step))
    tokens, mask = frozen_text(state, batch)
    latents = scaled_latents(state, batch["image"], key_latent, config)
    schedule = noise_schedule(config)
    old = snapshot_state(state.unet, state.opt_unet)

    def loss_fn(unet):
        return denoising_loss(unet, schedule, latents, tokens, mask, key_loss, cond_drop_prob=u.cond_drop_prob,
                              huber_delta=u.huber_delta, deterministic=False)

    (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(state.unet)
    state.opt_unet.update(state.unet, grads)
    lr = learning_rate_schedule(config.stages.unet, config.train.num_steps)(step)
    metrics = _finish(loss, parts, grads, old, (state.unet, state.opt_unet), lr)
    decay = jnp.where(metrics["skipped"] > 0, 1.0, warmup_decay(step, u.ema_decay))
    ema_update(state.ema_unet, state.unet, decay)
    return {**metrics, "ema_decay": decay}


def text_step(state: DiffusionState, batch: Batch, step: jax.Array, config: ml_collections.ConfigDict) -> Metrics:
    """One text-encoder update through the frozen EMA U-Net (and the frozen text-conditioned decoder)."""
    u, weight = config.unet, config.stages.text.recon_weight
    key_latent, key_loss = jax.random.split(stage_key(config, "text", step))
    images, ids, mask = batch["image"], batch["token_ids"], batch["attention_mask"]
    latents = scaled_latents(state, images, key_latent, config)
    mean = jax.lax.stop_gradient(state.vae.encode(images)[0])
    schedule = noise_schedule(config)
    unet_graph, unet_vars = nnx.split(state.ema_unet)
    vae_graph, vae_vars = nnx.split(state.vae)
    old = snapshot_state(state.text_encoder, state.opt_text)

    def loss_fn(text):
        tokens, _ = text(ids, mask)
        unet = nnx.merge(unet_graph, unet_vars)
        denoise, parts = denoising_loss(unet, schedule, latents, tokens, mask, key_loss, cond_drop_prob=0.0,
                                        huber_delta=u.huber_delta, deterministic=True)
        parts = {"denoise": denoise, "mse": parts["mse"]}
        if not config.vae.text_conditioned:
            return denoise, parts
        recon = nnx.merge(vae_graph, vae_vars).decode(mean, tokens, mask)
        recon_l1 = jnp.mean(jnp.abs(recon - images.astype(jnp.float32)))
        return denoise + weight * recon_l1, {**parts, "recon_l1": recon_l1}

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, state.text_filter), has_aux=True)
    (loss, parts), grads = grad_fn(state.text_encoder)
    state.opt_text.update(state.text_encoder, grads)
    lr = learning_rate_schedule(config.stages.text, config.train.num_steps)(step)
    return _finish(loss, parts, grads, old, (state.text_encoder, state.opt_text), lr)


def make_train_step(state: DiffusionState, config: ml_collections.ConfigDict, mesh: Mesh, *,
                    steps_per_epoch: int = 1) -> Callable[[Batch, int], Metrics]:
    """The host callable `(sharded batch, step) -> metrics` of `state.stage`, jitted with donated state."""
    if state.stage == "vae":
        def step_fn(model, batch, step):
            return vae_step(model, batch, step, config, steps_per_epoch)
    else:
        inner = unet_step if state.stage == "unet" else text_step

        def step_fn(model, batch, step):
            return inner(model, batch, step, config)
    return make_jitted_step(state, step_fn, mesh, batch_keys=BATCH_KEYS)
