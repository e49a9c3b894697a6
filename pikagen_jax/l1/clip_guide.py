"""A frozen Hugging Face CLIP model for the seed's CLIP loss and CLIP score, run by PyTorch on the host.

The project has no JAX CLIP image tower (and no CLIP weights exist offline), so the CLIP image and text
towers run in PyTorch (`transformers.CLIPModel`, local directory or hub name) and JAX calls them through
`jax.pure_callback`. The image embedding gets a `custom_vjp` whose backward pass is PyTorch's
vector-Jacobian product, so generated images can be trained towards their captions inside the jitted
step. Each call is a host round trip: fine for the seed's small model, a bottleneck on fast accelerators.

    clip = TorchClip("/path/to/clip-vit-base-patch32")
    embed = clip.embed_fn(wordpiece_tokenizer)        # (images [-1,1], token_ids) -> (img_emb, txt_emb)
    scores = clip.score(images, captions)             # cosine per example (the seed's CLIP score)

Texts reach CLIP as decoded from the training batch's WordPiece ids (lowercased, accents stripped, what the
BERT stage sees) and re-tokenized with CLIP's BPE; the CLIP score uses the caption strings themselves.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pikagen_jax.data.tokenizers import Tokenizer, make_tokenizer
from pikagen_jax.losses.l1_clip import clip_image_preprocess, cosine_similarity

CLIP_MAX_LENGTH = 77


class TorchClip:
    """A frozen `transformers.CLIPModel` on the host CPU: embeddings, and the image embedding's VJP."""

    def __init__(self, checkpoint: str):
        try:
            import torch
            import transformers
        except ImportError as error:
            raise ImportError("the CLIP loss / CLIP score run a Hugging Face CLIP model with PyTorch: "
                              "`pip install torch transformers` (see pyproject's test extra for versions)") from error
        from pikagen_jax.models import hf_weights

        self._torch = torch
        directory = hf_weights.resolve_checkpoint(checkpoint)
        self.model = transformers.CLIPModel.from_pretrained(str(directory)).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        text_positions = self.model.config.text_config.max_position_embeddings
        self.tokenizer = make_tokenizer("clip", None, min(CLIP_MAX_LENGTH, text_positions))
        if self.tokenizer.vocab_size > self.model.config.text_config.vocab_size:
            raise ValueError(f"CLIP checkpoint {checkpoint!r} embeds {self.model.config.text_config.vocab_size} "
                             f"tokens, fewer than CLIP's BPE vocabulary ({self.tokenizer.vocab_size})")
        self.image_size = int(self.model.config.vision_config.image_size)
        self.embed_dim = int(self.model.config.projection_dim)

    # ------------------------------------------------------------------ host functions (numpy in, numpy out)

    def _image_features(self, pixels):
        """pixels: torch [B, 3, S, S] CLIP-normalised -> projected embeddings [B, E]."""
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled)

    def text_embeddings(self, captions: Sequence[str]) -> np.ndarray:
        """Projected CLIP text embeddings [B, E] float32 of caption strings."""
        ids, mask = self.tokenizer(list(captions))
        with self._torch.no_grad():
            out = self.model.text_model(input_ids=self._torch.as_tensor(ids, dtype=self._torch.long),
                                        attention_mask=self._torch.as_tensor(mask, dtype=self._torch.long))
            return self.model.text_projection(out.pooler_output).numpy().astype(np.float32)

    def image_embeddings(self, pixels: np.ndarray) -> np.ndarray:
        """CLIP-normalised NHWC pixels [B, S, S, 3] (from `clip_image_preprocess`) -> embeddings [B, E]."""
        with self._torch.no_grad():
            return self._image_features(self._nchw(pixels)).numpy().astype(np.float32)

    def image_embeddings_vjp(self, pixels: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        """d(<cotangent, image_embeddings(pixels)>)/d pixels, NHWC float32 (the backward pass for JAX)."""
        x = self._nchw(pixels).requires_grad_(True)
        features = self._image_features(x)
        (grad,) = self._torch.autograd.grad(features, x, grad_outputs=self._torch.as_tensor(
            np.array(cotangent, np.float32)))
        return grad.numpy().transpose(0, 2, 3, 1).astype(np.float32)

    def _nchw(self, pixels: np.ndarray):
        return self._torch.as_tensor(np.array(np.asarray(pixels, np.float32).transpose(0, 3, 1, 2)))  # writable

    # ------------------------------------------------------------------ JAX side

    def image_embed_jax(self) -> Callable[[jax.Array], jax.Array]:
        """A JAX function: images [B, H, W, 3] in [-1, 1] -> CLIP image embeddings [B, E], differentiable."""

        @jax.custom_vjp
        def embed_pixels(pixels):
            shape = jax.ShapeDtypeStruct((pixels.shape[0], self.embed_dim), jnp.float32)
            return jax.pure_callback(self.image_embeddings, shape, pixels, vmap_method="sequential")

        def forward(pixels):
            return embed_pixels(pixels), pixels

        def backward(pixels, cotangent):
            shape = jax.ShapeDtypeStruct(pixels.shape, jnp.float32)
            return (jax.pure_callback(self.image_embeddings_vjp, shape, pixels, cotangent.astype(jnp.float32),
                                      vmap_method="sequential"),)

        embed_pixels.defvjp(forward, backward)
        return lambda images: embed_pixels(clip_image_preprocess(images, self.image_size))

    def embed_fn(self, wordpiece: Tokenizer) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
        """`(images [-1, 1], WordPiece token_ids [B, T]) -> (image_emb, text_emb)` for the jitted train step.

        The texts are decoded from the ids with `wordpiece.decode` on the host, then embedded by CLIP."""
        image_embed = self.image_embed_jax()

        def texts_from_ids(ids: np.ndarray) -> np.ndarray:
            return self.text_embeddings([wordpiece.decode(row) for row in np.asarray(ids)])

        def embed(images: jax.Array, token_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
            shape = jax.ShapeDtypeStruct((token_ids.shape[0], self.embed_dim), jnp.float32)
            text_emb = jax.pure_callback(texts_from_ids, shape, token_ids, vmap_method="sequential")
            return image_embed(images), text_emb

        return embed

    def score(self, images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        """CLIP score per example: cosine of the image and caption embeddings (images [B, H, W, 3] in [-1, 1])."""
        pixels = np.asarray(clip_image_preprocess(jnp.asarray(images), self.image_size))
        return np.asarray(cosine_similarity(jnp.asarray(self.image_embeddings(pixels)),
                                            jnp.asarray(self.text_embeddings(captions))))
