"""DiffAugment (Zhao et al. 2020): the same differentiable augmentations on real and generated images before the
discriminator, so a data-starved D cannot memorise the few real sprites and G still gets gradients through them.

    images = diffaugment(images, key, "color,translation,cutout")          # jit-friendly, differentiable
    params = sample_params(key, images.shape, policy)                       # or draw once, apply to several
    images = apply_params(images, params, policy)

Per sample: brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5) (`color`); an integer shift
of up to 1/8 of the size in each direction (`translation`); a zeroed square of 1/5 of the size (`cutout`) — the
paper's policies with the ranges Projected GANs use (the DiffAugment paper's cutout is 1/2 of the size). `strength` scales every range (0 = the identity, 1 = the paper's). Translation fills
with white, the sprites' background (the paper pads with zeros); cutout zeroes as in the paper.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.2
TRANSLATION_FILL = 1.0  # white


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' -> (); unknown names raise ValueError."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment polic{'ies' if len(unknown) > 1 else 'y'} {unknown}: use a "
                         f"comma-separated subset of {POLICIES}, e.g. --config.train.diffaugment=color,translation,cutout")
    return names


def sample_params(key: jax.Array, shape: tuple[int, ...], policy: str, strength: float = 1.0) -> dict[str, Array]:
    """One set of augmentation parameters per image of a batch of `shape` [B, H, W, C]."""
    batch, height, width = shape[0], shape[1], shape[2]
    names = parse_policy(policy)
    keys = jax.random.split(key, 7)
    params: dict[str, Array] = {}
    if "color" in names:
        params["brightness"] = (jax.random.uniform(keys[0], (batch,)) - 0.5) * strength
        params["saturation"] = 1.0 + (jax.random.uniform(keys[1], (batch,)) * 2.0 - 1.0) * strength
        params["contrast"] = 1.0 + (jax.random.uniform(keys[2], (batch,)) - 0.5) * strength
    if "translation" in names:
        max_y, max_x = (int(size * TRANSLATION_RATIO * strength + 0.5) for size in (height, width))
        params["shift_y"] = jax.random.randint(keys[3], (batch,), -max_y, max_y + 1)
        params["shift_x"] = jax.random.randint(keys[4], (batch,), -max_x, max_x + 1)
    if "cutout" in names:
        params["cutout_y"] = jax.random.randint(keys[5], (batch,), 0, height)
        params["cutout_x"] = jax.random.randint(keys[6], (batch,), 0, width)
        params["cutout_size"] = jnp.asarray((int(height * CUTOUT_RATIO * strength + 0.5),
                                             int(width * CUTOUT_RATIO * strength + 0.5)), jnp.int32)
    return params


def _color(x: Array, params: dict[str, Array]) -> Array:
    per_sample = lambda v: v.astype(x.dtype)[:, None, None, None]  # noqa: E731
    x = x + per_sample(params["brightness"])
    mean = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - mean) * per_sample(params["saturation"]) + mean
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * per_sample(params["contrast"]) + mean


def _translate(x: Array, shift_y: Array, shift_x: Array) -> Array:
    """Shift each image by its own integer offset (content moves by +shift), filling with white."""
    _, height, width, channels = x.shape
    pad_y, pad_x = height, width  # any shift fits
    padded = jnp.pad(x, ((0, 0), (pad_y, pad_y), (pad_x, pad_x), (0, 0)), constant_values=TRANSLATION_FILL)

    def one(image, dy, dx):
        return jax.lax.dynamic_slice(image, (pad_y - dy, pad_x - dx, 0), (height, width, channels))

    return jax.vmap(one)(padded, shift_y, shift_x)


def _cutout(x: Array, center_y: Array, center_x: Array, size: Array) -> Array:
    _, height, width, _ = x.shape
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    top, left = center_y[:, None, None] - size[0] // 2, center_x[:, None, None] - size[1] // 2
    inside = (rows >= top) & (rows < top + size[0]) & (cols >= left) & (cols < left + size[1])
    return x * jnp.logical_not(inside)[..., None].astype(x.dtype)


def apply_params(images: Array, params: dict[str, Array], policy: str) -> Array:
    """Augments images [B, H, W, C] with given per-sample parameters (differentiable in the images)."""
    names = parse_policy(policy)
    x = images
    if "color" in names:
        x = _color(x, params)
    if "translation" in names:
        x = _translate(x, params["shift_y"], params["shift_x"])
    if "cutout" in names:
        x = _cutout(x, params["cutout_y"], params["cutout_x"], params["cutout_size"])
    return x


def diffaugment(images: Array, key: jax.Array, policy: str, strength: float = 1.0) -> Array:
    """Augments each image of a batch with its own random parameters from `key` (exactly the identity for
    policy '' or strength 0)."""
    if not parse_policy(policy) or strength == 0:
        return images
    return apply_params(images, sample_params(key, images.shape, policy, strength), policy)
