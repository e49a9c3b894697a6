"""BERT encoder in Flax NNX, numerically equal to Hugging Face `transformers.BertModel`.

Also holds the pieces the CLIP text tower shares with it: activations by Hugging Face name, masked
multi-head self-attention, and attention-mask builders.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models import hf_weights

Array = jax.Array
ParamMap = dict[str, tuple[tuple[Any, ...], hf_weights.Layout]]

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU, as in BERT
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # CLIP
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The activation a Hugging Face config names in `hidden_act`."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def padding_mask(attention_mask: Array) -> Array:
    """[B, T] 1/0 mask -> boolean [B, 1, 1, T] (query rows may attend to key columns that are True)."""
    return (attention_mask > 0)[:, None, None, :]


def causal_mask(length: int) -> Array:
    """Boolean [1, 1, T, T] lower-triangular mask: position i attends to positions <= i."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def dense(features_in: int, features_out: int, *, use_bias: bool = True, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """Linear layer with float32 parameters and BERT/CLIP's normal(0.02) kernel init."""
    return nnx.Linear(features_in, features_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def layer_norm(features: int, epsilon: float, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with the exact (two-pass) variance PyTorch uses."""
    return nnx.LayerNorm(features, epsilon=epsilon, use_fast_variance=False, dtype=dtype,
                         param_dtype=jnp.float32, rngs=rngs)


def embedding(count: int, features: int, *, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    """Embedding table [count, features] with float32 parameters and normal(0.02) init."""
    return nnx.Embed(count, features, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=nnx.initializers.normal(0.02), rngs=rngs)


class SelfAttention(nnx.Module):
    """Multi-head self-attention (query/key/value/out projections); softmax in float32."""

    def __init__(self, width: int, num_heads: int, *, dropout_rate: float = 0.0, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if width % num_heads:
            raise ValueError(f"hidden size {width} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.query = dense(width, width, dtype=dtype, rngs=rngs)
        self.key = dense(width, width, dtype=dtype, rngs=rngs)
        self.value = dense(width, width, dtype=dtype, rngs=rngs)
        self.out = dense(width, width, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def __call__(self, x: Array, mask: Array | None, *, deterministic: bool = True) -> Array:
        batch, length, width = x.shape
        split = lambda t: t.reshape(batch, length, self.num_heads, self.head_dim)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(self.head_dim)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1)
        weights = self.dropout(weights, deterministic=deterministic).astype(v.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
        return self.out(context)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT encoder; field names follow Hugging Face's config.json."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        activation(self.hidden_act)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BertConfig":
        """Reads the fields this port uses from an HF config dict; rejects variants it does not implement."""
        if values.get("is_decoder"):
            raise ValueError("config.json describes a BERT decoder (is_decoder=true); only encoders are supported")
        kind = values.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"position_embedding_type {kind!r} is not supported; only 'absolute'")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """Reads a Hugging Face BERT config.json (a file, or a directory holding one)."""
        return cls.from_dict(hf_weights.read_config(path))

    @classmethod
    def bert_mini(cls) -> "BertConfig":
        """BERT-mini (Turc et al.): 4 layers, 256 wide, 4 heads, FF 1024, bert-base-uncased vocabulary."""
        return cls(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)

    @classmethod
    def tiny(cls) -> "BertConfig":
        """A small random-init configuration for tests."""
        return cls(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=37, max_position_embeddings=64)

    def to_json(self) -> str:
        """The config as JSON with Hugging Face field names."""
        return json.dumps(dataclasses.asdict(self), indent=2)


class BertEmbeddings(nnx.Module):
    """word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        width = config.hidden_size
        self.word_embeddings = embedding(config.vocab_size, width, dtype=dtype, rngs=rngs)
        self.position_embeddings = embedding(config.max_position_embeddings, width, dtype=dtype, rngs=rngs)
        self.token_type_embeddings = embedding(config.type_vocab_size, width, dtype=dtype, rngs=rngs)
        self.layer_norm = layer_norm(width, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob, rngs=rngs)

    def __call__(self, input_ids: Array, token_type_ids: Array, *, deterministic: bool) -> Array:
        positions = jnp.arange(input_ids.shape[1])[None, :]
        x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(positions))
        return self.dropout(self.layer_norm(x), deterministic=deterministic)


class BertLayer(nnx.Module):
    """Post-LayerNorm transformer block: self-attention, then GELU feed-forward, each with a residual."""

    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        width, eps = config.hidden_size, config.layer_norm_eps
        self.attention = SelfAttention(width, config.num_attention_heads,
                                       dropout_rate=config.attention_probs_dropout_prob, dtype=dtype, rngs=rngs)
        self.attention_norm = layer_norm(width, eps, dtype=dtype, rngs=rngs)
        self.intermediate = dense(width, config.intermediate_size, dtype=dtype, rngs=rngs)
        self.output = dense(config.intermediate_size, width, dtype=dtype, rngs=rngs)
        self.output_norm = layer_norm(width, eps, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob, rngs=rngs)
        self.act = activation(config.hidden_act)

    def __call__(self, x: Array, mask: Array, *, deterministic: bool) -> Array:
        attended = self.attention(x, mask, deterministic=deterministic)
        x = self.attention_norm(x + self.dropout(attended, deterministic=deterministic))
        hidden = self.output(self.act(self.intermediate(x)))
        return self.output_norm(x + self.dropout(hidden, deterministic=deterministic))


class BertModel(nnx.Module):
    """BERT encoder with pooler; call -> (last_hidden_state [B, T, H], pooled [B, H])."""

    def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = BertEmbeddings(config, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([BertLayer(config, dtype=dtype, rngs=rngs)
                                for _ in range(config.num_hidden_layers)])
        self.pooler = dense(config.hidden_size, config.hidden_size, dtype=dtype, rngs=rngs)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def pooled_size(self) -> int:
        return self.config.hidden_size

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, deterministic: bool = True) -> tuple[Array, Array]:
        """input_ids, attention_mask (1 = real token), token_type_ids: int [B, T]."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}; truncate the tokenizer output")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        mask = padding_mask(attention_mask)
        x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic)
        for layer in self.layers:
            x = layer(x, mask, deterministic=deterministic)
        pooled = jnp.tanh(self.pooler(x[:, 0]))
        return x, pooled

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None,
                        strict: bool = True) -> "BertModel":
        """Builds the model from a Hugging Face BERT checkpoint (local directory or hub name).

        `strict=False` keeps random init for weights the checkpoint lacks (e.g. no pooler) with a warning.
        """
        directory = hf_weights.resolve_checkpoint(name_or_path)
        config = BertConfig.from_json(directory)
        model = cls(config, dtype=dtype, rngs=rngs or nnx.Rngs(0))
        hf_weights.load_params(model, hf_weights.load_state_dict(directory), hf_param_map(config),
                               prefixes=("bert.",), ignore=BERT_IGNORED_KEYS, strict=strict, source=directory)
        return model


# Checkpoint entries that are not part of the encoder: buffers and task heads.
BERT_IGNORED_KEYS = (r"position_ids$", r"token_type_ids$", r"^cls\.", r"^classifier\.", r"^qa_outputs\.",
                     r"^lm_head\.")


def hf_param_map(config: BertConfig) -> ParamMap:
    """Hugging Face parameter name -> (NNX path in BertModel, transpose?) for every parameter."""
    def linear(hf: str, path: tuple) -> ParamMap:
        return {f"{hf}.weight": (path + ("kernel",), True), f"{hf}.bias": (path + ("bias",), False)}

    def norm(hf: str, path: tuple) -> ParamMap:
        return {f"{hf}.weight": (path + ("scale",), False), f"{hf}.bias": (path + ("bias",), False)}

    mapping: ParamMap = {
        f"embeddings.{name}.weight": (("embeddings", name, "embedding"), False)
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    }
    mapping |= norm("embeddings.LayerNorm", ("embeddings", "layer_norm"))
    for i in range(config.num_hidden_layers):
        hf, ours = f"encoder.layer.{i}", ("layers", i)
        for name in ("query", "key", "value"):
            mapping |= linear(f"{hf}.attention.self.{name}", ours + ("attention", name))
        mapping |= linear(f"{hf}.attention.output.dense", ours + ("attention", "out"))
        mapping |= norm(f"{hf}.attention.output.LayerNorm", ours + ("attention_norm",))
        mapping |= linear(f"{hf}.intermediate.dense", ours + ("intermediate",))
        mapping |= linear(f"{hf}.output.dense", ours + ("output",))
        mapping |= norm(f"{hf}.output.LayerNorm", ours + ("output_norm",))
    mapping |= linear("pooler.dense", ("pooler",))
    return mapping
