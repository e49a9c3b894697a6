"""Unconditional DCGAN of seed 004 (Radford et al. 2016; the PyTorch `examples/dcgan` layout) in Flax NNX.

Generator: z [B, latent_dim] -> 4x4 transposed conv -> (BN, ReLU, transposed conv x2)* -> tanh image
[B, S, S, 3]; at S = 64 the widths are 8, 4, 2, 1 x base_channels (512, 256, 128, 64), as in the PyTorch
example. `extra_layers_per_stage=1` adds a 3x3 stride-1 conv + BN + ReLU after every upsampling stage,
doubling the conv layers: the seed's "doubled" generator (its best change, §2.4 / §3.3).

Discriminator: strided 4x4 convs (x1/2 each) with LeakyReLU 0.2 and a normalisation on all but the first,
then a 4x4 valid conv to one logit per image. `norm='batch'` is the DCGAN discriminator; for WGAN-GP use
`norm='layer'` (per-sample LayerNorm over H, W, C, as Gulrajani et al.) or `'none'`: batch norm couples the
samples of a batch, which invalidates the per-sample gradient penalty (see `pikagen_jax.losses.dcgan`).

Both take `train` at call time: True uses batch statistics and updates the BN running averages.

On CPU, XLA differentiates transposed and strided convolutions through a slow generic path, so the
generator's transposed convs are `TorchConvTranspose` (PyTorch's ConvTranspose2d as one stride-1 conv with
gradients kept in fast forms) and the discriminator's strided convs `StridedConv` (space-to-depth + a stride-1
conv, `pikagen_jax.models.conv_matmul`): the same functions, 6-8x faster to train on 2 CPU cores (measured
with the earlier im2col + matmul forms, which the current ones beat: BENCHMARKS.md).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models.conv_matmul import conv2d
from pikagen_jax.models.l1_decoder import TorchConvTranspose

Array = jax.Array
NORMS = ("batch", "layer", "none")
_INIT = nnx.initializers.normal(0.02)  # DCGAN's N(0, 0.02) weight init


def _check_image_size(image_size: int) -> int:
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"DCGAN image_size must be a power of two >= 8 (e.g. 64), got {image_size}")
    return int(math.log2(image_size // 4))


def _batch_norm(features: int, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 -> flax 0.9) and DCGAN's scale init N(1, 0.02)."""
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                         scale_init=lambda key, shape, dtype: 1.0 + 0.02 * jax.random.normal(key, shape, dtype),
                         rngs=rngs)


