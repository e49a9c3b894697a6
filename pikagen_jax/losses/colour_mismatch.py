"""Colour-mismatched real pairs: a discriminator term that can only be met by reading the colours the text names.

DF-GAN's discriminator already rejects (real sprite, another example's caption), but another caption is another
species, so D can tell the pair apart from the species alone and never needs to check colours. Here the negative
is the real sprite with its hues turned by a random angle, paired with its *own* caption, and it takes a share w
(`loss.colour_mismatch`, in [0, 1]) of the mismatched-text term:

    L_D = hinge(real) + ½ hinge(fake) + ½ [(1 - w) hinge(real, mismatched text) + w hinge(turned real, own text)]
    hinge(turned real, own text) = Σ_b m_b · relu(1 + D(turn_hue(x_b, θ_b), s_b)) / max(Σ_b m_b, 1),  θ_b ~ U[90°, 270°]

Taking a share keeps the negatives' total weight at 1, as in DF-GAN. Added on top instead (a weight of 1 beside the
mismatched-text term), the negatives outweigh the real term 2 to 1 and D settles on calling everything fake (real
logits near -1 within 100 steps; test KID 0.341 vs 0.262 at 15 min, BENCHMARKS.md).

With `data.captions.recolour` the real batch already holds recoloured sprites whose colour phrase names their new
colours, so "recoloured-looking" is not a sign of a negative: only the text can say which hue is right. The
generator then gets, through D, a gradient towards the colours its caption names. m_b = 1 for examples whose
colours the turn visibly changes (grey, white and black sprites are unchanged and are left out).

The turn is a rotation of RGB space about its grey axis (Rodrigues' formula, a 3x3 matrix per image): greys,
the white background and black outlines stay exactly where they are; other colours move around the colour
wheel (120° maps red to green to blue) and are clipped back into the image range. It is a cheap, in-graph
relative of the HSV turn the data pipeline uses (`data.colours.rotate_hue`).

Measured (15 min side by side, phrase + recolour + colour weight 50, BENCHMARKS.md): w = 0.5 does not help (KID
0.254 vs 0.248, colour words followed 26.2 vs 25.0 %, 10 % slower steps): at this budget D hardly reads its text
(`bench/discriminator_colour_probe.py`). Off by default.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

MIN_TURN_DEGREES, MAX_TURN_DEGREES = 90.0, 270.0
MOVED = 0.25  # a pixel moved if a channel changed by more than this ([-1, 1] range: 1/8 of it)
MIN_MOVED_SHARE = 0.05  # an example counts as a colour negative if at least this share of its pixels moved


def check_share(share: float) -> float:
    """`loss.colour_mismatch` as a float in [0, 1], or a ValueError naming the field."""
    share = float(share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"loss.colour_mismatch={share} must be in [0, 1]: the share of the mismatched-text "
                         "negatives given to hue-turned real sprites with their own text (0 = off)")
    return share


def grey_axis_rotation(degrees: Array) -> Array:
    """[..., 3, 3] matrices rotating RGB vectors by `degrees` about the grey axis (1, 1, 1)/√3."""
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))[..., None, None]
    u = jnp.full((3,), 1.0 / jnp.sqrt(3.0), jnp.float32)
    cross = jnp.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]], jnp.float32)
    return jnp.cos(theta) * jnp.eye(3) + jnp.sin(theta) * cross + (1.0 - jnp.cos(theta)) * jnp.outer(u, u)


def turn_hue(images: Array, degrees: Array, low: float = -1.0, high: float = 1.0) -> Array:
    """Rotates each image's colours about the grey axis: `images` [B, H, W, 3] in [low, high] (a range whose grey
    axis passes through the origin: [-1, 1] or [0, 1]), `degrees` [B]; clipped back into the range."""
    rotation = grey_axis_rotation(degrees).astype(images.dtype)  # [B, 3, 3]
    turned = jnp.einsum("bhwc,bdc->bhwd", images, rotation)
    return jnp.clip(turned, low, high)


def hue_turned_negatives(images: Array, key: Array) -> tuple[Array, Array]:
    """(`images` with hues turned by θ ~ U[90°, 270°] each, a float32 [B] mask of those the turn visibly changed)."""
    degrees = jax.random.uniform(key, (images.shape[0],), jnp.float32, MIN_TURN_DEGREES, MAX_TURN_DEGREES)
    turned = turn_hue(images, degrees)
    moved = jnp.max(jnp.abs(turned - images), axis=-1).astype(jnp.float32) > MOVED  # [B, H, W]
    mask = (jnp.mean(moved.astype(jnp.float32), axis=(1, 2)) >= MIN_MOVED_SHARE).astype(jnp.float32)
    return jax.lax.stop_gradient(turned), mask


def colour_mismatch_hinge(logits: Array, mask: Array) -> Array:
    """Masked mean of relu(1 + D(turned real, own text)) over the examples that count (0 when none do);
    `logits` [B] or [B, patches] (a projected D's patch logits are averaged per example first)."""
    hinge = jax.nn.relu(1.0 + logits.astype(jnp.float32)).reshape(logits.shape[0], -1).mean(axis=1)
    return jnp.sum(hinge * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def with_colour_share(loss: Array, parts: dict[str, Array], turned_logits: Array, mask: Array,
                      share: float) -> tuple[Array, dict[str, Array]]:
    """D's `loss` and `parts` (from `losses.gan.d_hinge_loss`, with 'd_mismatch') after moving `share` of the
    mismatched-text term's weight ½ to the hue-turned sprites' hinge; adds their parts to the log."""
    colour = colour_mismatch_hinge(turned_logits, mask)
    return loss + 0.5 * share * (colour - parts["d_mismatch"]), {
        **parts, "d_colour_mismatch": colour, "colour_negatives": jnp.mean(mask)}
