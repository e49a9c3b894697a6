"""Image decoder (the seed's ImageGenerator, seed 000 §2.1.4): text context + noise -> 215×215 RGB.

    h0 = Linear(concat(c, z)) -> 8×8×1024           (the seed names no norm or activation here; none is applied)
    per stage: ConvTranspose(4, stride 2) -> BatchNorm -> ReLU            (doubles the resolution)
               + AttentionBlock(H, query = mean of the flattened map), projected to the map's channels
                 and broadcast over H×W
               -> Dropout
    final:     ConvTranspose(4, stride 2, PyTorch padding 22, output_padding 1) -> tanh

Geometry with the default channels (1024, 512, 256, 128, 64): 8 -> 16 -> 32 -> 64 -> 128, each stage
a PyTorch ConvTranspose2d(k=4, s=2, p=1): (n − 1)·2 − 2·1 + 4 = 2n. The final layer must turn 128 into
215. PyTorch's size formula is out = (in − 1)·s − 2p + k + output_padding; the uncropped output is
(128 − 1)·2 + 4 = 258, so 43 pixels are cropped: p = 22 from each side gives 214, and output_padding = 1
gives back one pixel at the bottom/right: (128 − 1)·2 − 2·22 + 4 + 1 = 215. `final_conv_padding`
computes this for any resolution, so smaller test decoders keep the same rule.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models.conv_matmul import conv2d_stride1
from pikagen_jax.models.l1_encoder import AttentionBlock, linear

Array = jax.Array
STAGE_KERNEL, STAGE_STRIDE, STAGE_PADDING = 4, 2, 1
TORCH_BATCH_NORM_MOMENTUM = 0.9  # torch momentum 0.1 = weight of the new batch statistic


def torch_conv_transpose_size(in_size: int, kernel: int, stride: int, padding: int, output_padding: int = 0) -> int:
    """PyTorch ConvTranspose2d output size: (in − 1)·stride − 2·padding + kernel + output_padding."""
    return (in_size - 1) * stride - 2 * padding + kernel + output_padding


def final_conv_padding(in_size: int, image_size: int, kernel: int, stride: int = 2) -> tuple[int, int]:
    """(padding, output_padding) of a PyTorch ConvTranspose2d mapping in_size to image_size pixels.

    The uncropped output has (in − 1)·stride + kernel pixels; the surplus is cropped as evenly as PyTorch
    allows: `padding` from each side, `output_padding` (0 or 1) given back at the end. 128 -> 215 with
    kernel 4: surplus 258 − 215 = 43 -> (22, 1).
    """
    full = torch_conv_transpose_size(in_size, kernel, stride, 0)
    surplus = full - image_size
    if surplus < 0:
        raise ValueError(f"the decoder reaches only {full} px before its final layer can crop to image_size "
                         f"{image_size}: add a stage (decoder_channels) or raise base_size")
    padding = (surplus + 1) // 2
    output_padding = 2 * padding - surplus
    if output_padding >= stride:
        raise ValueError(f"cannot reach {image_size} px from {in_size} px with kernel {kernel}, stride {stride}")
    return padding, output_padding


class TorchConvTranspose(nnx.Module):
    """`torch.nn.ConvTranspose2d` (padding, output_padding, weights) on NHWC inputs, as a sub-pixel stride-1 conv.

    A stride-s transposed convolution equals s² stride-1 convolutions of the input (one per output phase,
    each with every s-th kernel tap, flipped), interleaved by depth-to-space. The layer computes them as
    one stride-1 ceil(k/s)×ceil(k/s) convolution with a [taps, taps, C_in, s²·C_out] kernel, through
    `conv2d_stride1`, whose gradients stay plain stride-1 convolutions. On CPU this is what keeps training
    usable: XLA:CPU computes the kernel gradient of `lax.conv_transpose` / `conv_general_dilated` (and of a
    padded stride-1 conv, differentiated by JAX's own rules) through a slow generic path: forward + backward
    at batch 10, 2 cores, 64->128 px 128->64 ch 12.8 s with XLA's rules, 0.36 s as im2col + matmul (the
    previous form), 0.22 s here (`bench/bench_conv_impl.py --model=l1`, BENCHMARKS.md).
    The full output, (in − 1)·s + k pixels a side, is then cropped as PyTorch does: `padding` pixels from
    each side, `output_padding` given back at the end.

    Kernel [k, k, C_in, C_out]: a PyTorch weight [C_in, C_out, k, k] loads as w.transpose(2, 3, 0, 1).
    Initialised with PyTorch's ConvTranspose2d fan-in (C_out·k²), normal instead of uniform, unless
    `kernel_init` is given; `use_bias=False` leaves the bias out (as `bias=False` in PyTorch).
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int, *, padding: int = 0,
                 output_padding: int = 0, use_bias: bool = True, kernel_init: Any = None,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if not 0 <= output_padding < stride:
            raise ValueError(f"output_padding must be in [0, stride={stride}), got {output_padding}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.output_padding = padding, output_padding
        self.dtype = dtype
        init = kernel_init or nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-1, out_axis=-2)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

    def output_size(self, in_size: int) -> int:
        return torch_conv_transpose_size(in_size, self.kernel_size, self.stride, self.padding, self.output_padding)

    def _phase_kernel(self) -> Array:
        """[k, k, C_in, C_out] -> [J, J, C_in, s·s·C_out], J = ceil(k / s): output phase (r, c) of the
        stride-1 convolution uses taps (s·(J − 1 − t) + r, s·(J − 1 − u) + c)."""
        k, s = self.kernel_size, self.stride
        taps = -(-k // s)
        kernel = self.kernel[...].astype(self.dtype)
        c_in, c_out = kernel.shape[2:]
        kernel = jnp.pad(kernel, ((0, taps * s - k), (0, taps * s - k), (0, 0), (0, 0)))
        kernel = kernel.reshape(taps, s, taps, s, c_in, c_out)[::-1, :, ::-1]  # (t, r, u, c, in, out)
        return kernel.transpose(0, 2, 4, 1, 3, 5).reshape(taps, taps, c_in, s * s * c_out)

    def __call__(self, x: Array) -> Array:
        """x [B, H, W, C_in] -> [B, H', W', C_out] with H' = output_size(H), W' = output_size(W)."""
        if x.ndim != 4:
            raise ValueError(f"TorchConvTranspose expects NHWC input, got shape {x.shape}")
        s, taps = self.stride, -(-self.kernel_size // self.stride)
        batch, height, width, c_in = x.shape
        rows, cols = height + taps - 1, width + taps - 1
        y = conv2d_stride1(x.astype(self.dtype), self._phase_kernel(), ((taps - 1, taps - 1), (taps - 1, taps - 1)))
        y = y.reshape(batch, rows, cols, s, s, -1).transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows * s, cols * s, -1)
        out_h, out_w = self.output_size(height), self.output_size(width)
        p = self.padding
        extra_h, extra_w = max(p + out_h - y.shape[1], 0), max(p + out_w - y.shape[2], 0)
        if extra_h or extra_w:  # output_padding past the full output: no kernel tap reaches it
            y = jnp.pad(y, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))
        y = y[:, p:p + out_h, p:p + out_w]
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class DecoderStage(nnx.Module):
    """ConvTranspose (×2) -> BatchNorm -> ReLU -> + projected text context -> Dropout."""

    def __init__(self, in_channels: int, out_channels: int, token_dim: int, *, attention_dim: int,
                 attention_heads: int, attention_dropout: float, dropout: float, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.conv = TorchConvTranspose(in_channels, out_channels, STAGE_KERNEL, STAGE_STRIDE, padding=STAGE_PADDING,
                                       dtype=dtype, rngs=rngs)
        self.norm = nnx.BatchNorm(out_channels, momentum=TORCH_BATCH_NORM_MOMENTUM, epsilon=1e-5, dtype=dtype,
                                  param_dtype=jnp.float32, rngs=rngs)
        self.attention = AttentionBlock(token_dim, attention_dim, out_channels, num_heads=attention_heads,
                                        query_dim=out_channels, dropout=attention_dropout, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: Array, tokens: Array, attention_mask: Array, *, deterministic: bool) -> Array:
        x = jax.nn.relu(self.norm(self.conv(x), use_running_average=deterministic))
        pooled = jnp.mean(x.reshape(x.shape[0], -1, x.shape[-1]).astype(jnp.float32), axis=1).astype(x.dtype)
        context = self.attention(tokens, attention_mask, pooled, deterministic=deterministic)
        return self.dropout(x + context[:, None, None, :], deterministic=deterministic)


class OutputPrior(nnx.Variable):
    """A fixed image the decoder adds its output to (not a Param: optimizers and weight decay skip it)."""


class ImageGenerator(nnx.Module):
    """concat(c, z) -> Linear -> base×base×channels[0] -> len(channels) − 1 stages -> RGB image, tanh.

    Args:
      context_dim, token_dim, z_dim: widths of c, of the encoder outputs H, and of the noise z.
      channels: feature-map widths, starting map first (seed: 1024, 512, 256, 128, 64).
      base_size: side of the starting map (seed: 8).
      image_size: output side (seed: 215); the final layer's crop follows from it (`final_conv_padding`).
      final_kernel: kernel of the final transposed conv (4).
      attention_dim, attention_heads, attention_dropout: the per-stage AttentionBlocks.
      dropout: after every stage.
      output_prior: predict a residual on a fixed prior image (`set_output_prior`; not trained, checkpointed)
        instead of tanh(x): image = clip(prior + x, −1, 1), with the last layer initialised to zero.
    """

    def __init__(self, context_dim: int, token_dim: int, z_dim: int, *, channels: Sequence[int] = (1024, 512, 256,
                 128, 64), base_size: int = 8, image_size: int = 215, final_kernel: int = 4,
                 attention_dim: int = 256, attention_heads: int = 4, attention_dropout: float = 0.0,
                 dropout: float = 0.0, output_prior: bool = False, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"decoder channels need a start width and at least one stage, got {channels}")
        self.base_size, self.channels, self.image_size = base_size, channels, image_size
        self.input_proj = linear(context_dim + z_dim, base_size * base_size * channels[0], dtype=dtype, rngs=rngs)
        self.stages = nnx.List([
            DecoderStage(c_in, c_out, token_dim, attention_dim=attention_dim, attention_heads=attention_heads,
                         attention_dropout=attention_dropout, dropout=dropout, dtype=dtype, rngs=rngs)
            for c_in, c_out in zip(channels[:-1], channels[1:])])
        last_size = base_size * STAGE_STRIDE ** (len(channels) - 1)
        padding, output_padding = final_conv_padding(last_size, image_size, final_kernel, STAGE_STRIDE)
        # With an output prior the last layer starts at zero, so the first prediction is the prior image.
        zero_init = nnx.initializers.zeros_init() if output_prior else None
        self.to_rgb = TorchConvTranspose(channels[-1], 3, final_kernel, STAGE_STRIDE, padding=padding,
                                         output_padding=output_padding, kernel_init=zero_init, dtype=dtype, rngs=rngs)
        self.output_prior = OutputPrior(jnp.zeros((image_size, image_size, 3), jnp.float32)) if output_prior else None

    def set_output_prior(self, image: Array) -> None:
        """Sets the prior image [S, S, 3] in [-1, 1] (e.g. the per-pixel median of the training sprites)."""
        if self.output_prior is None:
            raise ValueError("this decoder was built without an output prior (model.output_prior='none')")
        if image.shape != self.output_prior.shape:
            raise ValueError(f"prior image must have shape {self.output_prior.shape}, got {image.shape}")
        self.output_prior[...] = jnp.clip(jnp.asarray(image, jnp.float32), -1.0, 1.0)

    def __call__(self, context: Array, z: Array, tokens: Array, attention_mask: Array, *,
                 deterministic: bool) -> Array:
        """context [B, d], z [B, z_dim], tokens H [B, T, D], mask [B, T] -> images [B, S, S, 3] in (−1, 1)."""
        h = self.input_proj(jnp.concatenate([context, z.astype(context.dtype)], axis=-1))
        h = h.reshape(h.shape[0], self.base_size, self.base_size, self.channels[0])
        for stage in self.stages:
            h = stage(h, tokens, attention_mask, deterministic=deterministic)
        residual = self.to_rgb(h).astype(jnp.float32)
        if self.output_prior is None:
            return jnp.tanh(residual)
        # prior + residual, clipped to [-1, 1] in the forward pass only (straight-through): no tanh, whose
        # gradient would vanish on the prior's white background, and no zero gradient outside the range.
        image = self.output_prior[...] + residual
        return image + jax.lax.stop_gradient(jnp.clip(image, -1.0, 1.0) - image)
