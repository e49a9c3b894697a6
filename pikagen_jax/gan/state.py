"""Everything the conditional GAN trains, in one NNX container: text encoder, G, D, EMA G, optimizers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from pikagen_jax.models.gan import Discriminator, Generator
from pikagen_jax.models.projected_discriminator import ProjectedDiscriminator
from pikagen_jax.training.precision import compute_dtype
from pikagen_jax.training.text import build_text_encoder

# Names under which the parts are checkpointed (generation restores only text_encoder + ema_generator).
CHECKPOINT_ITEMS = ("text_encoder", "generator", "discriminator", "ema_generator", "opt_g", "opt_d", "opt_text")
DISCRIMINATORS = ("dfgan", "projected")


def build_generator(config: ml_collections.ConfigDict, rngs: nnx.Rngs, dtype=jnp.float32) -> Generator:
    m = config.model
    return Generator(config.data.image_size, z_dim=m.z_dim, sentence_dim=config.text.out_dim,
                     token_dim=config.text.out_dim, base_channels=m.gen_channels, max_channels=m.max_channels,
                     upsample=m.upsample, num_heads=m.attn_heads, head_dim=m.attn_head_dim,
                     text_affine=m.get("text_affine", False), dtype=dtype, rngs=rngs)


def build_discriminator(config: ml_collections.ConfigDict, rngs: nnx.Rngs,
                        dtype=jnp.float32) -> Discriminator | ProjectedDiscriminator:
    """Seed 002's DF-GAN discriminator (`model.discriminator='dfgan'`) or a Projected GAN one on frozen,
    pretrained EfficientNet-Lite features (`'projected'`, settings in `model.projected`)."""
    m = config.model
    kind = m.get("discriminator", "dfgan")
    if kind not in DISCRIMINATORS:
        raise ValueError(f"model.discriminator={kind!r} must be one of {DISCRIMINATORS}")
    if kind == "dfgan":
        return Discriminator(config.data.image_size, sentence_dim=config.text.out_dim, base_channels=m.disc_channels,
                             max_channels=m.max_channels, downsample=m.downsample,
                             text_projection=m.get("d_text_projection", False), conv_impl=m.conv_impl, dtype=dtype,
                             rngs=rngs)
    from pikagen_jax.models.efficientnet_weights import load_efficientnet_lite

    p = m.projected
    return ProjectedDiscriminator(config.data.image_size, sentence_dim=config.text.out_dim,
                                  feature_network=load_efficientnet_lite(p.variant), input_size=p.input_size,
                                  channels=p.channels, expand=p.expand, scale_mixing=p.scale_mixing,
                                  head_channels=p.head_channels, cmap_dim=p.cmap_dim, rngs=rngs)


class GanState(nnx.Module):
    """Models and optimizers of one GAN run. The EMA generator is a float32 copy updated after each step."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        dtype = compute_dtype(config)
        o = config.optim
        self.text_encoder = build_text_encoder(config, rngs, dtype)
        self.generator = build_generator(config, rngs, dtype)
        self.discriminator = build_discriminator(config, rngs, dtype)
        self.ema_generator = build_generator(config, nnx.Rngs(0), jnp.float32)
        nnx.update(self.ema_generator, jax.tree.map(jnp.copy, nnx.state(self.generator, nnx.Param)))
        adam = lambda lr: optax.adam(lr, b1=o.b1, b2=o.b2)  # noqa: E731
        self.opt_g = nnx.Optimizer(self.generator, adam(o.lr_g), wrt=nnx.Param)
        # wrt=nnx.Param: a projected D's pretrained features and random projections get no optimizer state
        self.opt_d = nnx.Optimizer(self.discriminator, adam(o.lr_d), wrt=nnx.Param)
        self.text_filter = self.text_encoder.trainable_filter()
        self.opt_text = nnx.Optimizer(self.text_encoder, adam(o.lr_text), wrt=self.text_filter)

    def checkpoint_items(self) -> dict:
        """The named nodes saved in checkpoints."""
        return {name: getattr(self, name) for name in CHECKPOINT_ITEMS}

