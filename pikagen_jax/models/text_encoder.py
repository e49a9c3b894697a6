"""Text encoder of the text-to-sprite models (seed 002 §3.1): a pretrained BERT or CLIP text backbone
whose token states and sentence embedding are projected to a shared width, with the seed's partial
fine-tuning exposed as NNX filters.

    encoder = TextEncoder("bert", "minilm", out_dim=256, rngs=nnx.Rngs(0))
    tokens, sentence = encoder(input_ids, attention_mask)         # [B, T, 256], [B, 256]
    optimizer = nnx.Optimizer(encoder, optax.adam(2e-5), wrt=encoder.trainable_filter())
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models import hf_weights
from pikagen_jax.models.bert import BertConfig, BertModel, dense
from pikagen_jax.models.clip_text import CLIPTextConfig, CLIPTextModel

log = logging.getLogger(__name__)
Array = jax.Array

BACKBONES = ("bert", "clip")
FINETUNE_MODES = ("none", "partial", "full")
SENTENCE_POOLINGS = ("pooler", "mean")
SENTENCE_NORMS = ("none", "layernorm")
# Preset names per backbone; anything else is a checkpoint directory or hub name.
PRESETS = {"bert": ("minilm", "bert_mini", "tiny"), "clip": ("vit_b32", "tiny")}
# Attribute names of the layers TextEncoder adds on top of the backbone (always trained).
HEAD_NAMES = ("token_proj", "sentence_proj")
_WORD_EMBEDDINGS = ("word_embeddings", "token_embedding")
_SENTENCE_HEADS = ("pooler", "text_projection")


SHAPE_ONLY_MARKER = "weights_in_model_folder.txt"


def is_shape_only(checkpoint: str) -> bool:
    """A backbone folder of an exported model: its config.json only, the weights being in the model folder."""
    return bool(checkpoint) and (Path(checkpoint) / SHAPE_ONLY_MARKER).is_file()


def write_shape_only(backbone: BertModel | CLIPTextModel, folder: Path) -> Path:
    """Writes a backbone's config.json and the marker of `is_shape_only` into `folder`."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    values = dataclasses.asdict(backbone.config)
    if isinstance(backbone, CLIPTextModel):
        values["with_projection"] = backbone.text_projection is not None
    (folder / hf_weights.CONFIG_NAME).write_text(json.dumps(values, indent=1))
    (folder / SHAPE_ONLY_MARKER).write_text("The text backbone's weights are in ../weights/text_encoder.safetensors; "
                                            "this folder gives its shape (config.json).\n")
    return folder


def build_backbone(kind: str, checkpoint: str, *, dtype: Any = jnp.float32,
                   rngs: nnx.Rngs) -> BertModel | CLIPTextModel:
    """A BERT or CLIP text backbone from a preset name or a Hugging Face checkpoint (dir or hub name).

    Presets: bert 'minilm' (pretrained, offline package), 'bert_mini' and 'tiny' (random init);
    clip 'vit_b32' and 'tiny' (random init, with text_projection). A shape-only folder (`is_shape_only`, as
    an exported model holds) builds the backbone of its config.json for weights restored afterwards.
    """
    if kind not in BACKBONES:
        raise ValueError(f"unknown text backbone {kind!r}; use one of {BACKBONES}")
    if not checkpoint:
        raise ValueError(f"no checkpoint for the {kind} backbone: give a preset {PRESETS[kind]} or a "
                         "Hugging Face checkpoint directory")
    if is_shape_only(checkpoint):
        if kind == "bert":
            return BertModel(BertConfig.from_json(checkpoint), dtype=dtype, rngs=rngs)
        projection = bool(hf_weights.read_config(checkpoint).get("with_projection", True))
        return CLIPTextModel(CLIPTextConfig.from_json(checkpoint), with_projection=projection, dtype=dtype, rngs=rngs)
    if kind == "bert":
        if checkpoint == "minilm":
            return BertModel.from_pretrained(hf_weights.default_minilm_dir(), dtype=dtype, rngs=rngs)
        if checkpoint in ("bert_mini", "tiny"):
            _warn_random(kind, checkpoint)
            # Random presets take the vocabulary of the offline WordPiece tokenizer (bert-base-uncased).
            config = (BertConfig.bert_mini() if checkpoint == "bert_mini"
                      else dataclasses.replace(BertConfig.tiny(), vocab_size=30522, max_position_embeddings=512))
            return BertModel(config, dtype=dtype, rngs=rngs)
        return BertModel.from_pretrained(checkpoint, dtype=dtype, rngs=rngs)
    if checkpoint in ("vit_b32", "tiny"):
        _warn_random(kind, checkpoint)
        # Random presets take the vocabulary and special tokens of the CLIP BPE tokenizer.
        config = (CLIPTextConfig.vit_b32() if checkpoint == "vit_b32"
                  else dataclasses.replace(CLIPTextConfig.tiny(), vocab_size=49408, max_position_embeddings=77,
                                           pad_token_id=0, bos_token_id=49406, eos_token_id=49407))
        return CLIPTextModel(config, with_projection=True, dtype=dtype, rngs=rngs)
    return CLIPTextModel.from_pretrained(checkpoint, dtype=dtype, rngs=rngs)


