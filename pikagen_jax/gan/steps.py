"""The GAN's jitted training step: one discriminator update, then one generator (+ text encoder) update.

    D:  hinge(real) + ½ hinge(fake) + ½ hinge(real, mismatched text) + MA-GP (float32); D's trunk runs on
        the real and the fake batch once each, and MA-GP differentiates the real batch's pass
        [loss.colour_mismatch = w > 0: the mismatched-text term becomes (1 - w) hinge(real, mismatched text)
        + w hinge(hue-turned real, its own text) (`losses/colour_mismatch.py`)]
    G:  −D(G(z, s), s) [+ loss.colour_weight × the sliced-Wasserstein distance between the colours of G(z, s)
        and of the real sprite of caption s (`losses/colour.py`)] [+ loss.chroma_weight × the L1 distance
        between their mean chroma vectors, the figures' overall hues]; the partially fine-tuned text encoder is
        trained through this loss (lr 2e-5)

With `model.discriminator='projected'` D is a Projected GAN discriminator (`models/projected_discriminator.py`):
the same hinge terms over its patch logits, no MA-GP. `train.diffaugment` (e.g. 'color,translation,cutout')
augments every image D sees — real, fake, in the D and in the G update — with per-sample parameters.

Randomness comes from `fold_in(key(seed), step)`, so a resumed run draws the same noise. A step whose
losses or gradients are not finite leaves every parameter and optimizer state unchanged (`skipped`=1).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from pikagen_jax.gan.state import GanState
from pikagen_jax.losses.colour import colour_distribution_loss, mean_chroma_loss
from pikagen_jax.losses.colour_mismatch import check_share, hue_turned_negatives, with_colour_share
from pikagen_jax.losses.diffaugment import diffaugment
from pikagen_jax.losses.gan import d_hinge_loss, g_hinge_loss, ma_gp_with_logits, mismatched_sentences
from pikagen_jax.models.gan import Discriminator
from pikagen_jax.models.projected_discriminator import ProjectedDiscriminator
from pikagen_jax.models.spectral_norm import frozen_spectral_norm
from pikagen_jax.training.ema import ema_update, warmup_decay
from pikagen_jax.training.guards import restore_nodes_if_nonfinite, snapshot_state
from pikagen_jax.training.jitted_step import make_jitted_step
from pikagen_jax.training.mesh import Mesh

ColourNegatives = tuple[jax.Array, jax.Array]  # (hue-turned real images, float32 [B] mask of those that count)


def discriminator_loss(disc: Discriminator, images: jax.Array, fake: jax.Array, sentence: jax.Array, *,
                       magp_weight: float, magp_power: float, magp_text: bool = True,
                       colour_negatives: ColourNegatives | None = None,
                       colour_mismatch_weight: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_D = hinge(real) + ½ hinge(fake) + ½ hinge(real, mismatched text) + MA-GP, and its parts.

    D's power iterations run once (on entry, stored: training mode) and every pass below uses the same
    normalised weights. The text-free trunk runs on 2B images: the real batch's features serve both its
    matching and its mismatched text, and in float32 the real batch's forward pass is the one MA-GP
    differentiates (as DF-GAN's `pred_real`). With a bfloat16 discriminator MA-GP keeps its own float32 pass.
    `colour_negatives` (hue-turned real images, mask; `losses/colour_mismatch.py`) take a share
    `colour_mismatch_weight` of the mismatched-text term, with the images' own text; the trunk then runs on 3B
    images.
    """
    mismatched = mismatched_sentences(sentence)
    turned = colour_negatives[0].astype(images.dtype) if colour_negatives is not None else images[:0]
    with frozen_spectral_norm(disc, update_stats=True):
        def real_pass(x, s):
            features = disc.features(x, compute_dtype=jnp.float32)
            return disc.logits(features, s, compute_dtype=jnp.float32), features

        gp_kw = dict(weight=magp_weight, power=magp_power, include_text=magp_text)
        batch = images.shape[0]
        if jnp.dtype(disc.dtype) == jnp.float32:
            gp, gp_parts, real, real_features = ma_gp_with_logits(real_pass, images, sentence, **gp_kw)
            other_features = disc.features(jnp.concatenate([fake.astype(images.dtype), turned]))
        else:
            gp, gp_parts, _, _ = ma_gp_with_logits(real_pass, images, sentence, **gp_kw)
            all_features = disc.features(jnp.concatenate([images, fake.astype(images.dtype), turned]))
            real_features, other_features = all_features[:batch], all_features[batch:]
            real = disc.logits(real_features, sentence)
        logits = disc.logits(jnp.concatenate([other_features[:batch], real_features, other_features[batch:]]),
                             jnp.concatenate([sentence, mismatched, sentence[:turned.shape[0]]]))
        fake_logits, mismatch, turned_logits = logits[:batch], logits[batch:2 * batch], logits[2 * batch:]
    hinge, parts = d_hinge_loss(real, fake_logits, mismatch)
    parts = {**parts, **gp_parts, "d_real_logit": jnp.mean(real), "d_fake_logit": jnp.mean(fake_logits)}
    if colour_negatives is None:
        return hinge + gp, parts
    return with_colour_share(hinge + gp, parts, turned_logits, colour_negatives[1], colour_mismatch_weight)


