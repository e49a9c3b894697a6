"""CLIP score of generated images against their captions, with the JAX CLIP model.

    scorer = ClipScorer.from_pretrained("/path/to/clip-vit-base-patch32")
    cosines = scorer.score(images, captions)        # per example (seed 000's CLIP score is their mean)
    torchmetrics_clip_score(cosines)                # torchmetrics' CLIPScore (seed 002's)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from pikagen_jax.data.tokenizers import Tokenizer
from pikagen_jax.losses.l1_clip import cosine_similarity
from pikagen_jax.models.clip import CLIPModel


def torchmetrics_clip_score(cosines: np.ndarray) -> float:
    """torchmetrics' `CLIPScore` of image-caption cosines: max(100 · mean(cos), 0).

    torchmetrics accumulates 100·cos per pair and clamps the mean at 0 in `compute()` (its docs write the
    clamp per pair; the code clamps the mean). The two agree whenever no cosine is negative, as with trained
    CLIP models on real captions."""
    cosines = np.asarray(cosines, np.float64)
    if cosines.ndim != 1 or not len(cosines):
        raise ValueError(f"need a non-empty 1-D array of cosines, got shape {cosines.shape}")
    return float(max(100.0 * cosines.mean(), 0.0))


class ClipScorer:
    """A frozen `CLIPModel` and its tokenizer behind a host (numpy) interface; the embeddings run jitted."""

    def __init__(self, model: CLIPModel, tokenizer: Tokenizer | None = None):
        self.model = model
        self.tokenizer = tokenizer or model.tokenizer()
        graphdef, _ = nnx.split(model)
        self._image = jax.jit(lambda state, images: nnx.merge(graphdef, state).image_embeds(images))
        self._text = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state).text_embeds(ids, mask))

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path) -> "ClipScorer":
        """From a Hugging Face CLIPModel checkpoint (local directory, or hub name with internet)."""
        return cls(CLIPModel.from_pretrained(checkpoint))

    def image_embeddings(self, images: np.ndarray) -> np.ndarray:
        """Images [B, H, W, 3] in [-1, 1] -> projected CLIP image embeddings [B, E] float32."""
        return np.asarray(self._image(nnx.state(self.model), np.asarray(images, np.float32)))

    def text_embeddings(self, captions: Sequence[str]) -> np.ndarray:
        """Caption strings -> projected CLIP text embeddings [B, E] float32."""
        ids, mask = self.tokenizer(list(captions))
        return np.asarray(self._text(nnx.state(self.model), ids, mask))

    def score(self, images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        """Cosine of each image with its caption -> [B] float32 (images [B, H, W, 3] in [-1, 1])."""
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions")
        return np.asarray(cosine_similarity(self.image_embeddings(images), self.text_embeddings(captions)))