def _warn_random(kind: str, preset: str) -> None:
    if preset != "tiny":
        log.warning("text backbone %s/%s has no offline weights: randomly initialised (pass a checkpoint "
                    "directory to use pretrained weights)", kind, preset)


@dataclasses.dataclass(frozen=True)
class _TrainableBackbonePart:
    """NNX filter predicate: parameters of a TextEncoder trained under a fine-tuning mode."""

    mode: str
    num_layers: int

    def __call__(self, path: tuple[Any, ...], value: Any) -> bool:
        if any(name in path for name in HEAD_NAMES):
            return True
        relative = path[path.index("backbone") + 1:] if "backbone" in path else path
        if self.mode == "full":
            return True
        if self.mode == "none":
            return False
        last_layer = ("layers", self.num_layers - 1)
        return (any(name in relative for name in _WORD_EMBEDDINGS + _SENTENCE_HEADS)
                or any("norm" in str(part) for part in relative)
                or any(tuple(relative[i:i + 2]) == last_layer for i in range(len(relative) - 1)))


def trainable_filter(mode: str, num_layers: int) -> nnx.filterlib.Filter:
    """NNX filter of the parameters trained under fine-tuning `mode` (seed 002 §3.1.3).

    'none': only the new projection heads; 'full': everything; 'partial': the heads plus the backbone's
    word/token embeddings, last transformer layer (index num_layers - 1), all LayerNorms and the
    pretrained sentence head (BERT pooler / CLIP text_projection). Position and token-type embeddings
    and the other layers stay frozen. Apply it to a TextEncoder (or a bare backbone), e.g.
    `nnx.Optimizer(encoder, tx, wrt=trainable_filter('partial', 4))`.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"unknown fine-tuning mode {mode!r}; use one of {FINETUNE_MODES}")
    return nnx.All(nnx.Param, _TrainableBackbonePart(mode, int(num_layers)))


def standardize(x: Array, eps: float = 1e-6) -> Array:
    """(x - mean) / sqrt(var + eps) over the last axis, computed in float32 (a LayerNorm without parameters)."""
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    return (centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def masked_mean(hidden: Array, attention_mask: Array) -> Array:
    """Mean of hidden [B, T, D] over the positions where attention_mask [B, T] is 1."""
    weights = attention_mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    return (total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)).astype(hidden.dtype)


class TextEncoder(nnx.Module):
    """Token embeddings [B, T, out_dim] and a sentence embedding [B, out_dim] from a text backbone.

    Args:
      backbone: 'bert' or 'clip'.
      checkpoint: a preset ('minilm', 'bert_mini', 'tiny' / 'vit_b32', 'tiny') or a Hugging Face
        checkpoint directory (hub names are tried only when online).
      out_dim: width of both outputs.
      sentence_pooling: 'pooler' (BERT pooler on [CLS] / CLIP EOS state, through text_projection when the
        checkpoint has one) or 'mean' (masked mean of the token states).
      finetune: 'none' | 'partial' | 'full'; the default mode of `trainable_filter()`.
      project: add Linear heads to out_dim; None = only where the backbone width differs from out_dim
        (BERT-mini's 256 needs none, as in seed 002).
      sentence_norm: 'none' or 'layernorm': the sentence embedding standardised over its features (a LayerNorm
        without parameters). MiniLM's pooled sentences differ little from caption to caption (per-feature spread
        ~0.015 against a generator's unit-variance noise), so a generator reading them raw barely sees the text.
      dtype: compute dtype (e.g. 'bfloat16'); parameters stay float32.
    """

    def __init__(self, backbone: str = "bert", checkpoint: str = "minilm", *, out_dim: int = 256,
                 sentence_pooling: str = "pooler", finetune: str = "partial", project: bool | None = None,
                 sentence_norm: str = "none", dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if sentence_pooling not in SENTENCE_POOLINGS:
            raise ValueError(f"unknown sentence_pooling {sentence_pooling!r}; use one of {SENTENCE_POOLINGS}")
        if sentence_norm not in SENTENCE_NORMS:
            raise ValueError(f"unknown sentence_norm {sentence_norm!r}; use one of {SENTENCE_NORMS}")
        self.sentence_norm = sentence_norm
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"unknown finetune mode {finetune!r}; use one of {FINETUNE_MODES}")
        dtype = jnp.dtype(dtype)
        self.backbone_kind = backbone
        self.sentence_pooling = sentence_pooling
        self.finetune = finetune
        self.out_dim = int(out_dim)
        self.backbone = build_backbone(backbone, checkpoint, dtype=dtype, rngs=rngs)
        hidden = self.backbone.hidden_size
        pooled = self.backbone.pooled_size if sentence_pooling == "pooler" else hidden
        self.token_proj = self._head("token", hidden, project, dtype, rngs)
        self.sentence_proj = self._head("sentence", pooled, project, dtype, rngs)

    def _head(self, what: str, width: int, project: bool | None, dtype, rngs: nnx.Rngs) -> nnx.Linear | None:
        if project is None:
            project = width != self.out_dim
        if not project and width != self.out_dim:
            raise ValueError(f"the {what} output is {width} wide but out_dim is {self.out_dim}: set project=True "
                             "(or None) to add a projection")
        return dense(width, self.out_dim, dtype=dtype, rngs=rngs) if project else None

    @property
    def num_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    def trainable_filter(self, mode: str | None = None) -> nnx.filterlib.Filter:
        """The NNX filter of parameters trained under `mode` (default: this encoder's `finetune`)."""
        return trainable_filter(mode or self.finetune, self.num_layers)

    def __call__(self, input_ids: Array, attention_mask: Array, *, deterministic: bool = True
                 ) -> tuple[Array, Array]:
        """int [B, T] ids and mask (1 = real token) -> (tokens [B, T, out_dim], sentence [B, out_dim])."""
        hidden, pooled = self.backbone(input_ids, attention_mask, deterministic=deterministic)
        return self.project(hidden, pooled, attention_mask)

    def project(self, hidden: Array, pooled: Array, attention_mask: Array) -> tuple[Array, Array]:
        """The heads on top of the backbone's (hidden, pooled) outputs. With a frozen backbone
        (finetune='none') a trainer can run `backbone` once without gradients and only this with them."""
        sentence = pooled if self.sentence_pooling == "pooler" else masked_mean(hidden, attention_mask)
        tokens = self.token_proj(hidden) if self.token_proj is not None else hidden
        if self.sentence_proj is not None:
            sentence = self.sentence_proj(sentence)
        if self.sentence_norm == "layernorm":
            sentence = standardize(sentence)
        return tokens, sentence
