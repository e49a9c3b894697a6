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


def _check_same_shape(generated: Array, real: Array) -> None:
    if generated.shape != real.shape:
        raise ValueError(f"generated {generated.shape} and real {real.shape} images must have the same shape")


def colour_distribution_loss(generated: Array, real: Array) -> tuple[Array, dict[str, Array]]:
    """Mean over the batch and `COLOUR_DIRECTIONS` of the 1-D Wasserstein-1 distance between the projected pixel
    colours of `generated[i]` and `real[i]` (both [B, H, W, 3], same size, any range); float32.

    Each image's pixels are projected on each direction and sorted; the distance is the mean absolute difference
    of the sorted values (exact W1 between two empirical distributions with the same number of points)."""
    _check_same_shape(generated, real)
    directions = jnp.asarray(COLOUR_DIRECTIONS)

    def sorted_projections(images):
        pixels = images.astype(jnp.float32).reshape(images.shape[0], -1, images.shape[-1])
        return jnp.sort(pixels @ directions, axis=1)  # [B, H*W, directions]

    loss = jnp.mean(jnp.abs(sorted_projections(generated) - sorted_projections(jax.lax.stop_gradient(real))))
    return loss, {"g_colour": loss}


# two orthonormal directions across RGB's grey axis: a pixel's coordinates on them are its chroma as a vector
# (direction = hue, length = chroma); white, grey and black pixels, the background and outlines, sit at the origin
CHROMA_PLANE = (np.array([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]) / np.sqrt([[2.0], [6.0]])).T.astype(np.float32)


def mean_chroma(images: Array) -> Array:
    """Each image's mean chroma vector [B, 2]: its pixels' colours ([B, H, W, 3], any offset, here [-1, 1])
    projected on `CHROMA_PLANE` and averaged over all pixels. It is zero for an image in white, greys and black;
    its direction is the hue the coloured pixels share, its length how much of the image has it and how
    saturated: a multicoloured figure's hues cancel, a one-colour figure's add up."""
    pixels = images.astype(jnp.float32).reshape(images.shape[0], -1, images.shape[-1])
    return jnp.mean(pixels @ jnp.asarray(CHROMA_PLANE), axis=1)


def mean_chroma_loss(generated: Array, real: Array) -> tuple[Array, dict[str, Array]]:
    """Mean over the batch and the two chroma directions of |mean_chroma(generated) - mean_chroma(real)|
    (gradients to `generated` only; float32). Unlike `colour_distribution_loss`, which matches every pixel's colour
    (mostly white background), it asks only for the figure's overall hue: a caption naming red wants a figure whose
    coloured pixels are mostly red, whatever its outlines and background."""
    _check_same_shape(generated, real)
    loss = jnp.mean(jnp.abs(mean_chroma(generated) - mean_chroma(jax.lax.stop_gradient(real))))
    return loss, {"g_chroma": loss}