class _NormAct(nnx.Module):
    """Normalisation (batch / per-sample layer / none) followed by ReLU or LeakyReLU(0.2)."""

    def __init__(self, features: int, norm: str, *, leaky: bool, dtype: Any, rngs: nnx.Rngs):
        self.kind = norm
        self.leaky = leaky
        if norm == "batch":
            self.norm = _batch_norm(features, dtype, rngs)
        elif norm == "layer":
            self.norm = nnx.LayerNorm(features, reduction_axes=(1, 2, 3), feature_axes=-1, epsilon=1e-5,
                                      dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        else:
            self.norm = None

    def __call__(self, x: Array, train: bool) -> Array:
        if self.kind == "batch":
            x = self.norm(x, use_running_average=not train)
        elif self.norm is not None:
            x = self.norm(x)
        return jax.nn.leaky_relu(x, 0.2) if self.leaky else jax.nn.relu(x)


class StridedConv(nnx.Module):
    """A convolution (HWIO kernel, optional bias) computed by `conv_matmul.conv2d`: as space-to-depth + a
    stride-1 conv when strided, with XLA's convolution otherwise."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, strides: int, padding: Any, *,
                 use_bias: bool, dtype: Any, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_INIT(rngs.params(), (kernel_size, kernel_size, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.strides, self.padding, self.dtype = (strides, strides), padding, dtype

    def __call__(self, x: Array) -> Array:
        y = conv2d(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.strides, self.padding)
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class Generator(nnx.Module):
    """z [B, latent_dim] -> images [B, image_size, image_size, out_channels] in [-1, 1].

    Args:
      latent_dim: size of z (100 in DCGAN).
      image_size: power of two >= 8 (64 in seed 004).
      base_channels: ngf, the width of the last hidden stage (64).
      extra_layers_per_stage: 3x3 conv + BN + ReLU layers after each hidden stage (1 = seed's doubled G).
      dtype: compute dtype; parameters are float32; the output is float32.
    """

    def __init__(self, latent_dim: int = 100, *, image_size: int = 64, base_channels: int = 64,
                 extra_layers_per_stage: int = 0, out_channels: int = 3, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        stages = _check_image_size(image_size)
        self.latent_dim = latent_dim
        widths = [base_channels * 2 ** (stages - 1 - i) for i in range(stages)]  # 512, 256, 128, 64 at 64 px
        conv_t = lambda c_in, c_out, kernel, strides, padding: TorchConvTranspose(  # bias-free, as PyTorch's
            c_in, c_out, kernel, strides, padding=padding, use_bias=False, kernel_init=_INIT, dtype=dtype, rngs=rngs)
        self.layers = nnx.List()
        self.layers.append(conv_t(latent_dim, widths[0], 4, 1, 0))  # 1x1 -> 4x4
        for i, width in enumerate(widths):
            self.layers.append(_NormAct(width, "batch", leaky=False, dtype=dtype, rngs=rngs))
            for _ in range(extra_layers_per_stage):
                self.layers.append(nnx.Conv(width, width, (3, 3), padding="SAME", use_bias=False,
                                            kernel_init=_INIT, dtype=dtype, param_dtype=jnp.float32, rngs=rngs))
                self.layers.append(_NormAct(width, "batch", leaky=False, dtype=dtype, rngs=rngs))
            next_width = widths[i + 1] if i + 1 < stages else out_channels
            self.layers.append(conv_t(width, next_width, 4, 2, 1))  # x2: ConvTranspose2d(4, 2, 1)

    def __call__(self, z: Array, *, train: bool = False) -> Array:
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"Generator expects z [B, {self.latent_dim}], got {z.shape}")
        x = z[:, None, None, :]
        for layer in self.layers:
            x = layer(x, train) if isinstance(layer, _NormAct) else layer(x)
        return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nnx.Module):
    """images [B, S, S, C] -> one realness score per image [B] (a logit for BCE, a critic value for WGAN).

    Args:
      image_size: power of two >= 8 (64 in seed 004).
      base_channels: ndf, width after the first conv (64); doubles per stride-2 conv.
      norm: 'batch' (DCGAN), 'layer' or 'none' (WGAN-GP critic).
      extra_layers_per_stage: 3x3 conv + norm + LeakyReLU layers after each stage (seed's mirrored D).
      dtype: compute dtype; parameters are float32; the output is float32.
    """

    def __init__(self, *, image_size: int = 64, base_channels: int = 64, norm: str = "batch",
                 extra_layers_per_stage: int = 0, in_channels: int = 3, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        if norm not in NORMS:
            raise ValueError(f"unknown discriminator norm {norm!r}; use one of {NORMS}")
        stages = _check_image_size(image_size)
        self.norm = norm
        self.image_size = image_size
        self.in_channels = in_channels
        conv = lambda c_in, c_out, kernel, strides, padding, bias: StridedConv(
            c_in, c_out, kernel, strides, padding, use_bias=bias, dtype=dtype, rngs=rngs)
        normed_bias = norm == "none"  # a bias before batch norm is cancelled by it
        self.layers = nnx.List()
        width = base_channels
        for i in range(stages):
            first = i == 0
            self.layers.append(conv(in_channels if first else width // 2, width, 4, 2, ((1, 1), (1, 1)),
                                    first or normed_bias))
            self.layers.append(_NormAct(width, "none" if first else norm, leaky=True, dtype=dtype, rngs=rngs))
            for _ in range(extra_layers_per_stage):
                self.layers.append(conv(width, width, 3, 1, "SAME", normed_bias))
                self.layers.append(_NormAct(width, norm, leaky=True, dtype=dtype, rngs=rngs))
            if i + 1 < stages:
                width *= 2
        self.head = conv(width, 1, 4, 1, "VALID", True)  # 4x4 -> 1x1

    def __call__(self, images: Array, *, train: bool = False) -> Array:
        expected = (self.image_size, self.image_size, self.in_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"Discriminator built for images [B, {', '.join(map(str, expected))}], "
                             f"got {images.shape}")
        x = images
        for layer in self.layers:
            x = layer(x, train) if isinstance(layer, _NormAct) else layer(x)
        return self.head(x).astype(jnp.float32).reshape(images.shape[0])
