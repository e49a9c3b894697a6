"""The GAN's jitted training step: one discriminator update, then one generator (+ text encoder) update.

    D:  hinge(real) + ½ hinge(fake) + ½ hinge(real, mismatched text) + MA-GP (float32)
    G:  −D(G(z, s), s); the partially fine-tuned text encoder is trained through this loss (lr 2e-5)

Randomness comes from `fold_in(key(seed), step)`, so a resumed run draws the same noise. A step whose
losses or gradients are not finite leaves every parameter and optimizer state unchanged (`skipped`=1).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from pikagen_jax.gan.state import GanState
from pikagen_jax.losses.gan import d_hinge_loss, g_hinge_loss, ma_gp, mismatched_sentences
from pikagen_jax.training.guards import restore_nodes_if_nonfinite, snapshot_state
from pikagen_jax.training.mesh import Mesh, replicated


def _ema_update(ema: nnx.Module, model: nnx.Module, decay: jax.Array | float) -> None:
    new = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype),
                       nnx.state(ema, nnx.Param), nnx.state(model, nnx.Param))
    nnx.update(ema, new)


def gan_step(state: GanState, batch: dict[str, jax.Array], step: jax.Array,
             config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """Updates `state` in place for one batch; returns scalar metrics."""
    key = jax.random.fold_in(jax.random.key(config.seed), step)
    key_d, key_g = jax.random.split(key)
    images, ids, mask = batch["image"], batch["token_ids"], batch["attention_mask"]
    batch_size, z_dim = images.shape[0], config.model.z_dim
    old = snapshot_state(state)

    # A frozen backbone (finetune='none') runs once per step; only its projection heads get gradients.
    frozen_backbone = config.text.finetune == "none"
    backbone_out = jax.lax.stop_gradient(state.text_encoder.backbone(ids, mask)) if frozen_backbone else None

    def encode(text):
        return text.project(*backbone_out, mask) if frozen_backbone else text(ids, mask)

    # ---- discriminator
    tokens, sentence = jax.lax.stop_gradient(encode(state.text_encoder))
    z = jax.random.normal(key_d, (batch_size, z_dim), jnp.float32)
    fake = jax.lax.stop_gradient(state.generator(z, sentence, tokens, mask))

    def d_loss_fn(disc):
        # real / fake / mismatched pairs in one 3B forward pass (one power iteration per step).
        logits = disc(jnp.concatenate([images, fake.astype(images.dtype), images]),
                      jnp.concatenate([sentence, sentence, mismatched_sentences(sentence)]))
        real, fake_logits, mismatch = jnp.split(logits, 3)
        hinge, parts = d_hinge_loss(real, fake_logits, mismatch)
        gp, gp_parts = ma_gp(lambda x, s: disc(x, s, update_stats=False, compute_dtype=jnp.float32),
                             images, sentence, weight=config.loss.magp_weight, power=config.loss.magp_power)
        return hinge + gp, {**parts, **gp_parts, "d_real_logit": jnp.mean(real),
                            "d_fake_logit": jnp.mean(fake_logits)}

    (d_loss, d_parts), d_grads = nnx.value_and_grad(d_loss_fn, has_aux=True)(state.discriminator)
    state.opt_d.update(state.discriminator, d_grads)

    # ---- generator (+ text encoder); D is frozen and read-only here
    d_graph, d_vars = nnx.split(state.discriminator)
    z = jax.random.normal(key_g, (batch_size, z_dim), jnp.float32)

    def g_loss_fn(gen, text):
        tokens, sentence = encode(text)
        fake = gen(z, sentence, tokens, mask)
        disc = nnx.merge(d_graph, d_vars)
        return g_hinge_loss(disc(fake, sentence, update_stats=False))

    grad_fn = nnx.value_and_grad(g_loss_fn, argnums=(0, nnx.DiffState(1, state.text_filter)), has_aux=True)
    (g_loss, g_parts), (g_grads, t_grads) = grad_fn(state.generator, state.text_encoder)
    state.opt_g.update(state.generator, g_grads)
    state.opt_text.update(state.text_encoder, t_grads)

    skipped = restore_nodes_if_nonfinite((d_loss, g_loss, d_grads, g_grads, t_grads), old, state)
    # EMA warm-up: early on the average follows the generator closely instead of staying near the random
    # initialisation (decay 0.999 would keep 78 % of it after 250 steps).
    decay = jnp.minimum(config.train.ema_decay, (1.0 + step) / (10.0 + step))
    decay = jnp.where(skipped, 1.0, decay)  # a skipped step leaves the EMA untouched too
    _ema_update(state.ema_generator, state.generator, decay)
    return {
        "d_loss": d_loss, "g_loss": g_loss, **d_parts, **g_parts,
        "grad_norm_d": optax.global_norm(d_grads), "grad_norm_g": optax.global_norm(g_grads),
        "grad_norm_text": optax.global_norm(t_grads), "skipped": skipped.astype(jnp.int32), "ema_decay": decay,
    }


def make_train_step(state: GanState, config: ml_collections.ConfigDict, mesh: Mesh
                    ) -> Callable[[dict[str, jax.Array], int], dict[str, jax.Array]]:
    """A host callable `(sharded batch, step) -> metrics` that runs the jitted step and writes the new
    state back into `state`. The state is replicated over the mesh and donated (updated in place)."""
    graphdef, _ = nnx.split(state)
    rep = replicated(mesh)

    def _step(variables: Any, batch: dict[str, jax.Array], step: jax.Array):
        model = nnx.merge(graphdef, variables)
        metrics = gan_step(model, batch, step, config)
        return nnx.state(model), metrics

    jitted = jax.jit(_step, donate_argnums=(0,), out_shardings=rep)

    def train_step(batch: dict[str, jax.Array], step: int) -> dict[str, jax.Array]:
        variables, metrics = jitted(nnx.state(state), batch, jnp.asarray(step, jnp.int32))
        nnx.update(state, variables)
        return metrics

    train_step.jitted = jitted  # for compile-count checks and cost analysis
    return train_step
