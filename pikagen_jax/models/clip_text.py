"""CLIP text transformer in Flax NNX, numerically equal to Hugging Face `CLIPTextModel` /
`CLIPTextModelWithProjection` (transformers 5)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models import hf_weights
from pikagen_jax.models.bert import (
    ParamMap,
    SelfAttention,
    activation,
    causal_mask,
    dense,
    embedding,
    layer_norm,
    padding_mask,
)

Array = jax.Array
# Pre-PR-24773 configs (e.g. openai/clip-vit-base-patch32) say eos_token_id=2; transformers then pools at
# the largest token id, which is <end_of_text> (49407) in the original OpenAI vocabulary.
LEGACY_EOS_TOKEN_ID = 2


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(hf_weights.ConfigFromJson):
    """Architecture of a CLIP text tower; defaults are ViT-B/32's and transformers 5's."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    projection_dim: int = 512
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        activation(self.hidden_act)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CLIPTextConfig":
        """From a text config dict, or a full CLIPConfig dict (its `text_config` and `projection_dim`)."""
        return tower_config(cls, values, "text_config")

    @classmethod
    def vit_b32(cls) -> "CLIPTextConfig":
        """The text tower of CLIP ViT-B/32: 12 layers, 512 wide, 8 heads, FF 2048, 77 tokens."""
        return cls()

    @classmethod
    def tiny(cls) -> "CLIPTextConfig":
        """A small random-init configuration for tests (eos = the largest id, as in CLIP's vocabulary)."""
        return cls(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=16, projection_dim=24,
                   pad_token_id=1, bos_token_id=97, eos_token_id=98)


def tower_config(cls: type, values: dict[str, Any], tower: str) -> Any:
    """A tower config dataclass `cls` from its own config dict, or from a full CLIPConfig dict (its
    `tower` sub-dict, e.g. 'text_config', and the model's `projection_dim`). Unknown keys are dropped."""
    if tower in values:
        own = dict(values[tower] or {})
        if values.get("projection_dim") is not None:
            own["projection_dim"] = values["projection_dim"]
        values = own
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


class CLIPLayer(nnx.Module):
    """Pre-LayerNorm transformer block with QuickGELU MLP (text and vision towers alike).

    `config` is a tower config: hidden_size, intermediate_size, num_attention_heads, attention_dropout,
    hidden_act and layer_norm_eps are read."""

    def __init__(self, config: Any, *, dtype, rngs: nnx.Rngs):
        width, eps = config.hidden_size, config.layer_norm_eps
        self.layer_norm1 = layer_norm(width, eps, dtype=dtype, rngs=rngs)
        self.attention = SelfAttention(width, config.num_attention_heads, dropout_rate=config.attention_dropout,
                                       dtype=dtype, rngs=rngs)
        self.layer_norm2 = layer_norm(width, eps, dtype=dtype, rngs=rngs)
        self.fc1 = dense(width, config.intermediate_size, dtype=dtype, rngs=rngs)
        self.fc2 = dense(config.intermediate_size, width, dtype=dtype, rngs=rngs)
        self.act = activation(config.hidden_act)

    def __call__(self, x: Array, mask: Array, *, deterministic: bool) -> Array:
        x = x + self.attention(self.layer_norm1(x), mask, deterministic=deterministic)
        return x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))


