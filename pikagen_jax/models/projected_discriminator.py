"""A text-conditional Projected GAN discriminator (Sauer et al., NeurIPS 2021), for few-shot sprite data.

D does not learn features from the ~700 training sprites: it reads them off a frozen, ImageNet-pretrained
EfficientNet-Lite (`pikagen_jax.models.efficientnet_lite`) at four scales, mixes them with fixed random
projections, and trains only small heads on top:

    images [B, S, S, 3] -> resize to `input_size` -> EfficientNet-Lite maps at strides 4, 8, 16, 32 (frozen)
      -> CCM: a random 1x1 conv per scale to `channels` x (1, 2, 4, 8)                      (frozen)
      -> CSM: top-down fusion, coarse to fine: (map + upsampled coarser fused map) -> 1x1   (frozen)
      -> one head per scale: spectral-norm 4x4 stride-2 down blocks (batch-statistics norm, LeakyReLU 0.2)
         to 4x4 or less, a 1x1 conv to `cmap_dim` channels -> patch features             (trained)
      -> projection conditioning (Miyato & Koyama 2018): per patch, logit = u · f + <f, c> / sqrt(cmap_dim),
         c = LeakyReLU(W ŝ) of the RMS-normalised sentence embedding ŝ                       (trained)

`features(images)` is the text-free part (shared by a real image's matching and mismatched captions), `logits`
the conditioning; `__call__` both. Logits are [B, patches of all heads]. The pretrained weights are
`Pretrained` variables and the random projections `RandomProjection` variables: neither is an `nnx.Param`, so
neither gets an optimizer state or a parameter gradient (tested to stay unchanged through a training step).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models.efficientnet_lite import EfficientNetLite
from pikagen_jax.models.spectral_norm import SpectralNormConv, SpectralNormLinear

Array = jax.Array
LEAKY_SLOPE = 0.2
NORM_EPS = 1e-5


class RandomProjection(nnx.Variable):
    """A fixed random projection of Projected GANs' CCM / CSM: drawn once from the seed, never trained."""


class FixedConv1x1(nnx.Module):
    """A 1x1 conv with fixed random weights (PyTorch's default init: U(-1/sqrt(in), 1/sqrt(in)))."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(in_channels)
        key_w, key_b = jax.random.split(rngs.params())
        self.kernel = RandomProjection(jax.random.uniform(key_w, (in_channels, out_channels), jnp.float32, -bound, bound))
        self.bias = RandomProjection(jax.random.uniform(key_b, (out_channels,), jnp.float32, -bound, bound))

    def __call__(self, x: Array) -> Array:
        return x @ self.kernel[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


def upsample2x(x: Array) -> Array:
    """Bilinear 2x upsampling with aligned corners (as Projected GANs' FeatureFusionBlock)."""
    batch, height, width, channels = x.shape
    if height == 1 and width == 1:
        return jnp.broadcast_to(x, (batch, 2, 2, channels))

    def axis_weights(size: int) -> Array:
        src = jnp.linspace(0.0, size - 1.0, 2 * size)
        low = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, size - 1)
        high = jnp.clip(low + 1, 0, size - 1)
        frac = src - low
        return (jax.nn.one_hot(low, size) * (1 - frac)[:, None] + jax.nn.one_hot(high, size) * frac[:, None])

    rows, cols = axis_weights(height).astype(x.dtype), axis_weights(width).astype(x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


class BatchStatNorm(nnx.Module):
    """Per-channel normalisation by the statistics of the batch it sees, with a learnt scale and shift (the
    training-mode BatchNorm of Projected GANs' heads; D is only used in training, so no running averages)."""

    def __init__(self, channels: int):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + NORM_EPS) * self.scale[...] + self.bias[...]


