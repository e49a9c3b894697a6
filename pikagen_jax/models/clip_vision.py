"""CLIP vision transformer (ViT) in Flax NNX, numerically equal to Hugging Face `CLIPVisionModel` /
`CLIPVisionModelWithProjection` (transformers 5).

    patches (conv k=s=patch, no bias) -> [class token; patches] + positions -> pre_layrnorm -> encoder
    (the text tower's CLIPLayer, no mask) -> post_layernorm(class token) -> visual_projection (optional)

Inputs are CLIP-normalised NHWC pixels at `image_size`; `pikagen_jax.models.clip.CLIPModel.image_embeds`
adds CLIP's preprocessing for images in [-1, 1].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models import hf_weights
from pikagen_jax.models.bert import ParamMap, activation, dense, embedding, layer_norm
from pikagen_jax.models.clip_text import CLIPLayer, encoder_param_map, load_tower, norm_map, tower_config

Array = jax.Array
# A PyTorch Conv2d weight [out, in, kh, kw] -> an NNX Conv kernel [kh, kw, in, out].
TORCH_CONV_LAYOUT = (2, 3, 1, 0)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(hf_weights.ConfigFromJson):
    """Architecture of a CLIP vision tower; defaults are ViT-B/32's and transformers 5's."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    projection_dim: int = 512

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.patch_size < 1 or self.image_size < self.patch_size:
            raise ValueError(f"need 1 <= patch_size <= image_size, got patch_size {self.patch_size} and "
                             f"image_size {self.image_size}")
        activation(self.hidden_act)

    @property
    def num_patches(self) -> int:
        """Patches per image (as Hugging Face: (image_size // patch_size)², trailing pixels dropped)."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CLIPVisionConfig":
        """From a vision config dict, or a full CLIPConfig dict (its `vision_config` and `projection_dim`)."""
        return tower_config(cls, values, "vision_config")

    @classmethod
    def vit_b32(cls) -> "CLIPVisionConfig":
        """The vision tower of CLIP ViT-B/32: 224 px, 32 px patches, 12 layers, 768 wide, 12 heads."""
        return cls()

    @classmethod
    def tiny(cls) -> "CLIPVisionConfig":
        """A small random-init configuration for tests: 32 px images, 8 px patches (16 + 1 tokens)."""
        return cls(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8, projection_dim=24)


class CLIPVisionModel(nnx.Module):
    """CLIP vision transformer, optionally with the visual projection.

    call(pixels [B, S, S, C] CLIP-normalised, S = image_size) -> (last_hidden_state [B, 1 + patches, H],
    pooled [B, H], or [B, projection_dim] with the projection).
    """

    def __init__(self, config: CLIPVisionConfig, *, with_projection: bool = False, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.config = config
        width, patch = config.hidden_size, config.patch_size
        self.patch_embedding = nnx.Conv(config.num_channels, width, (patch, patch), strides=(patch, patch),
                                        padding="VALID", use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                                        kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (width,), jnp.float32) * width ** -0.5)
        self.position_embedding = embedding(config.num_patches + 1, width, dtype=dtype, rngs=rngs)
        self.pre_layrnorm = layer_norm(width, config.layer_norm_eps, dtype=dtype, rngs=rngs)  # HF's spelling
        self.layers = nnx.List([CLIPLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = layer_norm(width, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.visual_projection = (dense(width, config.projection_dim, use_bias=False, dtype=dtype, rngs=rngs)
                                  if with_projection else None)

    @property
    def pooled_size(self) -> int:
        return self.config.projection_dim if self.visual_projection is not None else self.config.hidden_size

    def __call__(self, pixel_values: Array, *, deterministic: bool = True) -> tuple[Array, Array]:
        """pixel_values: float [B, image_size, image_size, num_channels], CLIP-normalised."""
        config = self.config
        expected = (config.image_size, config.image_size, config.num_channels)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(f"pixel_values must be NHWC [batch, {expected[0]}, {expected[1]}, {expected[2]}], got "
                             f"shape {pixel_values.shape}; resize with CLIP's preprocessing "
                             "(pikagen_jax.losses.l1_clip.clip_image_preprocess) first")
        patches = self.patch_embedding(pixel_values)  # [B, grid, grid, H]
        batch = patches.shape[0]
        patches = patches.reshape(batch, -1, config.hidden_size)  # row-major over the grid, as HF's flatten(2)
        cls_token = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (batch, 1, config.hidden_size))
        x = jnp.concatenate([cls_token, patches], axis=1)
        x = x + self.position_embedding.embedding[...].astype(x.dtype)[None]
        x = self.pre_layrnorm(x)
        for layer in self.layers:
            x = layer(x, None, deterministic=deterministic)
        pooled = self.post_layernorm(x[:, 0])
        if self.visual_projection is not None:
            pooled = self.visual_projection(pooled)
        return x, pooled

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, with_projection: bool | None = None, dtype=jnp.float32,
                        rngs: nnx.Rngs | None = None, strict: bool = True) -> "CLIPVisionModel":
        """Builds the vision tower from a Hugging Face CLIP checkpoint (CLIPModel, CLIPVisionModel or
        CLIPVisionModelWithProjection; local directory or hub name). `with_projection=None` uses the
        checkpoint's visual_projection when it has one. Text-tower tensors are ignored."""
        return load_tower(cls, CLIPVisionConfig, name_or_path, "visual_projection.weight",
                          with_projection=with_projection, dtype=dtype, rngs=rngs, strict=strict)

    def load_hf_state(self, state: dict[str, Any], *, strict: bool = True,
                      source: str | Path = "checkpoint") -> hf_weights.LoadReport:
        """Copies this tower's tensors from a Hugging Face CLIP state dict (other towers' are ignored)."""
        with_projection = self.visual_projection is not None
        ignore = CLIP_VISION_IGNORED_KEYS + (() if with_projection else (r"^visual_projection\.",))
        return hf_weights.load_params(self, state, hf_param_map(self.config, with_projection=with_projection),
                                      prefixes=("vision_model.",), ignore=ignore, strict=strict, source=source)


# Checkpoint entries that are not part of the vision tower.
CLIP_VISION_IGNORED_KEYS = (r"position_ids$", r"^text_model\.", r"^text_projection\.", r"^logit_scale$")


def hf_param_map(config: CLIPVisionConfig, *, with_projection: bool) -> ParamMap:
    """Hugging Face parameter name (without `vision_model.`) -> (NNX path, layout)."""
    mapping: ParamMap = {
        "embeddings.class_embedding": (("class_embedding",), False),
        "embeddings.patch_embedding.weight": (("patch_embedding", "kernel"), TORCH_CONV_LAYOUT),
        "embeddings.position_embedding.weight": (("position_embedding", "embedding"), False),
    }
    mapping |= norm_map("pre_layrnorm", ("pre_layrnorm",))
    mapping |= encoder_param_map(config.num_hidden_layers)
    mapping |= norm_map("post_layernorm", ("post_layernorm",))
    if with_projection:
        mapping["visual_projection.weight"] = (("visual_projection", "kernel"), True)
    return mapping
