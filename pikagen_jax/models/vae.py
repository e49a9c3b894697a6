"""Convolutional VAE of the latent-diffusion system (seed 003 §1): images [B, S, S, 3] in [-1, 1] <->
latents [B, s, s, latent_channels].

Each downsampling is a stride-2 'SAME' convolution, so one halving maps a side n to ceil(n / 2). The
seed's 215 x 215 sprites take three halvings, 215 -> 108 -> 54 -> 27, a 27 x 27 x 8 latent (a factor of
~8 per side: 215 / 8 = 26.9, rounded up). The decoder upsamples back through the same sizes
(27 -> 54 -> 108 -> 215), so odd sizes round-trip exactly. By default the number of halvings follows from
the image size (`default_num_downsamples`): the fewest (at least 2) that bring the side to <= 32, i.e.
215 -> 27 (3 halvings), 128 -> 32 and 64 -> 16 (2 halvings), 256 -> 32 (3).

    vae = VAE(image_size=215, latent_channels=8, rngs=nnx.Rngs(0))
    recon, mean, logvar = vae(images, key)               # key=None: decode the posterior mean
    z = vae.encode_latents(images, key)                  # [B, 27, 27, 8], for diffusion training
    images = vae.decode(z)

Blocks: GroupNorm residual blocks, a self-attention block at the lowest resolution of both halves, and,
as the seed's decoder is text-conditioned, optional cross-attention there to text tokens (context_dim).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models.unet import Downsample, ResBlock, SpatialTransformer, Upsample, conv, group_norm

Array = jax.Array

MAX_LATENT_SIDE = 32
LOGVAR_RANGE = (-30.0, 20.0)


def latent_side(image_size: int, num_downsamples: int) -> int:
    """Side of the latent after `num_downsamples` ceil-halvings of `image_size` (215, 3 -> 27)."""
    side = int(image_size)
    for _ in range(num_downsamples):
        side = math.ceil(side / 2)
    return side


def level_sides(image_size: int, num_downsamples: int) -> list[int]:
    """Sides at every level, image first: (215, 3) -> [215, 108, 54, 27]."""
    return [latent_side(image_size, n) for n in range(num_downsamples + 1)]


def default_num_downsamples(image_size: int) -> int:
    """Fewest halvings (at least 2) that bring the side to <= 32: 64 -> 2, 128 -> 2, 215 -> 3, 256 -> 3."""
    if image_size < 8:
        raise ValueError(f"image_size {image_size} is too small for the VAE (need >= 8)")
    n = 2
    while latent_side(image_size, n) > MAX_LATENT_SIDE:
        n += 1
    return n


def _channel_widths(base_channels: int, channel_mults: Sequence[int] | None, num_downsamples: int | None,
                    image_size: int) -> list[int]:
    if channel_mults is not None:
        if num_downsamples is not None and num_downsamples != len(channel_mults) - 1:
            raise ValueError(f"channel_mults {tuple(channel_mults)} gives {len(channel_mults) - 1} downsamplings "
                             f"but num_downsamples={num_downsamples}; give one of them")
        return [base_channels * m for m in channel_mults]
    if num_downsamples is None:
        num_downsamples = default_num_downsamples(image_size)
    return [base_channels * min(2 ** level, 4) for level in range(num_downsamples + 1)]


class Encoder(nnx.Module):
    """Image [B, S, S, C] -> posterior mean and log-variance, each [B, s, s, latent_channels]."""

    def __init__(self, widths: Sequence[int], *, in_channels: int, latent_channels: int, num_res_blocks: int,
                 norm_groups: int, num_heads: int, dtype: Any, rngs: nnx.Rngs):
        self.conv_in = conv(in_channels, widths[0], dtype=dtype, rngs=rngs)
        self.blocks = nnx.List()
        width = widths[0]
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.blocks.append(ResBlock(width, level_width, norm_groups=norm_groups, dtype=dtype, rngs=rngs))
                width = level_width
            if level < len(widths) - 1:
                self.blocks.append(Downsample(width, dtype=dtype, rngs=rngs))
        self.mid_res1 = ResBlock(width, width, norm_groups=norm_groups, dtype=dtype, rngs=rngs)
        self.mid_attention = SpatialTransformer(width, num_heads=num_heads, norm_groups=norm_groups, dtype=dtype,
                                                rngs=rngs)
        self.mid_res2 = ResBlock(width, width, norm_groups=norm_groups, dtype=dtype, rngs=rngs)
        self.norm_out = group_norm(width, norm_groups, dtype=dtype, rngs=rngs)
        self.conv_out = conv(width, 2 * latent_channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h)
        h = self.mid_res2(self.mid_attention(self.mid_res1(h)))
        moments = self.conv_out(jax.nn.silu(self.norm_out(h))).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class Decoder(nnx.Module):
    """Latent [B, s, s, latent_channels] -> image [B, S, S, out_channels] in [-1, 1] (tanh)."""

    def __init__(self, widths: Sequence[int], sides: Sequence[int], *, out_channels: int, latent_channels: int,
                 num_res_blocks: int, norm_groups: int, num_heads: int, context_dim: int | None, dtype: Any,
                 rngs: nnx.Rngs):
        self.sides = tuple(sides)
        width = widths[-1]
        self.conv_in = conv(latent_channels, width, dtype=dtype, rngs=rngs)
        self.mid_res1 = ResBlock(width, width, norm_groups=norm_groups, dtype=dtype, rngs=rngs)
        self.mid_attention = SpatialTransformer(width, context_dim=context_dim, num_heads=num_heads,
                                                norm_groups=norm_groups, dtype=dtype, rngs=rngs)
        self.mid_res2 = ResBlock(width, width, norm_groups=norm_groups, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List()
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                self.blocks.append(ResBlock(width, widths[level], norm_groups=norm_groups, dtype=dtype, rngs=rngs))
                width = widths[level]
            if level > 0:
                self.blocks.append(Upsample(width, dtype=dtype, rngs=rngs))
        self.norm_out = group_norm(width, norm_groups, dtype=dtype, rngs=rngs)
        self.conv_out = conv(width, out_channels, dtype=dtype, rngs=rngs)

    def __call__(self, z: Array, context: Array | None = None, context_mask: Array | None = None) -> Array:
        h = self.mid_res1(self.conv_in(z))
        h = self.mid_res2(self.mid_attention(h, context, context_mask))
        sides = list(self.sides[:-1])  # upsampling targets, popped from the latent side outwards
        for block in self.blocks:
            if isinstance(block, Upsample):
                side = sides.pop()
                h = block(h, (side, side))
            else:
                h = block(h)
        return jnp.tanh(self.conv_out(jax.nn.silu(self.norm_out(h))).astype(jnp.float32))


class VAE(nnx.Module):
    """KL-regularised convolutional autoencoder (seed 003 stage 1).

    Args:
      image_size: side S of the square input images.
      latent_channels: channels of the latent (8 in seed 003).
      base_channels: width of the first level; level i is base_channels * channel_mults[i].
      channel_mults: per-level width multipliers (len - 1 downsamplings). Default: 1, 2, 4, 4, ... for
        `num_downsamples` halvings.
      num_downsamples: halvings (factor 2 ** n per side); None = `default_num_downsamples(image_size)`.
      num_res_blocks: GroupNorm residual blocks per level.
      context_dim: width of text token embeddings for the decoder's cross-attention; None = no text.
      norm_groups, num_heads: GroupNorm groups, attention heads.
      dtype: compute dtype; parameters are float32 and posterior moments / decoded images float32.
    """

    def __init__(self, image_size: int = 215, *, latent_channels: int = 8, base_channels: int = 64,
                 channel_mults: Sequence[int] | None = None, num_downsamples: int | None = None,
                 num_res_blocks: int = 2, context_dim: int | None = None, norm_groups: int = 32,
                 num_heads: int = 4, image_channels: int = 3, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        widths = _channel_widths(base_channels, channel_mults, num_downsamples, image_size)
        self.image_size = int(image_size)
        self.image_channels = image_channels
        self.latent_channels = latent_channels
        self.num_downsamples = len(widths) - 1
        self.sides = tuple(level_sides(self.image_size, self.num_downsamples))
        self.encoder = Encoder(widths, in_channels=image_channels, latent_channels=latent_channels,
                               num_res_blocks=num_res_blocks, norm_groups=norm_groups, num_heads=num_heads,
                               dtype=dtype, rngs=rngs)
        self.decoder = Decoder(widths, self.sides, out_channels=image_channels, latent_channels=latent_channels,
                               num_res_blocks=num_res_blocks, norm_groups=norm_groups, num_heads=num_heads,
                               context_dim=context_dim, dtype=dtype, rngs=rngs)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(s, s, latent_channels) of one image's latent, e.g. (27, 27, 8) at 215 px."""
        return self.sides[-1], self.sides[-1], self.latent_channels

    def encode(self, images: Array) -> tuple[Array, Array]:
        """Images [B, S, S, 3] in [-1, 1] -> posterior (mean, logvar), each [B, s, s, latent_channels]."""
        expected = (self.image_size, self.image_size, self.image_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"VAE built for images [B, {', '.join(map(str, expected))}], got {images.shape}; "
                             "resize the images or build the VAE with image_size matching the data")
        return self.encoder(images)

    @staticmethod
    def reparameterize(mean: Array, logvar: Array, key: Array | None) -> Array:
        """z = mean + exp(logvar / 2) * noise; the mean itself when key is None."""
        if key is None:
            return mean
        return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)

    def encode_latents(self, images: Array, key: Array | None = None) -> Array:
        """Latents of images: a posterior sample (key given) or the posterior mean."""
        return self.reparameterize(*self.encode(images), key)

    def decode(self, z: Array, context: Array | None = None, context_mask: Array | None = None) -> Array:
        """Latents [B, s, s, latent_channels] -> images [B, S, S, 3] in [-1, 1]."""
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"VAE decodes latents [B, {', '.join(map(str, self.latent_shape))}], got {z.shape}")
        return self.decoder(z, context, context_mask)

    def __call__(self, images: Array, key: Array | None = None, context: Array | None = None,
                 context_mask: Array | None = None) -> tuple[Array, Array, Array]:
        """(reconstruction, posterior mean, posterior logvar) of images; sampled z when key is given."""
        mean, logvar = self.encode(images)
        return self.decode(self.reparameterize(mean, logvar, key), context, context_mask), mean, logvar
