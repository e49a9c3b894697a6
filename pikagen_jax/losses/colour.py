"""Paired colour loss: a generated sprite should have the colours of the real sprite its caption belongs to.

The GAN's discriminator sees the text, but on 718 Pokédex captions it learns little about colour (colour match
of `:cpu` at 60 min sits at its shuffled floor, 44.2 vs 44.3 %; `metrics/alignment.py`). Every training caption
comes with its species' real sprite, so the generator can be told directly which colours that caption's sprite
has: the loss is the sliced Wasserstein-1 distance between the two images' pixel-colour distributions, over fixed
directions in RGB space. It compares colour proportions (white background included, so the figure's size too)
and not where the colours are, so it does not pull the generator towards the real sprite's pose.

Measured (15 min of `:cpu`, BENCHMARKS.md): weight 5 keeps KID and brings the colours closer to sprites' overall,
but not per caption: the generator still ignores its text (`metrics.alignment.text_influence` stays ~0.03).
Off by default.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# the three channels and the four diagonals of the RGB cube, unit length
_DIRECTIONS = np.concatenate([np.eye(3), np.array([[1, 1, 1], [1, -1, 1], [1, 1, -1], [-1, 1, 1]]) / np.sqrt(3.0)])
COLOUR_DIRECTIONS = _DIRECTIONS.T.astype(np.float32)  # [3, 7]


def colour_distribution_loss(generated: Array, real: Array) -> tuple[Array, dict[str, Array]]:
    """Mean over the batch and `COLOUR_DIRECTIONS` of the 1-D Wasserstein-1 distance between the projected pixel
    colours of `generated[i]` and `real[i]` (both [B, H, W, 3], same size, any range); float32.

    Each image's pixels are projected on each direction and sorted; the distance is the mean absolute difference
    of the sorted values (exact W1 between two empirical distributions with the same number of points)."""
    if generated.shape != real.shape:
        raise ValueError(f"generated {generated.shape} and real {real.shape} images must have the same shape")
    directions = jnp.asarray(COLOUR_DIRECTIONS)

    def sorted_projections(images):
        pixels = images.astype(jnp.float32).reshape(images.shape[0], -1, images.shape[-1])
        return jnp.sort(pixels @ directions, axis=1)  # [B, H*W, directions]

    loss = jnp.mean(jnp.abs(sorted_projections(generated) - sorted_projections(jax.lax.stop_gradient(real))))
    return loss, {"g_colour": loss}
