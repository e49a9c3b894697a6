"""A trained sprite-caption alignment encoder (configs/alignment.py), ready to score any system's images.

    scorer = load_alignment_scorer("workdirs/alignment")      # its best checkpoint by val R-precision
    image_emb = scorer.embed_images(images)                    # [N, E] unit length, images in [-1, 1]
    text_emb = scorer.embed_captions(["A small blue turtle ..."])

The frozen parts — the FID Inception-v3 (pool3 features, with a colour histogram of the sprite when the run's
`model.colour_bins` > 0) and the text backbone named by the run's config — are
rebuilt from their offline packages; only the trained heads come from the checkpoint. Lives in the training
layer because every system's evaluation uses it (`pikagen_jax.evaluate`, the GAN's in-training metric).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pikagen_jax.data.pipeline import tokenizer_from_config
from pikagen_jax.errors import UserError
from pikagen_jax.metrics.inception import InceptionV3
from pikagen_jax.models.alignment import AlignmentHeads, colour_feature_dim, colour_histogram_features
from pikagen_jax.models.text_encoder import build_backbone, masked_mean

TRAIN_COMMAND = "python launch.py --config=configs/alignment.py --workdir={workdir}"
INCEPTION_FEATURE_DIM = 2048


def colour_bins(config: ml_collections.ConfigDict) -> int:
    """`model.colour_bins` (0 for runs saved before the field existed: pool3 features only)."""
    return int(config.model.get("colour_bins", 0))


def image_feature_dim(config: ml_collections.ConfigDict) -> int:
    """Width of the frozen image features the image head reads: pool3, and the colour histogram if enabled."""
    return INCEPTION_FEATURE_DIM + colour_feature_dim(colour_bins(config))


def image_features(inception: nnx.Module, images: jax.Array, bins: int) -> jax.Array:
    """The frozen image features of sprites in [-1, 1]: Inception pool3 [N, 2048], followed by the foreground
    colour histogram [N, bins³ + 1] when `bins` > 0."""
    pool3 = inception(images)
    if not bins:
        return pool3
    return jnp.concatenate([pool3.astype(jnp.float32), colour_histogram_features(images, bins)], axis=-1)


class AlignmentEncoderMissing(UserError, FileNotFoundError):
    """No trained alignment encoder where one was asked for."""


def build_frozen_networks(config: ml_collections.ConfigDict) -> tuple[InceptionV3, nnx.Module]:
    """The FID Inception-v3 (fid-helper weights) and the configured text backbone, both frozen."""
    from pikagen_jax.metrics.inception_weights import load_fid_inception

    backbone = build_backbone(config.text.backbone, config.text.checkpoint, rngs=nnx.Rngs(0))
    return load_fid_inception(config.model.inception), backbone


def build_heads(config: ml_collections.ConfigDict, text_dim: int, rngs: nnx.Rngs) -> AlignmentHeads:
    m = config.model
    return AlignmentHeads(image_dim=image_feature_dim(config), text_dim=text_dim, embed_dim=m.embed_dim,
                          hidden=m.hidden, dropout=m.dropout, rngs=rngs)


def text_features(backbone: nnx.Module, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """The frozen caption feature: the masked mean of the backbone's token states."""
    hidden, _ = backbone(ids, mask)
    return masked_mean(hidden, mask)


@dataclasses.dataclass
class AlignmentScorer:
    """A trained alignment encoder: embeds images and captions into one unit-length space."""

    config: ml_collections.ConfigDict
    inception: InceptionV3
    backbone: nnx.Module
    heads: AlignmentHeads
    step: int
    batch_size: int = 50

    def __post_init__(self):
        self.tokenizer = tokenizer_from_config(self.config)
        bins = colour_bins(self.config)
        self._images = nnx.jit(lambda inception, heads, x: heads.embed_images(image_features(inception, x, bins)))
        self._texts = nnx.jit(lambda backbone, heads, i, m: heads.embed_texts(text_features(backbone, i, m)))

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """Images [N, H, W, 3] in [-1, 1] -> [N, E] (fixed-size batches: one compilation)."""
        from pikagen_jax.training.sampler import generate_in_batches

        return generate_in_batches(lambda _, x: self._images(self.inception, self.heads, jnp.asarray(x)),
                                   (np.asarray(images, np.float32),), self.batch_size)

    def embed_tokens(self, token_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        from pikagen_jax.training.sampler import generate_in_batches

        return generate_in_batches(lambda _, i, m: self._texts(self.backbone, self.heads, jnp.asarray(i), jnp.asarray(m)),
                                   (np.asarray(token_ids), np.asarray(attention_mask)), self.batch_size)

    def embed_captions(self, captions: Sequence[str]) -> np.ndarray:
        """Caption strings -> [N, E] (tokenized as the encoder was trained)."""
        return self.embed_tokens(*self.tokenizer(list(captions)))


def load_alignment_scorer(workdir: str | Path, *, best: bool = True, batch_size: int = 50) -> AlignmentScorer:
    """The encoder trained in `workdir` (its best checkpoint by val R-precision, else the latest).

    Raises AlignmentEncoderMissing, naming the command that trains one, when `workdir` holds none."""
    from pikagen_jax.training.checkpointing import Checkpointer

    workdir = Path(workdir)
    hint = f"train one with `{TRAIN_COMMAND.format(workdir=workdir)}`"
    if not (workdir / "checkpoints").is_dir():
        raise AlignmentEncoderMissing(f"no trained alignment encoder in {workdir}: {hint}")
    latest = Checkpointer(workdir, read_only=True)
    if latest.latest_step() is None:
        raise AlignmentEncoderMissing(f"no checkpoint of an alignment encoder in {workdir}: {hint}")
    config = ml_collections.ConfigDict(latest.restore_config())
    if config.get("system") != "alignment":
        raise AlignmentEncoderMissing(f"{workdir} holds a {config.get('system')!r} run, not an alignment encoder: "
                                      f"{hint}")
    checkpointer = Checkpointer.from_config(workdir, config, read_only=True)
    use_best = best and checkpointer.best_step() is not None
    inception, backbone = build_frozen_networks(config)
    heads = build_heads(config, backbone.config.hidden_size, nnx.Rngs(0))
    step = checkpointer.latest_intact_step(use_best)
    nnx.update(heads, checkpointer.restore({"heads": heads}, step=step, best=use_best)["heads"])
    return AlignmentScorer(config, inception, backbone, heads, step, batch_size)
