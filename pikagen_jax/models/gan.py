"""DF-GAN-style conditional GAN of seed 002 (report sections 3.2-3.3): generator and discriminator.

Generator: z ⊕ sentence embedding -> linear -> 4×4 map, then one stage per doubling of resolution:
upsample (bilinear resize + 3×3 conv, or 4×4 stride-2 transposed conv), residual block (two 3×3 convs, each
followed by GroupNorm(32) and SiLU, 1×1 skip when channels change), cross-attention over the text tokens
(queries from pixels; L2-normalised q/k; 4 heads × 64), added residually; then GroupNorm, SiLU, 3×3 conv
to RGB and tanh. With `text_affine` every residual block's GroupNorms are followed by DF-GAN's text affine
transform: x · (1 + γ(s)) + β(s), γ and β small MLPs of the sentence embedding s, zero at initialisation.

Discriminator: 3×3 conv stem, one residual down block per halving down to 4×4 (two 3×3 convs with
LeakyReLU(0.2); downsampling inside the block on both the main and the skip path, by a 4×4 stride-2 conv
or 2×2 average pooling), spectral normalisation on every convolution, then a conditional head: sentence
embedding broadcast over the 4×4 map and concatenated, 3×3 conv, LeakyReLU, 4×4 valid conv -> one logit.
With `text_projection` the logit also gets a projection term (Miyato & Koyama 2018): the inner product of the
spatially summed LeakyReLU(features) with a linear embedding of the sentence — a direct image-text interaction
that the concatenation head can only form through one nonlinearity.

Channel widths follow the seed's 128-px tables and scale with the resolution r of a feature map:
`min(max_channels, base_channels * image_size // r)` — at 128 px with base 32 / max 256 the generator runs
256 (4×4), 256, 256, 128, 64, 32 and the discriminator 32 (stem), 64, 128, 256, 256, 256.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models.conv_matmul import ConvImpl
from pikagen_jax.models.folded_attention import L2_EPS, folded_attention, inverse_l2_norm, masked_softmax
from pikagen_jax.models.spectral_norm import SpectralNormConv

Array = jax.Array
UpsampleMode = Literal["bilinear", "transposed"]
DownsampleMode = Literal["strided", "avgpool"]

LEAKY_SLOPE = 0.2
GROUP_NORM_EPS = 1e-5  # PyTorch's default


def check_image_size(image_size: int) -> int:
    """Number of 2× stages between 4×4 and `image_size`; raises unless it is a power of two >= 8."""
    if not isinstance(image_size, int) or image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 8 (e.g. 64, 128, 256), got {image_size!r}")
    return int(math.log2(image_size)) - 2


def channels_at(resolution: int, image_size: int, base_channels: int, max_channels: int) -> int:
    """Width of a feature map of side `resolution` in a network whose image side is `image_size`."""
    return min(max_channels, base_channels * (image_size // resolution))


def _group_norm(channels: int, num_groups: int, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.GroupNorm:
    # gcd keeps the seed's 32 groups where the width allows it and still works for tiny test widths.
    return nnx.GroupNorm(channels, num_groups=math.gcd(channels, num_groups), epsilon=GROUP_NORM_EPS,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)


# ----------------------------------------------------------------------------------------------- generator


class Upsample(nnx.Module):
    """2× upsampling: bilinear resize + 3×3 conv (default) or a 4×4 stride-2 transposed conv."""

    def __init__(self, in_channels: int, out_channels: int, mode: UpsampleMode = "bilinear", *, dtype,
                 param_dtype, rngs: nnx.Rngs):
        if mode not in ("bilinear", "transposed"):
            raise ValueError(f"upsample must be 'bilinear' or 'transposed', got {mode!r}")
        self.mode = mode
        if mode == "bilinear":
            self.conv = nnx.Conv(in_channels, out_channels, (3, 3), padding=1, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
        else:
            self.conv = nnx.ConvTranspose(in_channels, out_channels, (4, 4), strides=(2, 2), padding="SAME",
                                          dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        if self.mode == "bilinear":
            batch, height, width, channels = x.shape
            x = jax.image.resize(x, (batch, 2 * height, 2 * width, channels), method="bilinear")
        return self.conv(x)


class TextAffine(nnx.Module):
    """DF-GAN's text-conditioned affine transform: x · (1 + γ(s)) + β(s) per channel.

    γ and β come from one MLP of the sentence embedding s (Linear -> ReLU -> Linear to 2·channels) whose last
    layer starts at zero, so a new block is the identity and the text's effect grows as it trains (DF-GAN
    initialises γ's bias to one and its weights to zero; `1 + γ` with γ = 0 is the same start)."""

    def __init__(self, sentence_dim: int, channels: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        dense = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.hidden = nnx.Linear(sentence_dim, channels, **dense)
        self.out = nnx.Linear(channels, 2 * channels, kernel_init=nnx.initializers.zeros_init(), **dense)

    def __call__(self, x: Array, sentence: Array) -> Array:
        """x [B, H, W, C], sentence [B, sentence_dim] -> [B, H, W, C]."""
        gamma, beta = jnp.split(self.out(nnx.relu(self.hidden(sentence.astype(x.dtype)))), 2, axis=-1)
        return x * (1 + gamma[:, None, None, :]) + beta[:, None, None, :]


class GeneratorResBlock(nnx.Module):
    """x + SiLU(GN(conv3×3(SiLU(GN(conv3×3(x)))))); the skip is a 1×1 conv when the width changes.

    `sentence_dim` > 0 adds a `TextAffine` after each GroupNorm (DF-GAN's conditioning); the block then
    takes the sentence embedding."""

    def __init__(self, in_channels: int, out_channels: int, *, num_groups: int = 32, sentence_dim: int = 0,
                 dtype, param_dtype, rngs: nnx.Rngs):
        conv = dict(padding=1, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm = dict(num_groups=num_groups, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = nnx.Conv(in_channels, out_channels, (3, 3), **conv)
        self.norm1 = _group_norm(out_channels, **norm)
        self.conv2 = nnx.Conv(out_channels, out_channels, (3, 3), **conv)
        self.norm2 = _group_norm(out_channels, **norm)
        self.skip = (nnx.Conv(in_channels, out_channels, (1, 1), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                     if in_channels != out_channels else None)
        affine = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.affine1 = TextAffine(sentence_dim, out_channels, **affine) if sentence_dim else None
        self.affine2 = TextAffine(sentence_dim, out_channels, **affine) if sentence_dim else None

    def __call__(self, x: Array, sentence: Array | None = None) -> Array:
        if self.affine1 is not None and sentence is None:
            raise ValueError("this block has text affine layers: pass the sentence embedding")
        h = self.norm1(self.conv1(x))
        h = nnx.silu(h if self.affine1 is None else self.affine1(h, sentence))
        h = self.norm2(self.conv2(h))
        h = nnx.silu(h if self.affine2 is None else self.affine2(h, sentence))
        return (x if self.skip is None else self.skip(x)) + h


def _l2_normalize(x: Array, eps: float = L2_EPS) -> Array:
    """Normalises the last axis (float32), like torch.nn.functional.normalize; finite gradient at 0."""
    x = x.astype(jnp.float32)
    return x * inverse_l2_norm(x, eps)


def _attention_heads_first(q: Array, k: Array, v: Array, keep: Array, scale: Array | float) -> Array:
    """softmax(scale · q kᵀ, masked) v for q [B, L, H, D], k / v [B, T, H, D], keep [B, T] -> [B, L, H, D].

    The same values as `jax.nn.dot_product_attention`, computed with the heads moved in front of the
    sequence axes: XLA:CPU runs this layout's forward and backward dots ~1.5x faster at 64 px (BENCHMARKS.md).
    Softmax in float32; a row with no kept token attends uniformly, as `dot_product_attention` does.
    """
    qh, kh, vh = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    logits = jnp.einsum("bhld,bhtd->bhlt", qh, kh).astype(jnp.float32) * scale
    weights = masked_softmax(logits, keep).astype(v.dtype)
    return jnp.einsum("bhlt,bhtd->bhld", weights, vh).transpose(0, 2, 1, 3)


class CrossAttention(nnx.Module):
    """Pixels attend to text tokens (cosine-similarity attention) and the result is added to the pixels.

    Logits are `qk_scale * cos(q, k)`. The default `qk_scale` = 1/sqrt(head_dim) is what the seed's
    `scaled_dot_product_attention` on L2-normalised q/k computes; `learnable_qk_scale` makes it a trained
    (log-parameterised) temperature. The seed's final model adds the attention output directly ("fixed
    injection"); `learnable_gate` is its alternative, a trained scalar strength initialised to zero.

    `folded` picks how the same function is computed: `False` projects q, attends per head and projects
    back (the textbook order); `True` folds the query and output projections into the (short) text side —
    logits = x · (W_q k̂ᵀ) / |x W_q| and out = weights · (v W_out) — so no [pixels, heads·head_dim] tensor
    is attended or transposed; `None` (default) folds wherever that needs no more multiply-adds, i.e. on
    the wide, shallow high-resolution maps. Equal values and gradients (tests/test_gan_models.py).
    """

    def __init__(self, channels: int, token_dim: int = 256, *, num_heads: int = 4, head_dim: int = 64,
                 qk_scale: float | None = None, learnable_qk_scale: bool = False, learnable_gate: bool = False,
                 folded: bool | None = None, dtype, param_dtype, rngs: nnx.Rngs):
        inner = num_heads * head_dim
        dense = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.to_q = nnx.Linear(channels, inner, use_bias=False, **dense)
        self.to_k = nnx.Linear(token_dim, inner, use_bias=False, **dense)
        self.to_v = nnx.Linear(token_dim, inner, use_bias=False, **dense)
        self.to_out = nnx.Linear(inner, channels, **dense)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.token_dim = token_dim
        scale = 1.0 / math.sqrt(head_dim) if qk_scale is None else float(qk_scale)
        if scale <= 0:
            raise ValueError(f"qk_scale must be positive, got {qk_scale}")
        self.log_qk_scale = nnx.Param(jnp.asarray(math.log(scale), param_dtype)) if learnable_qk_scale else None
        self.qk_scale = scale
        self.gate = nnx.Param(jnp.zeros((), param_dtype)) if learnable_gate else None
        self.folded = folded

    def _fold(self, channels: int, num_tokens: int) -> bool:
        """Whether the folded order needs no more multiply-adds per pixel than the textbook one."""
        if self.folded is not None:
            return self.folded
        inner = self.num_heads * self.head_dim
        folded_macs = 2 * self.num_heads * num_tokens * channels + inner * channels  # x·A, |q|², weights·VW
        textbook_macs = 2 * inner * channels + 2 * inner * num_tokens  # q, out projections; q·k, weights·v
        return folded_macs <= textbook_macs

    def __call__(self, x: Array, tokens: Array, mask: Array) -> Array:
        """x: [B, H, W, C]; tokens: [B, T, token_dim]; mask: [B, T] (1 = real token) -> [B, H, W, C]."""
        batch, height, width, channels = x.shape
        dtype = x.dtype
        pixels = x.reshape(batch, height * width, channels)
        k, v = self.to_k(tokens), self.to_v(tokens)
        split = lambda t: t.reshape(*t.shape[:2], self.num_heads, self.head_dim)  # noqa: E731
        k, v = _l2_normalize(split(k)).astype(dtype), split(v).astype(dtype)
        scale = self.qk_scale if self.log_qk_scale is None else jnp.exp(self.log_qk_scale[...])
        if self._fold(channels, tokens.shape[1]):
            out = self._folded_attention(pixels, k, v, mask > 0, scale).reshape(x.shape)
        else:
            q = _l2_normalize(split(self.to_q(pixels))).astype(dtype)
            attended = _attention_heads_first(q, k, v, mask > 0, scale)
            out = self.to_out(attended.reshape(batch, height * width, -1)).reshape(x.shape)
        if self.gate is not None:
            out = self.gate[...].astype(out.dtype) * out
        return x + out

    def _folded_attention(self, pixels: Array, k: Array, v: Array, keep: Array, scale: Array | float) -> Array:
        """to_out(attention(normalise(to_q(pixels)), k, v)) for pixels [B, L, C], unit k / v [B, T, H, D]."""
        batch, _, channels = pixels.shape
        heads, tokens = self.num_heads, k.shape[1]
        dtype = pixels.dtype
        w_q = self.to_q.kernel[...].astype(dtype)  # [C, H·D]
        w_out = self.to_out.kernel[...].astype(dtype).reshape(heads, self.head_dim, channels)
        # Logits up to each query's norm: x · (W_q,h k̂_h,tᵀ), one [C, H·T] matrix per example.
        query_keys = jnp.einsum("chd,bthd->bcht", w_q.reshape(channels, heads, self.head_dim), k)
        # Σ_h weights_h · (v_h W_out,h): the output projection applied to the T values, not the L outputs.
        values_out = jnp.einsum("bthd,hdc->bhtc", v, w_out).reshape(batch, heads * tokens, channels)
        out = folded_attention(pixels, query_keys.reshape(batch, channels, heads * tokens), w_q, values_out, keep,
                               scale, num_heads=heads)
        return out + self.to_out.bias[...].astype(dtype)


class GeneratorStage(nnx.Module):
    """Upsample ×2 -> residual block (text affine with `sentence_dim` > 0) -> cross-attention over the tokens."""

    def __init__(self, in_channels: int, out_channels: int, *, upsample: UpsampleMode, num_groups: int,
                 attention: dict, sentence_dim: int = 0, dtype, param_dtype, rngs: nnx.Rngs):
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.upsample = Upsample(in_channels, out_channels, upsample, **common)
        self.block = GeneratorResBlock(out_channels, out_channels, num_groups=num_groups, sentence_dim=sentence_dim,
                                       **common)
        self.attention = CrossAttention(out_channels, **attention, **common)

    def __call__(self, x: Array, tokens: Array, mask: Array, sentence: Array | None = None) -> Array:
        return self.attention(self.block(self.upsample(x), sentence), tokens, mask)


class Generator(nnx.Module):
    """Text-conditioned generator: (z, sentence, tokens, mask) -> images [B, S, S, 3] in [-1, 1], float32.

    The sentence enters the first layer (with z); `text_affine` also feeds it to every residual block through
    DF-GAN's affine transforms (`TextAffine`)."""

    def __init__(self, image_size: int = 128, *, z_dim: int = 128, sentence_dim: int = 256, token_dim: int = 256,
                 base_channels: int = 32, max_channels: int = 256, upsample: UpsampleMode = "bilinear",
                 num_groups: int = 32, num_heads: int = 4, head_dim: int = 64, qk_scale: float | None = None,
                 learnable_qk_scale: bool = False, learnable_gate: bool = False, text_affine: bool = False,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        num_stages = check_image_size(image_size)
        self.image_size = image_size
        self.z_dim = z_dim
        self.sentence_dim = sentence_dim
        self.token_dim = token_dim
        widths = [channels_at(4 * 2**i, image_size, base_channels, max_channels) for i in range(num_stages + 1)]
        self.channels = tuple(widths)
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        attention = dict(token_dim=token_dim, num_heads=num_heads, head_dim=head_dim, qk_scale=qk_scale,
                         learnable_qk_scale=learnable_qk_scale, learnable_gate=learnable_gate)
        self.project = nnx.Linear(z_dim + sentence_dim, 4 * 4 * widths[0], **common)
        self.stages = nnx.List([
            GeneratorStage(c_in, c_out, upsample=upsample, num_groups=num_groups, attention=attention,
                           sentence_dim=sentence_dim if text_affine else 0, **common)
            for c_in, c_out in zip(widths[:-1], widths[1:])
        ])
        self.head_norm = _group_norm(widths[-1], num_groups, **common)
        self.head_conv = nnx.Conv(widths[-1], 3, (3, 3), padding=1, **common)

    def attention_maps(self, z: Array, sentence: Array, tokens: Array, mask: Array, stage: int = -1) -> Array:
        """Where each word looks: stage `stage`'s cross-attention weights, averaged over heads -> [B, H, W, T].

        Runs the generator up to that stage's attention and forms softmax(scale · cos(q, k)) in the textbook
        order (the weights the folded order never materialises); masked tokens get 0."""
        stage = stage % len(self.stages)
        batch = z.shape[0]
        x = self.project(jnp.concatenate([z, sentence.astype(z.dtype)], axis=-1)).reshape(batch, 4, 4, self.channels[0])
        for index, block in enumerate(self.stages):
            if index == stage:
                x = block.block(block.upsample(x), sentence)
                break
            x = block(x, tokens, mask, sentence)
        attention = self.stages[stage].attention
        _, height, width, channels = x.shape
        split = lambda t: t.reshape(*t.shape[:2], attention.num_heads, attention.head_dim)  # noqa: E731
        q = _l2_normalize(split(attention.to_q(x.reshape(batch, height * width, channels))))
        k = _l2_normalize(split(attention.to_k(tokens)))
        scale = attention.qk_scale if attention.log_qk_scale is None else jnp.exp(attention.log_qk_scale[...])
        logits = jnp.einsum("blhd,bthd->bhlt", q, k) * scale
        weights = masked_softmax(logits, mask > 0)
        weights = jnp.where((mask > 0)[:, None, None, :], weights, 0.0)
        return jnp.mean(weights, axis=1).reshape(batch, height, width, -1)

    def __call__(self, z: Array, sentence: Array, tokens: Array, mask: Array) -> Array:
        """z: [B, z_dim]; sentence: [B, sentence_dim]; tokens: [B, T, token_dim]; mask: [B, T]."""
        batch = z.shape[0]
        _expect(z, (batch, self.z_dim), "z")
        _expect(sentence, (batch, self.sentence_dim), "sentence")
        _expect(tokens, (batch, tokens.shape[1] if tokens.ndim == 3 else -1, self.token_dim), "tokens")
        _expect(mask, tokens.shape[:2], "mask")
        x = self.project(jnp.concatenate([z, sentence.astype(z.dtype)], axis=-1))
        x = x.reshape(batch, 4, 4, self.channels[0])
        for stage in self.stages:
            x = stage(x, tokens, mask, sentence)
        x = self.head_conv(nnx.silu(self.head_norm(x)))
        return jnp.tanh(x.astype(jnp.float32))


# ------------------------------------------------------------------------------------------- discriminator


def _avg_pool_2x(x: Array) -> Array:
    batch, height, width, channels = x.shape
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))


class DiscriminatorResBlock(nnx.Module):
    """Residual block that halves the resolution on both paths; spectral norm on every conv.

    main: conv3×3 -> LReLU -> conv3×3 -> LReLU -> down (4×4 stride-2 conv, or 2×2 average pool)
    skip: 4×4 stride-2 conv (strided), or 2×2 average pool then a 1×1 conv if the width changes (avgpool).
    """

    def __init__(self, in_channels: int, out_channels: int, *, downsample: DownsampleMode = "strided",
                 n_power_iterations: int = 1, conv_impl: ConvImpl = "auto", dtype, param_dtype, rngs: nnx.Rngs):
        if downsample not in ("strided", "avgpool"):
            raise ValueError(f"downsample must be 'strided' or 'avgpool', got {downsample!r}")
        sn = dict(n_power_iterations=n_power_iterations, conv_impl=conv_impl, dtype=dtype, param_dtype=param_dtype,
                  rngs=rngs)
        self.conv1 = SpectralNormConv(in_channels, out_channels, 3, padding=1, **sn)
        self.conv2 = SpectralNormConv(out_channels, out_channels, 3, padding=1, **sn)
        self.downsample = downsample
        if downsample == "strided":
            self.down = SpectralNormConv(out_channels, out_channels, 4, strides=2, padding=1, **sn)
            self.skip = SpectralNormConv(in_channels, out_channels, 4, strides=2, padding=1, **sn)
        else:
            self.down = None
            self.skip = (SpectralNormConv(in_channels, out_channels, 1, padding=0, **sn)
                         if in_channels != out_channels else None)

    def __call__(self, x: Array, *, update_stats: bool | None = None, compute_dtype=None) -> Array:
        kw = dict(update_stats=update_stats, compute_dtype=compute_dtype)
        h = nnx.leaky_relu(self.conv1(x, **kw), LEAKY_SLOPE)
        h = nnx.leaky_relu(self.conv2(h, **kw), LEAKY_SLOPE)
        if self.down is not None:
            return self.skip(x, **kw) + self.down(h, **kw)
        skip = _avg_pool_2x(x)
        if self.skip is not None:
            skip = self.skip(skip, **kw)
        return skip.astype(h.dtype) + _avg_pool_2x(h)


class Discriminator(nnx.Module):
    """Conditional discriminator: (images [B, S, S, 3], sentence [B, sentence_dim]) -> logits [B], float32.

    Spectral-norm power iterations run in training mode (`.train()`, the default) and are frozen in
    `.eval()`; `update_stats` overrides the mode per call. `compute_dtype` overrides the module's compute
    dtype per call (MA-GP runs the discriminator in float32 even when it is built for bfloat16).
    `conv_impl` picks how the convolutions are computed (`pikagen_jax.models.conv_matmul`); the values
    are the same either way.
    """

    def __init__(self, image_size: int = 128, *, sentence_dim: int = 256, base_channels: int = 32,
                 max_channels: int = 256, downsample: DownsampleMode = "strided", n_power_iterations: int = 1,
                 text_projection: bool = False, conv_impl: ConvImpl = "auto", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        num_blocks = check_image_size(image_size)
        self.image_size = image_size
        self.sentence_dim = sentence_dim
        self.dtype = dtype
        widths = [channels_at(image_size // 2**i, image_size, base_channels, max_channels)
                  for i in range(num_blocks + 1)]
        self.channels = tuple(widths)
        sn = dict(n_power_iterations=n_power_iterations, conv_impl=conv_impl, dtype=dtype, param_dtype=param_dtype,
                  rngs=rngs)
        self.stem = SpectralNormConv(3, widths[0], 3, padding=1, **sn)
        self.blocks = nnx.List([
            DiscriminatorResBlock(c_in, c_out, downsample=downsample, **sn)
            for c_in, c_out in zip(widths[:-1], widths[1:])
        ])
        self.head_conv = SpectralNormConv(widths[-1] + sentence_dim, widths[-1], 3, padding=1, **sn)
        self.head_out = SpectralNormConv(widths[-1], 1, 4, padding="VALID", **sn)
        # the projection term's sentence embedding: zero at initialisation, so the term starts at 0 and grows as D
        # learns to read its text (a random one makes D's gradient norm, and MA-GP, ~100x the concat head's)
        self.text_embed = (nnx.Linear(sentence_dim, widths[-1], use_bias=False, kernel_init=nnx.initializers.zeros,
                                      dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
                           if text_projection else None)

    def __call__(self, images: Array, sentence: Array, *, update_stats: bool | None = None,
                 compute_dtype=None) -> Array:
        """`logits(features(images), sentence)`."""
        kw = dict(update_stats=update_stats, compute_dtype=compute_dtype)
        return self.logits(self.features(images, **kw), sentence, **kw)

    def features(self, images: Array, *, update_stats: bool | None = None, compute_dtype=None) -> Array:
        """The text-free trunk: images [B, S, S, 3] -> features [B, 4, 4, channels[-1]].

        Real images paired with matching and with mismatched text share these features."""
        _expect(images, (images.shape[0], self.image_size, self.image_size, 3), "images")
        kw = dict(update_stats=update_stats, compute_dtype=compute_dtype)
        x = self.stem(images, **kw)
        for block in self.blocks:
            x = block(x, **kw)
        return x

    def logits(self, features: Array, sentence: Array, *, update_stats: bool | None = None,
               compute_dtype=None) -> Array:
        """The conditional head: (features [B, 4, 4, C], sentence [B, sentence_dim]) -> logits [B], float32.

        With `text_projection`: + sum_c (sum_hw LeakyReLU(features))_c · (sentence @ text_embed)_c, in float32."""
        batch = features.shape[0]
        _expect(features, (batch, 4, 4, self.channels[-1]), "features")
        _expect(sentence, (batch, self.sentence_dim), "sentence")
        kw = dict(update_stats=update_stats, compute_dtype=compute_dtype)
        text = jnp.broadcast_to(sentence[:, None, None, :].astype(features.dtype),
                                (*features.shape[:3], self.sentence_dim))
        x = nnx.leaky_relu(self.head_conv(jnp.concatenate([features, text], axis=-1), **kw), LEAKY_SLOPE)
        logits = self.head_out(x, **kw).reshape(batch).astype(jnp.float32)
        if self.text_embed is None:
            return logits
        pooled = jnp.sum(nnx.leaky_relu(features, LEAKY_SLOPE), axis=(1, 2)).astype(jnp.float32)  # as BigGAN's
        embedded = self.text_embed(sentence.astype(jnp.float32))
        return logits + jnp.sum(pooled * embedded, axis=-1)


def _expect(array: Array, shape: tuple[int, ...], name: str) -> None:
    """Raises a ValueError naming `name` unless `array.shape` matches `shape` (-1 = any size)."""
    if array.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, array.shape)):
        want = "[" + ", ".join("?" if s == -1 else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(array.shape)}")