class DownBlock(nnx.Module):
    """Spectral-norm 4x4 stride-2 conv -> batch-statistics norm -> LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv = SpectralNormConv(in_channels, out_channels, 4, strides=2, padding=1, rngs=rngs)
        self.norm = BatchStatNorm(out_channels)

    def __call__(self, x: Array, update_stats: bool | None = None) -> Array:
        return nnx.leaky_relu(self.norm(self.conv(x, update_stats=update_stats)), LEAKY_SLOPE)


class ConditionalHead(nnx.Module):
    """Down blocks to <= 4x4, a 1x1 conv to `cmap_dim` patch features, projection on the sentence embedding."""

    def __init__(self, in_channels: int, size: int, *, channels: int, cmap_dim: int, sentence_dim: int,
                 rngs: nnx.Rngs):
        blocks, width = [], in_channels
        while size > 4:
            blocks.append(DownBlock(width, channels, rngs=rngs))
            width, size = channels, size // 2
        self.blocks = nnx.List(blocks)
        self.cls = SpectralNormConv(width, cmap_dim, 1, padding=0, use_bias=False, rngs=rngs)
        self.unconditional = SpectralNormLinear(cmap_dim, 1, rngs=rngs)
        self.embed = nnx.Linear(sentence_dim, cmap_dim, rngs=rngs)
        self.cmap_dim = cmap_dim

    def features(self, x: Array, update_stats: bool | None = None) -> Array:
        for block in self.blocks:
            x = block(x, update_stats)
        return self.cls(x, update_stats=update_stats)

    def logits(self, features: Array, sentence: Array, update_stats: bool | None = None) -> Array:
        sentence = sentence.astype(jnp.float32)
        sentence = sentence * jax.lax.rsqrt(jnp.mean(jnp.square(sentence), axis=-1, keepdims=True) + NORM_EPS)
        cmap = nnx.leaky_relu(self.embed(sentence.astype(features.dtype)), LEAKY_SLOPE)
        out = jnp.einsum("bhwc,bc->bhw", features, cmap) / math.sqrt(self.cmap_dim)
        out = out + self.unconditional(features, update_stats=update_stats)[..., 0]
        return out.reshape(out.shape[0], -1)


class ProjectedDiscriminator(nnx.Module):
    """Text-conditional D on frozen EfficientNet-Lite features with random cross-channel / cross-scale mixing."""

    def __init__(self, image_size: int, *, sentence_dim: int, feature_network: EfficientNetLite,
                 input_size: int = 128, channels: int = 64, expand: bool = True, scale_mixing: bool = True,
                 head_channels: int = 64, cmap_dim: int = 64, rngs: nnx.Rngs):
        if input_size % 32:
            raise ValueError(f"the projected discriminator's input_size must be a multiple of 32 (EfficientNet's "
                             f"stride), got {input_size}")
        self.image_size, self.input_size, self.sentence_dim = image_size, input_size, sentence_dim
        self.feature_network = feature_network
        widths = [channels * (2 ** i if expand else 1) for i in range(4)]
        self.ccm = nnx.List([FixedConv1x1(c_in, c_out, rngs=rngs)
                             for c_in, c_out in zip(feature_network.feature_channels, widths)])
        self.scale_mixing = scale_mixing
        if scale_mixing:  # fused map i = conv1x1(up2(map_i + fused_{i+1})), halving channels except the finest
            outs = [widths[0]] + [w // 2 if expand else w for w in widths[1:]]
            self.csm = nnx.List([FixedConv1x1(w, o, rngs=rngs) for w, o in zip(widths, outs)])
            widths = outs
            sizes = [input_size // 2 ** (i + 1) for i in range(4)]  # CSM upsamples each level 2x
        else:
            self.csm = None
            sizes = [input_size // 2 ** (i + 2) for i in range(4)]
        self.heads = nnx.List([ConditionalHead(w, s, channels=head_channels, cmap_dim=cmap_dim,
                                               sentence_dim=sentence_dim, rngs=rngs) for w, s in zip(widths, sizes)])

    def projected_maps(self, images: Array) -> list[Array]:
        """The frozen part: resize, EfficientNet-Lite, CCM and CSM -> four maps, finest first."""
        batch = images.shape[0]
        if images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"images must have shape [B, {self.image_size}, {self.image_size}, 3], got "
                             f"{tuple(images.shape)}")
        if self.input_size != self.image_size:
            images = jax.image.resize(images, (batch, self.input_size, self.input_size, 3), method="bilinear")
        maps = [ccm(m) for ccm, m in zip(self.ccm, self.feature_network.features(images))]
        if self.csm is None:
            return maps
        fused: list[Array] = [None] * 4
        coarser = None
        for level in (3, 2, 1, 0):
            x = maps[level] if coarser is None else maps[level] + coarser
            fused[level] = self.csm[level](upsample2x(x))
            coarser = fused[level]
        return fused

    def features(self, images: Array, update_stats: bool | None = None) -> list[Array]:
        """Text-free patch features of every head: images -> [[B, h, w, cmap_dim]] x 4."""
        return [head.features(m, update_stats) for head, m in zip(self.heads, self.projected_maps(images))]

    def logits(self, features: list[Array], sentence: Array, update_stats: bool | None = None) -> Array:
        """Projection conditioning of the heads' features on the sentence: -> logits [B, all patches]."""
        if sentence.shape != (features[0].shape[0], self.sentence_dim):
            raise ValueError(f"sentence must have shape [B, {self.sentence_dim}], got {tuple(sentence.shape)}")
        return jnp.concatenate([head.logits(f, sentence, update_stats) for head, f in zip(self.heads, features)],
                               axis=1).astype(jnp.float32)

    def __call__(self, images: Array, sentence: Array, update_stats: bool | None = None) -> Array:
        return self.logits(self.features(images, update_stats), sentence, update_stats)
