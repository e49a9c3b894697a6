"""The configured text encoder (`config.text`), built the same way by every text-conditioned system."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from flax import nnx

from pikagen_jax.data.pipeline import tokenizer_from_config
from pikagen_jax.models.text_encoder import TextEncoder


def build_text_encoder(config: ml_collections.ConfigDict, rngs: nnx.Rngs, dtype=jnp.float32) -> TextEncoder:
    """The configured text encoder, checked against the tokenizer (ids past the embedding table would
    silently become NaN on some backends)."""
    t = config.text
    encoder = TextEncoder(t.backbone, t.checkpoint, out_dim=t.out_dim, finetune=t.finetune,
                          sentence_pooling=t.get("sentence_pooling", "pooler"),
                          sentence_norm=t.get("sentence_norm", "none"), dtype=dtype, rngs=rngs)
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
