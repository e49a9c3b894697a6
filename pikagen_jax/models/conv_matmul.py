"""Convolutions computed as one matrix multiply of shifted input copies (im2col), NHWC / HWIO.

Why: XLA:CPU differentiates strided convolutions through a slow generic (dilated-convolution) path. The
GAN's MA-GP term needs the gradient of the discriminator's input gradient, and for the 4×4 stride-2 convs
of the seed-002 discriminator that second-order gradient is 7–11× slower with `lax.conv_general_dilated`
than with the same convolution written as patches @ kernel (batch 48, 2 CPU cores, `bench/bench_conv_impl.py`:
64 px 32→64 ch 3159 ms vs 446 ms; 16 px 128→256 ch 1365 ms vs 201 ms). For stride-1 3×3 convs the library
convolution is as fast or faster, so `conv2d` uses the matmul form for strided convolutions only.

The patches cost k²/s² times the input's memory (4× for the 4×4 stride-2 convs), which is why it is not
used for stride-1 convolutions (9× for 3×3).
"""

from __future__ import annotations

from typing import Literal, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Padding = str | int | Sequence[tuple[int, int]]
ConvImpl = Literal["auto", "matmul", "xla"]
CONV_IMPLS = ("auto", "matmul", "xla")


def explicit_padding(padding: Padding, kernel_size: tuple[int, int], strides: tuple[int, int],
                     spatial: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) for 'SAME' / 'VALID' / an int / explicit pairs (XLA's conventions)."""
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode != "SAME":
            raise ValueError(f"padding must be 'SAME', 'VALID', an int or ((t, b), (l, r)) pairs, got {padding!r}")
        pads = []
        for size, k, s in zip(spatial, kernel_size, strides):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)  # type: ignore[return-value]
    pairs = tuple(tuple(int(v) for v in pair) for pair in padding)
    if len(pairs) != 2 or any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"explicit padding must be two (low, high) pairs, got {padding!r}")
    return pairs  # type: ignore[return-value]


def conv2d_matmul(x: Array, kernel: Array, strides: tuple[int, int] = (1, 1), padding: Padding = "VALID") -> Array:
    """`lax.conv_general_dilated(x, kernel, strides, padding, ('NHWC', 'HWIO', 'NHWC'))` as patches @ kernel.

    x: [B, H, W, C_in]; kernel: [kh, kw, C_in, C_out] -> [B, H', W', C_out], computed in x's dtype.
    """
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"conv2d_matmul needs x [B, H, W, C] and kernel [kh, kw, C, C_out] with equal C, got "
                         f"{x.shape} and {kernel.shape}")
    kh, kw, c_in, c_out = kernel.shape
    sh, sw = strides
    (top, bottom), (left, right) = explicit_padding(padding, (kh, kw), (sh, sw), x.shape[1:3])
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h = (padded.shape[1] - kh) // sh + 1
    out_w = (padded.shape[2] - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a {kh}x{kw} kernel does not fit the padded input {padded.shape[1:3]}")
    patches = jnp.concatenate([padded[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
                               for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ kernel.reshape(kh * kw * c_in, c_out)


def conv2d(x: Array, kernel: Array, strides: tuple[int, int] = (1, 1), padding: Padding = "VALID",
           impl: ConvImpl = "auto") -> Array:
    """NHWC / HWIO convolution; `impl='auto'` uses the matmul form for strided convs, XLA's conv otherwise."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
    strides = tuple(strides)
    if impl == "matmul" or (impl == "auto" and strides != (1, 1)):
        return conv2d_matmul(x, kernel, strides, padding)
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
