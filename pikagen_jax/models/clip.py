"""A frozen CLIP model in Flax NNX: text and vision towers with their projections and `logit_scale`,
numerically equal to Hugging Face `transformers.CLIPModel` (`get_text_features` / `get_image_features`).

    clip = CLIPModel.from_pretrained("/path/to/clip-vit-base-patch32")   # or a hub name, with internet
    ids, mask = clip.tokenizer()(["a small blue turtle"])                 # the project's CLIP BPE tokenizer
    cos = clip(images, ids, mask)                                         # images NHWC in [-1, 1], any size

Everything is a pure JAX function of the images, so the CLIP loss differentiates through it inside a
jitted train step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.data.tokenizers import ClipBpeTokenizer
from pikagen_jax.losses.l1_clip import clip_image_preprocess, cosine_similarity
from pikagen_jax.models import hf_weights
from pikagen_jax.models.clip_text import CLIPTextConfig, CLIPTextModel
from pikagen_jax.models.clip_vision import CLIPVisionConfig, CLIPVisionModel

Array = jax.Array
CLIP_CONTEXT_LENGTH = 77  # OpenAI CLIP's text context


@dataclasses.dataclass(frozen=True)
class CLIPConfig(hf_weights.ConfigFromJson):
    """A CLIP model: the two towers (each carrying the shared `projection_dim`) and logit_scale's init."""

    text: CLIPTextConfig = CLIPTextConfig()
    vision: CLIPVisionConfig = CLIPVisionConfig()
    logit_scale_init_value: float = 2.6592  # log(1 / 0.07)

    def __post_init__(self):
        if self.text.projection_dim != self.vision.projection_dim:
            raise ValueError(f"text and vision projections must have one width, got {self.text.projection_dim} "
                             f"and {self.vision.projection_dim}")

    @property
    def projection_dim(self) -> int:
        return self.text.projection_dim

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CLIPConfig":
        """From a Hugging Face CLIPConfig dict (`text_config`, `vision_config`, `projection_dim`)."""
        missing = [key for key in ("text_config", "vision_config") if key not in values]
        if missing:
            raise ValueError(f"not a CLIPModel config: no {' or '.join(missing)} (model_type "
                             f"{values.get('model_type')!r}); pass a full CLIP checkpoint with both towers")
        scale = values.get("logit_scale_init_value")
        return cls(text=CLIPTextConfig.from_dict(values), vision=CLIPVisionConfig.from_dict(values),
                   **({} if scale is None else {"logit_scale_init_value": float(scale)}))

    @classmethod
    def vit_b32(cls) -> "CLIPConfig":
        """openai/clip-vit-base-patch32's architecture."""
        return cls()

    @classmethod
    def tiny(cls) -> "CLIPConfig":
        """A small random-init model for tests (both towers' `tiny()`, projection 24)."""
        return cls(text=CLIPTextConfig.tiny(), vision=CLIPVisionConfig.tiny())


class CLIPModel(nnx.Module):
    """CLIP: `image_embeds`, `text_embeds` (projected, not normalised), row-wise cosines and CLIP's logits."""

    def __init__(self, config: CLIPConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextModel(config.text, with_projection=True, dtype=dtype, rngs=rngs)
        self.vision_model = CLIPVisionModel(config.vision, with_projection=True, dtype=dtype, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(config.logit_scale_init_value, jnp.float32))

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def embed_dim(self) -> int:
        return self.config.projection_dim

    @property
    def max_text_length(self) -> int:
        """Tokens per caption: CLIP's 77, or fewer when the checkpoint has fewer positions."""
        return min(CLIP_CONTEXT_LENGTH, self.config.text.max_position_embeddings)

    def tokenizer(self, vocab_path: str | Path | None = None) -> ClipBpeTokenizer:
        """The project's CLIP BPE tokenizer (vocabulary from open-clip-torch unless `vocab_path`), padded to
        `max_text_length`; raises when its ids do not fit the checkpoint's token table."""
        tokenizer = ClipBpeTokenizer(vocab_path, max_length=self.max_text_length)
        if tokenizer.vocab_size > self.config.text.vocab_size:
            raise ValueError(f"this CLIP model embeds {self.config.text.vocab_size} tokens, fewer than CLIP's BPE "
                             f"vocabulary ({tokenizer.vocab_size}): not a CLIP text tower for OpenAI's tokenizer")
        return tokenizer

    def pixel_embeds(self, pixel_values: Array) -> Array:
        """CLIP-normalised pixels [B, image_size, image_size, 3] -> image embeddings [B, projection_dim]."""
        return self.vision_model(pixel_values)[1]

    def image_embeds(self, images: Array) -> Array:
        """Images NHWC in [-1, 1], any size -> image embeddings [B, projection_dim] (float32), through CLIP's
        preprocessing (bicubic resize of the short side, centre crop, CLIP mean/std); differentiable."""
        return self.pixel_embeds(clip_image_preprocess(images, self.image_size)).astype(jnp.float32)

    def text_embeds(self, input_ids: Array, attention_mask: Array | None = None) -> Array:
        """CLIP BPE ids [B, T] (each row holding the end token) -> text embeddings [B, projection_dim]."""
        return self.text_model(input_ids, attention_mask)[1].astype(jnp.float32)

    def __call__(self, images: Array, input_ids: Array, attention_mask: Array | None = None) -> Array:
        """Cosine similarity of each image with its own caption -> [B] (the seed's CLIP score per example)."""
        return cosine_similarity(self.image_embeds(images), self.text_embeds(input_ids, attention_mask))

    def logits_per_image(self, image_embeds: Array, text_embeds: Array) -> Array:
        """CLIP's similarity logits [images, texts]: exp(logit_scale) · normalised image · normalised text."""
        normalise = lambda e: e / jnp.linalg.norm(e, axis=-1, keepdims=True)  # noqa: E731
        return jnp.exp(self.logit_scale[...]) * normalise(image_embeds) @ normalise(text_embeds).T

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None,
                        strict: bool = True) -> "CLIPModel":
        """Builds the model from a Hugging Face CLIPModel checkpoint (local directory with config.json and
        model.safetensors or pytorch_model.bin, or a hub name when a hub is reachable)."""
        directory = hf_weights.resolve_checkpoint(name_or_path)
        config = CLIPConfig.from_json(directory)
        state = hf_weights.load_state_dict(directory)
        make = lambda: cls(config, dtype=dtype, rngs=rngs or nnx.Rngs(0))  # noqa: E731
        model = hf_weights.abstract_model(make) if strict else make()
        model.text_model.load_hf_state(state, strict=strict, source=directory)
        model.vision_model.load_hf_state(state, strict=strict, source=directory)
        hf_weights.load_params(model, state, {"logit_scale": (("logit_scale",), False)}, strict=strict,
                               ignore=(r"^text_model\.", r"^vision_model\.", r"_projection\.weight$"),
                               source=directory)
        hf_weights.check_loaded(model, directory)
        return model
