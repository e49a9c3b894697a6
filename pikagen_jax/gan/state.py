"""Everything the conditional GAN trains, in one NNX container: text encoder, G, D, EMA G, optimizers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from pikagen_jax.models.gan import Discriminator, Generator
from pikagen_jax.models.text_encoder import TextEncoder
from pikagen_jax.training.precision import compute_dtype

# Names under which the parts are checkpointed (generation restores only text_encoder + ema_generator).
CHECKPOINT_ITEMS = ("text_encoder", "generator", "discriminator", "ema_generator", "opt_g", "opt_d", "opt_text")


def build_text_encoder(config: ml_collections.ConfigDict, rngs: nnx.Rngs, dtype=jnp.float32) -> TextEncoder:
    """The configured text encoder, checked against the tokenizer (ids past the embedding table would
    silently become NaN on some backends)."""
    from pikagen_jax.data.pipeline import tokenizer_from_config

    t = config.text
    encoder = TextEncoder(t.backbone, t.checkpoint, out_dim=t.out_dim, finetune=t.finetune, dtype=dtype, rngs=rngs)
    tokenizer = tokenizer_from_config(config)
    rows = encoder.backbone.config.vocab_size
    if tokenizer.vocab_size > rows:
        raise ValueError(f"the {t.tokenizer} tokenizer has {tokenizer.vocab_size} tokens but the {t.backbone} "
                         f"text encoder {t.checkpoint!r} embeds only {rows}: pair a BERT checkpoint with "
                         "text.tokenizer='wordpiece' and CLIP with 'clip'")
    positions = encoder.backbone.config.max_position_embeddings
    if t.max_length > positions:
        raise ValueError(f"text.max_length={t.max_length} exceeds the text encoder's {positions} positions; "
                         f"use --config.text.max_length={positions}")
    return encoder


def build_generator(config: ml_collections.ConfigDict, rngs: nnx.Rngs, dtype=jnp.float32) -> Generator:
    m = config.model
    return Generator(config.data.image_size, z_dim=m.z_dim, sentence_dim=config.text.out_dim,
                     token_dim=config.text.out_dim, base_channels=m.gen_channels, max_channels=m.max_channels,
                     upsample=m.upsample, num_heads=m.attn_heads, head_dim=m.attn_head_dim, dtype=dtype, rngs=rngs)


class GanState(nnx.Module):
    """Models and optimizers of one GAN run. The EMA generator is a float32 copy updated after each step."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        dtype = compute_dtype(config)
        m, o = config.model, config.optim
        self.text_encoder = build_text_encoder(config, rngs, dtype)
        self.generator = build_generator(config, rngs, dtype)
        self.discriminator = Discriminator(config.data.image_size, sentence_dim=config.text.out_dim,
                                           base_channels=m.disc_channels, max_channels=m.max_channels,
                                           downsample=m.downsample, conv_impl=m.conv_impl, dtype=dtype,
                                           rngs=rngs)
        self.ema_generator = build_generator(config, nnx.Rngs(0), jnp.float32)
        nnx.update(self.ema_generator, jax.tree.map(jnp.copy, nnx.state(self.generator, nnx.Param)))
        adam = lambda lr: optax.adam(lr, b1=o.b1, b2=o.b2)  # noqa: E731
        self.opt_g = nnx.Optimizer(self.generator, adam(o.lr_g), wrt=nnx.Param)
        self.opt_d = nnx.Optimizer(self.discriminator, adam(o.lr_d), wrt=nnx.Param)
        self.text_filter = self.text_encoder.trainable_filter()
        self.opt_text = nnx.Optimizer(self.text_encoder, adam(o.lr_text), wrt=self.text_filter)

    def checkpoint_items(self) -> dict:
        """The named nodes saved in checkpoints."""
        return {name: getattr(self, name) for name in CHECKPOINT_ITEMS}


def count_params(module: nnx.Module, filter_=nnx.Param) -> int:
    """Number of scalars in `module`'s variables matching `filter_`."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, filter_)))
