"""EfficientNet-Lite (Tan & Le 2019, the TF-Lite variants) in Flax NNX, as a frozen multi-scale feature network.

Projected GANs (Sauer et al. 2021) put a GAN's discriminator on the features of a pretrained EfficientNet-Lite0;
this is that network. The layout is the TF-Lite one (no squeeze-excitation, ReLU6, stem and head not scaled) as
in `efficientnet-lite-pytorch` / timm's `tf_efficientnet_lite*`: a 3x3 stride-2 stem, then MBConv blocks
(1x1 expansion, depthwise kxk, 1x1 projection, identity skip where shapes allow) in seven stages. Convolutions
pad like TF 'SAME', BatchNorms are frozen (inference statistics, folded into a scale and a shift at load time).
Inputs are images in [-1, 1] (TF-Lite's (x - 127) / 128 preprocessing), NHWC.

`features(x)` returns the four maps Projected GANs use: after stage 1 (stride 4), stage 2 (stride 8), stage 4
(stride 16) and stage 6 (stride 32) — 24, 40, 112 and 320 channels for Lite0. Every weight is a `Pretrained`
variable, not an `nnx.Param`: optimizers (`wrt=nnx.Param`) and `nnx.grad` leave the network alone, while
gradients still flow through it to its input. Weights: `pikagen_jax.models.efficientnet_weights`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models.params import Pretrained

Array = jax.Array
BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio, in channels, out channels) of EfficientNet-Lite's seven stages
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
# The stages whose output Projected GANs' four feature maps are (layer0 .. layer3 of their `_make_efficientnet`).
FEATURE_STAGES = (1, 2, 4, 6)
# name -> (width multiplier, depth multiplier); all Lite models keep the stem at 32 and the first and last
# stages' repeats fixed.
VARIANTS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2), "lite3": (1.2, 1.4), "lite4": (1.4, 1.8)}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding for a width multiplier (to a multiple of 8, never 10 % below)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: kernel, stride, expansion ratio, input and output channels."""

    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int

    @property
    def hidden(self) -> int:
        return self.in_channels * self.expand

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def block_specs(variant: str = "lite0") -> list[list[BlockSpec]]:
    """The MBConv blocks of each of the seven stages of an EfficientNet-Lite variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; use one of {sorted(VARIANTS)}")
    width, depth = VARIANTS[variant]
    stages = []
    for index, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(STAGES):
        fixed = index in (0, len(STAGES) - 1)
        repeats = repeats if fixed else int(math.ceil(depth * repeats))
        c_in = 32 if index == 0 else round_filters(c_in, width)
        c_out = round_filters(c_out, width)
        blocks = [BlockSpec(kernel, stride, expand, c_in, c_out)]
        blocks += [BlockSpec(kernel, 1, expand, c_out, c_out) for _ in range(repeats - 1)]
        stages.append(blocks)
    return stages


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding of one axis: output ceil(size / stride), the odd pixel of padding after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def depthwise_conv(x: Array, kernel: Array, stride: int) -> Array:
    """Depthwise conv (kernel [k, k, 1, C]) with TF 'SAME' padding, as k*k shifted multiply-adds.

    The same values as `lax.conv_general_dilated(..., feature_group_count=C)` (tested), which XLA:CPU runs
    through a slow generic path: 10-40x slower forward and up to 100x slower in the input gradient the
    Projected GAN's generator step needs (measured on 2 cores, BENCHMARKS.md)."""
    k = kernel.shape[0]
    _, height, width, _ = x.shape
    (top, bottom), (left, right) = same_padding(height, k, stride), same_padding(width, k, stride)
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h, out_w = -(-height // stride), -(-width // stride)
    kernel = kernel.astype(x.dtype)
    out = None
    for i in range(k):
        for j in range(k):
            window = padded[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride, :]
            term = window * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def _conv(x: Array, kernel: Array, stride: int, groups: int = 1) -> Array:
    if groups > 1:
        if groups != x.shape[-1] or kernel.shape[2] != 1:
            raise ValueError(f"only depthwise grouped convolutions are supported, got {groups} groups for "
                             f"{x.shape[-1]} channels")
        return depthwise_conv(x, kernel, stride)
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class FrozenConvBN(nnx.Module):
    """Bias-free conv + frozen BatchNorm (folded: x * scale + shift), optionally ReLU6."""

    def __init__(self, kernel_shape: tuple[int, int, int, int], stride: int = 1, groups: int = 1, relu6: bool = True):
        self.kernel = Pretrained(jnp.zeros(kernel_shape, jnp.float32))
        self.scale = Pretrained(jnp.ones((kernel_shape[-1],), jnp.float32))
        self.shift = Pretrained(jnp.zeros((kernel_shape[-1],), jnp.float32))
        self.stride, self.groups, self.relu6 = stride, groups, relu6

    def __call__(self, x: Array) -> Array:
        x = _conv(x, self.kernel[...], self.stride, self.groups)
        x = x * self.scale[...].astype(x.dtype) + self.shift[...].astype(x.dtype)
        return jnp.clip(x, 0.0, 6.0) if self.relu6 else x


class MBConv(nnx.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite form)."""

    def __init__(self, spec: BlockSpec):
        self.spec = spec
        self.expand = FrozenConvBN((1, 1, spec.in_channels, spec.hidden)) if spec.expand != 1 else None
        self.depthwise = FrozenConvBN((spec.kernel, spec.kernel, 1, spec.hidden), spec.stride, groups=spec.hidden)
        self.project = FrozenConvBN((1, 1, spec.hidden, spec.out_channels), relu6=False)

    def __call__(self, x: Array) -> Array:
        h = x if self.expand is None else self.expand(x)
        h = self.project(self.depthwise(h))
        return x + h if self.spec.has_skip else h


class EfficientNetLite(nnx.Module):
    """EfficientNet-Lite's convolutional trunk (no head, no classifier): images -> four feature maps."""

    def __init__(self, variant: str = "lite0"):
        self.variant = variant
        self.stem = FrozenConvBN((3, 3, 3, 32), stride=2)
        self.stages = nnx.List([nnx.List([MBConv(spec) for spec in stage]) for stage in block_specs(variant)])

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the four maps `features` returns."""
        specs = block_specs(self.variant)
        return tuple(specs[stage][-1].out_channels for stage in FEATURE_STAGES)

    def features(self, images: Array) -> list[Array]:
        """Images [B, H, W, 3] in [-1, 1] -> maps at strides 4, 8, 16 and 32 (stages 1, 2, 4, 6)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"EfficientNet-Lite takes NHWC RGB images in [-1, 1], got shape {images.shape}")
        x = self.stem(images)
        maps = []
        for index, stage in enumerate(self.stages):
            for block in stage:
                x = block(x)
            if index in FEATURE_STAGES:
                maps.append(x)
        return maps

    def __call__(self, images: Array) -> list[Array]:
        return self.features(images)