def projected_discriminator_loss(disc: ProjectedDiscriminator, images: jax.Array, fake: jax.Array,
                                 sentence: jax.Array, *, colour_negatives: ColourNegatives | None = None,
                                 colour_mismatch_weight: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_D = hinge(real) + ½ hinge(fake) + ½ hinge(real, mismatched text) over a projected D's patch logits.

    The real and the fake batch each pass the frozen feature network and the heads once (batch statistics
    per pass, as in Projected GANs); the real features serve the matching and the mismatched text.
    `colour_negatives` as in `discriminator_loss` (their own pass)."""
    with frozen_spectral_norm(disc, update_stats=True):
        real_features = disc.features(images)
        fake_features = disc.features(fake.astype(images.dtype))
        real = disc.logits(real_features, sentence)
        fake_logits = disc.logits(fake_features, sentence)
        mismatch = disc.logits(real_features, mismatched_sentences(sentence))
        turned_logits = (disc.logits(disc.features(colour_negatives[0].astype(images.dtype)), sentence)
                         if colour_negatives is not None else None)
    loss, parts = d_hinge_loss(real, fake_logits, mismatch)
    parts = {**parts, "d_real_logit": jnp.mean(real), "d_fake_logit": jnp.mean(fake_logits)}
    if colour_negatives is None:
        return loss, parts
    return with_colour_share(loss, parts, turned_logits, colour_negatives[1], colour_mismatch_weight)


def gan_step(state: GanState, batch: dict[str, jax.Array], step: jax.Array,
             config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """Updates `state` in place for one batch; returns scalar metrics."""
    key = jax.random.fold_in(jax.random.key(config.seed), step)
    key_d, key_g = jax.random.split(key)
    key_aug_real, key_aug_fake, key_aug_g = jax.random.split(jax.random.fold_in(key, 1), 3)
    policy = config.train.get("diffaugment", "")
    projected = isinstance(state.discriminator, ProjectedDiscriminator)
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

    real_in, fake_in = diffaugment(images, key_aug_real, policy), diffaugment(fake, key_aug_fake, policy)
    colour_mismatch = check_share(config.loss.get("colour_mismatch", 0.0))
    negatives = hue_turned_negatives(real_in, jax.random.fold_in(key, 2)) if colour_mismatch > 0 else None
    colour_kw = dict(colour_negatives=negatives, colour_mismatch_weight=colour_mismatch)

    def d_loss_fn(disc):
        if projected:
            return projected_discriminator_loss(disc, real_in, fake_in, sentence, **colour_kw)
        return discriminator_loss(disc, real_in, fake_in, sentence, magp_weight=config.loss.magp_weight,
                                  magp_power=config.loss.magp_power, magp_text=config.loss.get("magp_text", True),
                                  **colour_kw)

    (d_loss, d_parts), d_grads = nnx.value_and_grad(d_loss_fn, has_aux=True)(state.discriminator)
    state.opt_d.update(state.discriminator, d_grads)

    # ---- generator (+ text encoder); D is frozen and read-only here
    d_graph, d_vars = nnx.split(state.discriminator)
    z = jax.random.normal(key_g, (batch_size, z_dim), jnp.float32)

    # the paired colour losses against the caption's own sprite (before DiffAugment), those with a weight > 0
    paired_colour_losses = [(weight, paired_loss) for weight, paired_loss in (
        (config.loss.get("colour_weight", 0.0), colour_distribution_loss),  # every pixel's colour
        (config.loss.get("chroma_weight", 0.0), mean_chroma_loss),  # the figure's overall hue
    ) if weight > 0]

    def g_loss_fn(gen, text):
        tokens, sentence = encode(text)
        generated = gen(z, sentence, tokens, mask)
        fake = diffaugment(generated, key_aug_g, policy)
        disc = nnx.merge(d_graph, d_vars)
        loss, parts = g_hinge_loss(disc(fake, sentence, update_stats=False))
        for weight, paired_loss in paired_colour_losses:
            value, value_parts = paired_loss(generated, images)
            loss, parts = loss + weight * value, {**parts, **value_parts}
        return loss, parts

    grad_fn = nnx.value_and_grad(g_loss_fn, argnums=(0, nnx.DiffState(1, state.text_filter)), has_aux=True)
    (g_loss, g_parts), (g_grads, t_grads) = grad_fn(state.generator, state.text_encoder)
    state.opt_g.update(state.generator, g_grads)
    state.opt_text.update(state.text_encoder, t_grads)

    skipped = restore_nodes_if_nonfinite((d_loss, g_loss, d_grads, g_grads, t_grads), old, state)
    decay = warmup_decay(step, config.train.ema_decay)  # follows G closely early on
    decay = jnp.where(skipped, 1.0, decay)  # a skipped step leaves the EMA untouched too
    ema_update(state.ema_generator, state.generator, decay)
    return {
        "d_loss": d_loss, "g_loss": g_loss, **d_parts, **g_parts,
        "grad_norm_d": optax.global_norm(d_grads), "grad_norm_g": optax.global_norm(g_grads),
        "grad_norm_text": optax.global_norm(t_grads), "skipped": skipped.astype(jnp.int32), "ema_decay": decay,
    }


def make_train_step(state: GanState, config: ml_collections.ConfigDict, mesh: Mesh
                    ) -> Callable[[dict[str, jax.Array], int], dict[str, jax.Array]]:
    """A host callable `(sharded batch, step) -> metrics` that runs the jitted step and writes the new
    state back into `state`. The state is replicated over the mesh and donated (updated in place)."""
    return make_jitted_step(state, lambda model, batch, step: gan_step(model, batch, step, config), mesh)
