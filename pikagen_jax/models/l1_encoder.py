"""Text side of the encoder–attention–decoder model of seeds 000/001 (seed 000 §2.1.2–2.1.3).

    H = TransformerEncoder(BERT(ids, mask) [+ N(0, σ²) in training])        # [B, T, D]
    c = AttentionBlock(H, mask)                                              # [B, d]

`AttentionBlock` mean-pools H over the real tokens (or takes a query vector given by the caller, as the
decoder stages do), projects it to a query of width `attention_dim` and lets it attend over H.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models import hf_weights
from pikagen_jax.models.bert import BertConfig, BertModel

Array = jax.Array
BERT_PRESETS = ("bert_mini", "tiny", "minilm")
TORCH_LAYER_NORM_EPS = 1e-5


def linear(features_in: int, features_out: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    """A float32-parameter Linear computing in `dtype`."""
    return nnx.Linear(features_in, features_out, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def build_bert(checkpoint: str, *, dropout: float | None = None, dtype: Any = jnp.float32,
               rngs: nnx.Rngs) -> BertModel:
    """The BERT first stage: a preset or a Hugging Face BERT checkpoint (directory or hub name).

    Presets: 'bert_mini' (4 layers, 256 wide, random init: BERT-mini's weights are not available offline),
    'tiny' (random, for tests), 'minilm' (the pretrained offline MiniLM-L6, 384 wide).
    `dropout` overrides every dropout rate inside BERT (None keeps the checkpoint's).
    """
    if not checkpoint:
        raise ValueError(f"no BERT checkpoint given: use a preset {BERT_PRESETS} or a checkpoint directory")
    if checkpoint == "bert_mini":
        model = BertModel(BertConfig.bert_mini(), dtype=dtype, rngs=rngs)
    elif checkpoint == "tiny":
        model = BertModel(BertConfig.tiny(), dtype=dtype, rngs=rngs)
    else:
        path = hf_weights.default_minilm_dir() if checkpoint == "minilm" else checkpoint
        model = BertModel.from_pretrained(path, dtype=dtype, rngs=rngs)
    if dropout is not None:
        for _, module in nnx.iter_modules(model):
            if isinstance(module, nnx.Dropout):
                module.rate = float(dropout)
    return model


def masked_mean_pool(tokens: Array, attention_mask: Array) -> Array:
    """Mean of tokens [B, T, D] over the positions where attention_mask [B, T] is nonzero (float32 sum).

    A row without any real token pools to zeros.
    """
    weights = (attention_mask > 0).astype(jnp.float32)[..., None]
    total = jnp.sum(tokens.astype(jnp.float32) * weights, axis=1)
    return (total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)).astype(tokens.dtype)


class MultiHeadAttention(nnx.Module):
    """Multi-head attention with a key padding mask, like `torch.nn.MultiheadAttention(kdim=, vdim=)`.

    Queries [B, Q, query_dim] attend over keys/values [B, T, kv_dim]; all heads together are `width`
    wide; the result is projected to `out_dim`. Softmax runs in float32; `dropout` drops attention weights.
    """

    def __init__(self, query_dim: int, kv_dim: int, width: int, out_dim: int, num_heads: int, *,
                 dropout: float = 0.0, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if width % num_heads:
            raise ValueError(f"attention width {width} is not divisible by num_heads {num_heads}; pick a head "
                             f"count that divides it")
        self.num_heads = num_heads
        self.query = linear(query_dim, width, dtype=dtype, rngs=rngs)
        self.key = linear(kv_dim, width, dtype=dtype, rngs=rngs)
        self.value = linear(kv_dim, width, dtype=dtype, rngs=rngs)
        self.out = linear(width, out_dim, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def _split(self, t: Array) -> Array:
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, -1)

    def weights(self, queries: Array, keys_values: Array, attention_mask: Array) -> Array:
        """The attention weights [B, heads, Q, T] (float32, padding masked, before dropout)."""
        q, k = self._split(self.query(queries)), self._split(self.key(keys_values))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
        keep = (attention_mask > 0)[:, None, None, :]
        return jax.nn.softmax(jnp.where(keep, logits, jnp.finfo(jnp.float32).min), axis=-1)

    def __call__(self, queries: Array, keys_values: Array, attention_mask: Array, *,
                 deterministic: bool) -> Array:
        """queries [B, Q, query_dim], keys_values [B, T, kv_dim], attention_mask [B, T] (1 = real token)."""
        batch, num_queries = queries.shape[:2]
        v = self._split(self.value(keys_values))
        weights = self.weights(queries, keys_values, attention_mask)
        weights = self.dropout(weights, deterministic=deterministic).astype(v.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, num_queries, -1)
        return self.out(context)


class TransformerEncoderLayer(nnx.Module):
    """Post-LayerNorm encoder layer with ReLU, as `torch.nn.TransformerEncoderLayer` (norm_first=False):

        x = LN(x + Dropout(SelfAttention(x)));  x = LN(x + Dropout(W2 Dropout(ReLU(W1 x))))
    """

    def __init__(self, width: int, num_heads: int, ff_dim: int, *, dropout: float = 0.1,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.self_attention = MultiHeadAttention(width, width, width, width, num_heads, dropout=dropout,
                                                 dtype=dtype, rngs=rngs)
        self.linear1 = linear(width, ff_dim, dtype=dtype, rngs=rngs)
        self.linear2 = linear(ff_dim, width, dtype=dtype, rngs=rngs)
        self.norm1 = nnx.LayerNorm(width, epsilon=TORCH_LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype,
                                   param_dtype=jnp.float32, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, epsilon=TORCH_LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype,
                                   param_dtype=jnp.float32, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: Array, attention_mask: Array, *, deterministic: bool) -> Array:
        drop = lambda t: self.dropout(t, deterministic=deterministic)
        x = self.norm1(x + drop(self.self_attention(x, x, attention_mask, deterministic=deterministic)))
        hidden = self.linear2(drop(jax.nn.relu(self.linear1(x))))
        return self.norm2(x + drop(hidden))


class TextEncoder(nnx.Module):
    """BERT → optional training-time Gaussian noise → Transformer encoder stack; call -> H [B, T, D].

    D is BERT's hidden size (256 for BERT-mini). The noise draws from the 'noise' rng stream (falling back
    to 'default'), dropout from 'dropout'.
    """

    def __init__(self, bert_checkpoint: str = "bert_mini", *, num_layers: int = 2, num_heads: int = 4,
                 ff_dim: int = 1024, dropout: float = 0.3, noise_std: float = 0.0,
                 bert_dropout: float | None = None, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.bert = build_bert(bert_checkpoint, dropout=bert_dropout, dtype=dtype, rngs=rngs)
        width = self.bert.hidden_size
        self.noise_std = float(noise_std)
        self.noise_rngs = rngs["noise"].fork()
        self.layers = nnx.List([TransformerEncoderLayer(width, num_heads, ff_dim, dropout=dropout, dtype=dtype,
                                                        rngs=rngs) for _ in range(num_layers)])

    @property
    def width(self) -> int:
        return self.bert.hidden_size

    def __call__(self, input_ids: Array, attention_mask: Array, *, deterministic: bool) -> Array:
        """int [B, T] token ids and attention mask (1 = real token) -> H [B, T, D]."""
        hidden, _ = self.bert(input_ids, attention_mask, deterministic=deterministic)
        if not deterministic and self.noise_std > 0:
            noise = jax.random.normal(self.noise_rngs(), hidden.shape, jnp.float32)
            hidden = hidden + (self.noise_std * noise).astype(hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask, deterministic=deterministic)
        return hidden


class AttentionBlock(nnx.Module):
    """A single query attending over the encoder outputs H -> context vector [B, out_dim].

    The query is the masked mean of H (seed 000 §2.1.3), or a vector the caller passes (`query_source`,
    [B, query_dim]; the decoder stages pass their pooled feature map). It is projected to `attention_dim`,
    attends over H with `num_heads` heads (padding masked), and the result is projected to `out_dim`.
    """

    def __init__(self, token_dim: int, attention_dim: int, out_dim: int, *, num_heads: int = 4,
                 query_dim: int | None = None, dropout: float = 0.0, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.attention = MultiHeadAttention(query_dim or token_dim, token_dim, attention_dim, out_dim, num_heads,
                                            dropout=dropout, dtype=dtype, rngs=rngs)

    def __call__(self, tokens: Array, attention_mask: Array, query_source: Array | None = None, *,
                 deterministic: bool) -> Array:
        """tokens H [B, T, D], attention_mask [B, T], query_source [B, query_dim] or None -> [B, out_dim]."""
        if query_source is None:
            query_source = masked_mean_pool(tokens, attention_mask)
        context = self.attention(query_source[:, None, :], tokens, attention_mask, deterministic=deterministic)
        return context[:, 0]
