"""Text-conditioned U-Net over VAE latents (seed 003 §2), and the convolutional blocks the VAE shares.

The layout follows ADM / Stable Diffusion: a sinusoidal timestep embedding through an MLP, GroupNorm
residual blocks that add the time embedding, and at the resolutions listed in `attention_levels` a
transformer block (self-attention, cross-attention to the text encoder's token embeddings [B, T, D]
under their mask [B, T], feed-forward). Classifier-free guidance is built in: a learned null text token
replaces the text of the rows selected by `drop_context` (training dropout, and the unconditional half
at sampling; see `pikagen_jax.diffusion`).

    unet = UNet(latent_channels=8, context_dim=256, rngs=nnx.Rngs(0))
    eps = unet(z_t, t, tokens, token_mask)                       # [B, h, w, 8]
    eps_uncond = unet(z_t, t, tokens, token_mask, drop_context=jnp.ones(B, bool))

Spatial sizes need not be powers of two: downsampling is a stride-2 'SAME' convolution (27 -> 14 -> 7)
and upsampling resizes to the exact size of the matching skip connection (7 -> 14 -> 27).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def group_norm(channels: int, groups: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm over `channels` in `groups` groups (eps 1e-6); rejects widths the groups do not divide."""
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible by norm_groups={groups}; choose "
                         "channel widths that are multiples of norm_groups (or lower norm_groups)")
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                         rngs=rngs)


