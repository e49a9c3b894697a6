"""The encoder–attention–decoder text-to-sprite model of seeds 000/001 (`configs/l1.py`).

    model = L1Model(L1ModelConfig(), rngs=nnx.Rngs(0))        # seed 001's final configuration
    images = model(input_ids, attention_mask)                 # [B, 215, 215, 3] in (−1, 1)
    model.eval(); images = model(input_ids, attention_mask, z)

BERT (BERT-mini shape) -> optional Gaussian noise (training only) -> Transformer encoder -> H [B, T, D];
AttentionBlock(H) -> context c; ImageGenerator(c, z, H) -> image. Train/eval mode follows NNX:
`model.train()` / `model.eval()` switch dropout, the noise and BatchNorm statistics together (a call's
`deterministic=` argument overrides the mode). Rng streams: 'params', 'dropout', 'noise' (the BERT-output
noise) and 'latent' (z when the caller gives none); missing streams fall back to 'default', so
`nnx.Rngs(0)` is enough.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models.l1_decoder import ImageGenerator
from pikagen_jax.models.l1_encoder import AttentionBlock, TextEncoder, masked_mean_pool

Array = jax.Array
OUTPUT_PRIORS = ("none", "train_median")


@dataclasses.dataclass(frozen=True)
class L1ModelConfig:
    """Architecture of the seed 000/001 model; defaults are seed 001's final configuration.

    bert_checkpoint: 'bert_mini' (random init, BERT-mini shape), 'tiny', 'minilm' (pretrained offline
      MiniLM-L6) or a Hugging Face BERT checkpoint directory / hub name.
    bert_dropout: overrides BERT's internal dropout rates (None keeps the checkpoint's).
    noise_std: std of the Gaussian noise added to the BERT outputs in training (0 disables it; the seed
      calls it optional and gives no value).
    attention_dim: width of the attention blocks' queries and of the context vector c (the seed's
      decoder_dim). z_dim: noise width (the seed gives none; 100 as in DCGAN).
    decoder_channels: starting map width, then one entry per ×2 stage.
    output_prior: 'none' (the seed: tanh output) or 'train_median': the decoder predicts a residual on the
      per-pixel median of the training sprites (set by the trainer; see `ImageGenerator`).
    """

    bert_checkpoint: str = "bert_mini"
    bert_dropout: float | None = None
    encoder_layers: int = 2
    encoder_heads: int = 4
    encoder_ff_dim: int = 1024
    encoder_dropout: float = 0.3
    noise_std: float = 0.0
    attention_dim: int = 256
    attention_heads: int = 4
    attention_dropout: float = 0.3
    z_dim: int = 100
    decoder_channels: tuple[int, ...] = (1024, 512, 256, 128, 64)
    base_size: int = 8
    image_size: int = 215
    final_kernel: int = 4
    decoder_dropout: float = 0.3
    output_prior: str = "none"

    def __post_init__(self):
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        for name in ("encoder_dropout", "attention_dropout", "decoder_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("encoder_heads", "encoder_ff_dim", "attention_dim", "attention_heads", "z_dim", "base_size",
                     "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.output_prior not in OUTPUT_PRIORS:
            raise ValueError(f"output_prior must be one of {OUTPUT_PRIORS}, got {self.output_prior!r}")
        if self.attention_dim % self.attention_heads:
            raise ValueError(f"attention_dim {self.attention_dim} is not divisible by attention_heads "
                             f"{self.attention_heads}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "L1ModelConfig":
        """From a dict / ml_collections ConfigDict with these field names; unknown names are an error."""
        values = dict(values)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown L1 model config keys {unknown}; known keys: {sorted(names)}")
        return cls(**values)

    @classmethod
    def tiny(cls, image_size: int = 215) -> "L1ModelConfig":
        """Small widths for tests (tiny BERT, 1 encoder layer, 4 narrow decoder stages), same geometry."""
        return cls(bert_checkpoint="tiny", encoder_layers=1, encoder_heads=2, encoder_ff_dim=16,
                   attention_dim=8, attention_heads=2, z_dim=4, decoder_channels=(8, 8, 4, 4, 4),
                   image_size=image_size)


class L1Model(nnx.Module):
    """Text -> sprite: TextEncoder -> AttentionBlock -> ImageGenerator (seed 000 §2.1)."""

    def __init__(self, config: L1ModelConfig | None = None, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        config = config or L1ModelConfig()
        dtype = jnp.dtype(dtype)
        self.config = config
        self.deterministic = False  # NNX train mode on construction; model.eval() sets True
        self.encoder = TextEncoder(config.bert_checkpoint, num_layers=config.encoder_layers,
                                   num_heads=config.encoder_heads, ff_dim=config.encoder_ff_dim,
                                   dropout=config.encoder_dropout, noise_std=config.noise_std,
                                   bert_dropout=config.bert_dropout, dtype=dtype, rngs=rngs)
        width = self.encoder.width
        self.attention = AttentionBlock(width, config.attention_dim, config.attention_dim,
                                        num_heads=config.attention_heads, dropout=config.attention_dropout,
                                        dtype=dtype, rngs=rngs)
        self.decoder = ImageGenerator(config.attention_dim, width, config.z_dim, channels=config.decoder_channels,
                                      base_size=config.base_size, image_size=config.image_size,
                                      final_kernel=config.final_kernel, attention_dim=config.attention_dim,
                                      attention_heads=config.attention_heads,
                                      attention_dropout=config.attention_dropout, dropout=config.decoder_dropout,
                                      output_prior=config.output_prior != "none", dtype=dtype, rngs=rngs)
        self.latent_rngs = rngs["latent"].fork()

    def sample_z(self, batch_size: int) -> Array:
        """Standard-normal noise [batch_size, z_dim] from the 'latent' stream."""
        return jax.random.normal(self.latent_rngs(), (batch_size, self.config.z_dim), jnp.float32)

    def word_weights(self, input_ids: Array, attention_mask: Array) -> Array:
        """How much the pooled query attends to each token, averaged over heads -> [B, T] (evaluation mode)."""
        tokens = self.encoder(input_ids, attention_mask, deterministic=True)
        query = masked_mean_pool(tokens, attention_mask)[:, None, :]
        weights = self.attention.attention.weights(query, tokens, attention_mask)  # [B, heads, 1, T]
        return jnp.mean(weights[:, :, 0, :], axis=1)

    def __call__(self, input_ids: Array, attention_mask: Array, z: Array | None = None, *,
                 deterministic: bool | None = None) -> Array:
        """int [B, T] token ids and attention mask (1 = real token), optional z [B, z_dim] (drawn from the
        'latent' stream when None) -> images [B, image_size, image_size, 3] float32 in (−1, 1)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {attention_mask.shape} differs from input_ids shape "
                             f"{input_ids.shape}; pass the tokenizer's mask for the same batch")
        batch = input_ids.shape[0]
        if z is None:
            z = self.sample_z(batch)
        elif z.shape != (batch, self.config.z_dim):
            raise ValueError(f"z must be [batch={batch}, z_dim={self.config.z_dim}], got shape {z.shape}")
        deterministic = self.deterministic if deterministic is None else deterministic
        tokens = self.encoder(input_ids, attention_mask, deterministic=deterministic)
        context = self.attention(tokens, attention_mask, deterministic=deterministic)
        return self.decoder(context, z, tokens, attention_mask, deterministic=deterministic)