class CLIPTextModel(nnx.Module):
    """CLIP text transformer (causal mask, final LayerNorm, EOS pooling, optional text_projection).

    call -> (last_hidden_state [B, T, H], pooled [B, H], or [B, projection_dim] with the projection).
    """

    def __init__(self, config: CLIPTextConfig, *, with_projection: bool = False, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.config = config
        width = config.hidden_size
        self.token_embedding = embedding(config.vocab_size, width, dtype=dtype, rngs=rngs)
        self.position_embedding = embedding(config.max_position_embeddings, width, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([CLIPLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.final_layer_norm = layer_norm(width, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.text_projection = (dense(width, config.projection_dim, use_bias=False, dtype=dtype, rngs=rngs)
                                if with_projection else None)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def pooled_size(self) -> int:
        return self.config.projection_dim if self.text_projection is not None else self.config.hidden_size

    def eos_positions(self, input_ids: Array) -> Array:
        """Index of the pooled token per row, exactly as transformers 5 picks it."""
        if self.config.eos_token_id == LEGACY_EOS_TOKEN_ID:
            return jnp.argmax(input_ids, axis=-1)
        return jnp.argmax(input_ids == self.config.eos_token_id, axis=-1)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
                 deterministic: bool = True) -> tuple[Array, Array]:
        """input_ids, attention_mask (1 = real token): int [B, T]; each row must contain the EOS token."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}; truncate the tokenizer output")
        mask = causal_mask(length)
        if attention_mask is not None:
            mask = mask & padding_mask(attention_mask)
        x = self.token_embedding(input_ids) + self.position_embedding(jnp.arange(length)[None, :])
        for layer in self.layers:
            x = layer(x, mask, deterministic=deterministic)
        x = self.final_layer_norm(x)
        pooled = jnp.take_along_axis(x, self.eos_positions(input_ids)[:, None, None], axis=1)[:, 0]
        if self.text_projection is not None:
            pooled = self.text_projection(pooled)
        return x, pooled

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, with_projection: bool | None = None, dtype=jnp.float32,
                        rngs: nnx.Rngs | None = None, strict: bool = True) -> "CLIPTextModel":
        """Builds the text tower from a Hugging Face CLIP checkpoint (CLIPModel, CLIPTextModel or
        CLIPTextModelWithProjection; local directory or hub name). `with_projection=None` uses the
        checkpoint's text_projection when it has one. Vision-tower tensors are ignored."""
        return load_tower(cls, CLIPTextConfig, name_or_path, "text_projection.weight", with_projection=with_projection,
                          dtype=dtype, rngs=rngs, strict=strict)

    def load_hf_state(self, state: dict[str, Any], *, strict: bool = True,
                      source: str | Path = "checkpoint") -> hf_weights.LoadReport:
        """Copies this tower's tensors from a Hugging Face CLIP state dict (other towers' are ignored)."""
        with_projection = self.text_projection is not None
        ignore = CLIP_IGNORED_KEYS + (() if with_projection else (r"^text_projection\.",))
        return hf_weights.load_params(self, state, hf_param_map(self.config, with_projection=with_projection),
                                      prefixes=("text_model.",), ignore=ignore, strict=strict, source=source)


def load_tower(cls: type, config_cls: type, name_or_path: str | Path, projection_key: str, *,
               with_projection: bool | None, dtype, rngs: nnx.Rngs | None, strict: bool) -> Any:
    """A CLIP tower `cls` (with `load_hf_state`) from a Hugging Face checkpoint; `with_projection=None` means
    "when the checkpoint has `projection_key`". Built from shapes only when `strict` (all weights loaded)."""
    directory = hf_weights.resolve_checkpoint(name_or_path)
    config = config_cls.from_json(directory)
    state = hf_weights.load_state_dict(directory)
    if with_projection is None:
        with_projection = projection_key in state
    make = lambda: cls(config, with_projection=with_projection, dtype=dtype, rngs=rngs or nnx.Rngs(0))  # noqa: E731
    model = hf_weights.abstract_model(make) if strict else make()
    model.load_hf_state(state, strict=strict, source=directory)
    hf_weights.check_loaded(model, directory)
    return model


# Checkpoint entries that are not part of the text tower.
CLIP_IGNORED_KEYS = (r"position_ids$", r"^vision_model\.", r"^visual_projection\.", r"^logit_scale$")


def linear_map(hf: str, path: tuple) -> ParamMap:
    """The weight (transposed) and bias of a Hugging Face nn.Linear named `hf` -> nnx.Linear at `path`."""
    return {f"{hf}.weight": (path + ("kernel",), True), f"{hf}.bias": (path + ("bias",), False)}


def norm_map(hf: str, path: tuple) -> ParamMap:
    """A Hugging Face nn.LayerNorm named `hf` -> nnx.LayerNorm at `path`."""
    return {f"{hf}.weight": (path + ("scale",), False), f"{hf}.bias": (path + ("bias",), False)}


def encoder_param_map(num_layers: int) -> ParamMap:
    """`encoder.layers.{i}.*` of a CLIP tower (CLIPEncoderLayer) -> our `layers[i]` (CLIPLayer)."""
    mapping: ParamMap = {}
    for i in range(num_layers):
        hf, ours = f"encoder.layers.{i}", ("layers", i)
        for hf_name, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "out")):
            mapping |= linear_map(f"{hf}.self_attn.{hf_name}", ours + ("attention", name))
        mapping |= norm_map(f"{hf}.layer_norm1", ours + ("layer_norm1",))
        mapping |= norm_map(f"{hf}.layer_norm2", ours + ("layer_norm2",))
        mapping |= linear_map(f"{hf}.mlp.fc1", ours + ("fc1",))
        mapping |= linear_map(f"{hf}.mlp.fc2", ours + ("fc2",))
    return mapping


def hf_param_map(config: CLIPTextConfig, *, with_projection: bool) -> ParamMap:
    """Hugging Face parameter name (without `text_model.`) -> (NNX path, transpose?)."""
    mapping: ParamMap = {
        "embeddings.token_embedding.weight": (("token_embedding", "embedding"), False),
        "embeddings.position_embedding.weight": (("position_embedding", "embedding"), False),
    }
    mapping |= encoder_param_map(config.num_hidden_layers)
    mapping |= norm_map("final_layer_norm", ("final_layer_norm",))
    if with_projection:
        mapping["text_projection.weight"] = (("text_projection", "kernel"), True)
    return mapping