def conv(features_in: int, features_out: int, kernel: int = 3, *, strides: int = 1, dtype: Any,
         rngs: nnx.Rngs) -> nnx.Conv:
    """A kernel x kernel 'SAME' convolution (float32 parameters, `dtype` compute)."""
    return nnx.Conv(features_in, features_out, (kernel, kernel), (strides, strides), padding="SAME",
                    dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def linear(features_in: int, features_out: int, *, use_bias: bool = True, dtype: Any,
           rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(features_in, features_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                      rngs=rngs)


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
    """Sinusoidal embedding [B, dim] (float32) of timesteps t [B]: [cos(t w_i), sin(t w_i)], w_i geometric."""
    if dim % 2:
        raise ValueError(f"timestep embedding width must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class ResBlock(nnx.Module):
    """GroupNorm-SiLU-conv residual block; adds a projected time embedding between the convs when given."""

    def __init__(self, channels_in: int, channels_out: int, *, time_dim: int | None = None,
                 norm_groups: int = 32, dropout: float = 0.0, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.norm1 = group_norm(channels_in, norm_groups, dtype=dtype, rngs=rngs)
        self.conv1 = conv(channels_in, channels_out, dtype=dtype, rngs=rngs)
        self.time_proj = linear(time_dim, channels_out, dtype=dtype, rngs=rngs) if time_dim else None
        self.norm2 = group_norm(channels_out, norm_groups, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.conv2 = conv(channels_out, channels_out, dtype=dtype, rngs=rngs)
        self.skip = conv(channels_in, channels_out, 1, dtype=dtype, rngs=rngs) if channels_in != channels_out else None

    def __call__(self, x: Array, time_emb: Array | None = None, *, deterministic: bool = True) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.time_proj is not None:
            if time_emb is None:
                raise ValueError("this ResBlock was built with time_dim: pass the time embedding")
            h = h + self.time_proj(jax.nn.silu(time_emb))[:, None, None, :]
        h = self.conv2(self.dropout(jax.nn.silu(self.norm2(h)), deterministic=deterministic))
        return (x if self.skip is None else self.skip(x)) + h


class Attention(nnx.Module):
    """Multi-head attention of queries [B, N, C] over a context [B, T, D] (itself when None).

    q/k/v projections have no bias (a key bias cancels in the softmax); the softmax runs in float32. A
    key mask [B, T] (1 = attend) excludes padding; a fully masked row attends uniformly instead of NaN.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, *, num_heads: int = 4,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if query_dim % num_heads:
            raise ValueError(f"attention width {query_dim} is not divisible by num_heads={num_heads}")
        context_dim = context_dim or query_dim
        self.num_heads = num_heads
        self.head_dim = query_dim // num_heads
        self.query = linear(query_dim, query_dim, use_bias=False, dtype=dtype, rngs=rngs)
        self.key = linear(context_dim, query_dim, use_bias=False, dtype=dtype, rngs=rngs)
        self.value = linear(context_dim, query_dim, use_bias=False, dtype=dtype, rngs=rngs)
        self.out = linear(query_dim, query_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, context: Array | None = None, mask: Array | None = None) -> Array:
        context = x if context is None else context
        heads = lambda t: t.reshape(*t.shape[:2], self.num_heads, self.head_dim)
        q, k, v = heads(self.query(x)), heads(self.key(context)), heads(self.value(context))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(self.head_dim)
        if mask is not None:
            logits = jnp.where((mask > 0)[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return self.out(attended.reshape(*x.shape[:2], -1))


class SpatialTransformer(nnx.Module):
    """Transformer block on a feature map: GroupNorm, 1x1 in-projection, then pre-LayerNorm
    self-attention, cross-attention to `context` (when built with context_dim), GELU feed-forward (4x),
    out-projection, and a residual connection around the whole block."""

    def __init__(self, channels: int, *, context_dim: int | None = None, num_heads: int = 4,
                 norm_groups: int = 32, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        layer_norm = lambda: nnx.LayerNorm(channels, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.norm = group_norm(channels, norm_groups, dtype=dtype, rngs=rngs)
        self.proj_in = linear(channels, channels, dtype=dtype, rngs=rngs)
        self.self_norm = layer_norm()
        self.self_attention = Attention(channels, num_heads=num_heads, dtype=dtype, rngs=rngs)
        self.cross_norm = layer_norm() if context_dim else None
        self.cross_attention = (Attention(channels, context_dim, num_heads=num_heads, dtype=dtype, rngs=rngs)
                                if context_dim else None)
        self.ff_norm = layer_norm()
        self.ff_in = linear(channels, 4 * channels, dtype=dtype, rngs=rngs)
        self.ff_out = linear(4 * channels, channels, dtype=dtype, rngs=rngs)
        self.proj_out = linear(channels, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, context: Array | None = None, context_mask: Array | None = None) -> Array:
        batch, height, width, channels = x.shape
        h = self.proj_in(self.norm(x)).reshape(batch, height * width, channels)
        h = h + self.self_attention(self.self_norm(h))
        if self.cross_attention is not None:
            if context is None:
                raise ValueError("this block cross-attends to text: pass context [B, T, D] (and its mask)")
            h = h + self.cross_attention(self.cross_norm(h), context, context_mask)
        h = h + self.ff_out(jax.nn.gelu(self.ff_in(self.ff_norm(h))))
        return x + self.proj_out(h).reshape(batch, height, width, channels)


class Downsample(nnx.Module):
    """3x3 stride-2 'SAME' convolution: H -> ceil(H / 2)."""

    def __init__(self, channels: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, strides=2, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour resize to an exact (H, W), then a 3x3 convolution."""

    def __init__(self, channels: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, size: tuple[int, int]) -> Array:
        x = jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method="nearest")
        return self.conv(x)


class UNetBlock(nnx.Module):
    """A time-conditioned ResBlock, followed by a SpatialTransformer at attention levels."""

    def __init__(self, channels_in: int, channels_out: int, *, time_dim: int, attention: bool,
                 context_dim: int | None, num_heads: int, norm_groups: int, dropout: float, dtype: Any,
                 rngs: nnx.Rngs):
        self.res = ResBlock(channels_in, channels_out, time_dim=time_dim, norm_groups=norm_groups,
                            dropout=dropout, dtype=dtype, rngs=rngs)
        self.attention = (SpatialTransformer(channels_out, context_dim=context_dim, num_heads=num_heads,
                                             norm_groups=norm_groups, dtype=dtype, rngs=rngs)
                          if attention else None)

    def __call__(self, x: Array, time_emb: Array, context: Array | None, context_mask: Array | None, *,
                 deterministic: bool) -> Array:
        x = self.res(x, time_emb, deterministic=deterministic)
        return x if self.attention is None else self.attention(x, context, context_mask)


class UNet(nnx.Module):
    """Epsilon-predicting U-Net over latents [B, h, w, latent_channels], conditioned on timesteps and text.

    Args:
      latent_channels: channels of the VAE latent (8 in seed 003).
      base_channels: width of the first level; level i is base_channels * channel_mults[i] wide.
      channel_mults: one entry per resolution level (len - 1 downsamplings).
      num_res_blocks: residual blocks per level on the way down (one more on the way up).
      attention_levels: indices of the levels with transformer blocks (self + cross-attention); the
        middle block always has one.
      context_dim: width D of the text token embeddings; None builds an unconditional U-Net.
      num_heads: attention heads (head width = level width / num_heads).
      norm_groups: GroupNorm groups (must divide every width).
      dropout: dropout rate inside the residual blocks (active when deterministic=False).
      dtype: compute dtype (e.g. jnp.bfloat16); parameters are float32.
    """

    def __init__(self, latent_channels: int = 8, *, base_channels: int = 64,
                 channel_mults: Sequence[int] = (1, 2, 4), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = (0, 1, 2), context_dim: int | None = 256,
                 num_heads: int = 4, norm_groups: int = 32, dropout: float = 0.0, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        levels = len(channel_mults)
        if levels < 1 or num_res_blocks < 1:
            raise ValueError("UNet needs at least one level (channel_mults) and num_res_blocks >= 1")
        if any(not 0 <= level < levels for level in attention_levels):
            raise ValueError(f"attention_levels {tuple(attention_levels)} must index channel_mults "
                             f"(0..{levels - 1})")
        self.latent_channels = latent_channels
        self.context_dim = context_dim
        time_dim = 4 * base_channels
        self.time_embed_width = base_channels
        self.time_mlp_in = linear(base_channels, time_dim, dtype=dtype, rngs=rngs)
        self.time_mlp_out = linear(time_dim, time_dim, dtype=dtype, rngs=rngs)
        self.null_context = nnx.Param(jnp.zeros((1, context_dim), jnp.float32)) if context_dim else None
        block = lambda c_in, c_out, level: UNetBlock(
            c_in, c_out, time_dim=time_dim, attention=level in attention_levels, context_dim=context_dim,
            num_heads=num_heads, norm_groups=norm_groups, dropout=dropout, dtype=dtype, rngs=rngs)

        self.conv_in = conv(latent_channels, base_channels, dtype=dtype, rngs=rngs)
        skip_widths = [base_channels]
        width = base_channels
        self.down = nnx.List()
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(block(width, base_channels * mult, level))
                width = base_channels * mult
                skip_widths.append(width)
            if level < levels - 1:
                self.down.append(Downsample(width, dtype=dtype, rngs=rngs))
                skip_widths.append(width)
        self.mid_res1 = ResBlock(width, width, time_dim=time_dim, norm_groups=norm_groups, dropout=dropout,
                                 dtype=dtype, rngs=rngs)
        self.mid_attention = SpatialTransformer(width, context_dim=context_dim, num_heads=num_heads,
                                                norm_groups=norm_groups, dtype=dtype, rngs=rngs)
        self.mid_res2 = ResBlock(width, width, time_dim=time_dim, norm_groups=norm_groups, dropout=dropout,
                                 dtype=dtype, rngs=rngs)
        self.up = nnx.List()
        for level in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(width + skip_widths.pop(), base_channels * channel_mults[level], level))
                width = base_channels * channel_mults[level]
            if level > 0:
                self.up.append(Upsample(width, dtype=dtype, rngs=rngs))
        self.norm_out = group_norm(width, norm_groups, dtype=dtype, rngs=rngs)
        self.conv_out = conv(width, latent_channels, dtype=dtype, rngs=rngs)

    def _text(self, batch: int, context: Array | None, context_mask: Array | None,
              drop_context: Array | None) -> tuple[Array | None, Array | None]:
        """Context and mask with the null token in the rows where drop_context is True (or everywhere
        when no context is given)."""
        if self.context_dim is None:
            if context is not None:
                raise ValueError("this UNet was built with context_dim=None (unconditional): pass no context")
            return None, None
        null = self.null_context[...]
        if context is None:
            return jnp.broadcast_to(null, (batch, 1, self.context_dim)), jnp.ones((batch, 1), jnp.int32)
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(f"context must be [B, T, {self.context_dim}] token embeddings, got {context.shape}")
        if context_mask is None:
            context_mask = jnp.ones(context.shape[:2], jnp.int32)
        if drop_context is not None:
            drop = jnp.asarray(drop_context, bool)
            context = jnp.where(drop[:, None, None], null.astype(context.dtype), context)
            context_mask = jnp.where(drop[:, None], 1, context_mask)
        return context, context_mask

    def __call__(self, x: Array, t: Array, context: Array | None = None, context_mask: Array | None = None,
                 *, drop_context: Array | None = None, deterministic: bool = True) -> Array:
        """Predicted noise for latents x [B, h, w, C] at integer timesteps t [B].

        context [B, T, D] / context_mask [B, T]: text token embeddings and their mask (1 = token);
        drop_context bool [B]: rows that get the null text instead (classifier-free guidance).
        """
        if x.ndim != 4 or x.shape[-1] != self.latent_channels:
            raise ValueError(f"UNet input must be latents [B, h, w, {self.latent_channels}], got {x.shape}")
        batch = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t), (batch,))
        context, context_mask = self._text(batch, context, context_mask, drop_context)
        emb = self.time_mlp_out(jax.nn.silu(self.time_mlp_in(timestep_embedding(t, self.time_embed_width))))
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, Downsample):
                h = layer(h)
            else:
                h = layer(h, emb, context, context_mask, deterministic=deterministic)
            skips.append(h)
        h = self.mid_res1(h, emb, deterministic=deterministic)
        h = self.mid_attention(h, context, context_mask)
        h = self.mid_res2(h, emb, deterministic=deterministic)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h, skips[-1].shape[1:3])
            else:
                h = layer(jnp.concatenate([h, skips.pop()], axis=-1), emb, context, context_mask,
                          deterministic=deterministic)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))
