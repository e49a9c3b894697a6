"""Strided convolutions in the forms XLA:CPU differentiates fast, NHWC / HWIO.

Why: the GAN's MA-GP (and the DCGAN's WGAN-GP) need the gradient of the discriminator's input gradient.
XLA:CPU differentiates strided convolutions through a slow generic (dilated-convolution) path: for the 4×4
stride-2 convs of the seed-002 discriminator the second-order gradient was 7–11× slower with
`lax.conv_general_dilated` than with the same convolution written as patches @ kernel (im2col).

`conv2d_space_to_depth` (the default for strided convs, `impl='auto'`) is faster still: it moves each
stride×stride block of pixels into channels and runs a stride-1 conv, whose gradients of every order are
stride-1 convs too (`conv2d_stride1` keeps them in the form XLA:CPU runs fast). At batch 32, 2 CPU cores,
`bench/bench_conv_impl.py`: forward 3–4×, gradient 1.2–2× and second-order gradient 2–2.4× faster than
im2col for 64–16 px (`BENCHMARKS.md`). For stride-1 3×3 convs the library convolution is fastest, so
`conv2d` leaves them to XLA.

im2col costs k²/s² times the input's memory (4× for the 4×4 stride-2 convs, 9× for a 3×3 stride-1 conv).
"""

from __future__ import annotations

from typing import Literal, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Padding = str | int | Sequence[tuple[int, int]]
ConvImpl = Literal["auto", "space_to_depth", "matmul", "xla"]
CONV_IMPLS = ("auto", "space_to_depth", "matmul", "xla")


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


def _conv_geometry(name: str, x: Array, kernel: Array, strides: tuple[int, int], padding: Padding
                   ) -> tuple[tuple[int, int], tuple[int, int], int, int]:
    """Checks NHWC x / HWIO kernel for `name`; returns (explicit padding pairs, output height, output width)."""
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"{name} needs x [B, H, W, C] and kernel [kh, kw, C, C_out] with equal C, got "
                         f"{x.shape} and {kernel.shape}")
    kh, kw = kernel.shape[:2]
    sh, sw = strides
    (top, bottom), (left, right) = explicit_padding(padding, (kh, kw), (sh, sw), x.shape[1:3])
    padded = (x.shape[1] + top + bottom, x.shape[2] + left + right)
    out_h, out_w = (padded[0] - kh) // sh + 1, (padded[1] - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a {kh}x{kw} kernel does not fit the padded input {padded}")
    return (top, bottom), (left, right), out_h, out_w


def conv2d_matmul(x: Array, kernel: Array, strides: tuple[int, int] = (1, 1), padding: Padding = "VALID") -> Array:
    """`lax.conv_general_dilated(x, kernel, strides, padding, ('NHWC', 'HWIO', 'NHWC'))` as patches @ kernel.

    x: [B, H, W, C_in]; kernel: [kh, kw, C_in, C_out] -> [B, H', W', C_out], computed in x's dtype.
    """
    (top, bottom), (left, right), out_h, out_w = _conv_geometry("conv2d_matmul", x, kernel, strides, padding)
    kh, kw, c_in, c_out = kernel.shape
    sh, sw = strides
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    patches = jnp.concatenate([padded[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
                               for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ kernel.reshape(kh * kw * c_in, c_out)


_NHWC = ("NHWC", "HWIO", "NHWC")


def conv2d_stride1(x: Array, kernel: Array, padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """Stride-1 NHWC / HWIO convolution whose gradients, of every order, are plain VALID stride-1 convolutions.

    XLA:CPU rewrites some of the convolutions that JAX's own transpose rules produce for second-order
    gradients (a padded kernel gradient became a kernel-reversed, operand-swapped convolution that ran on a
    slow generic loop: 1.8 s instead of milliseconds for a 2×2 kernel). Here padding is an explicit
    `jnp.pad`, the input gradient is a VALID convolution of the padded output gradient with the flipped,
    transposed kernel, and the kernel gradient a VALID convolution of transposed operands, each again this
    function, so every derivative keeps the `b01f_01io->b01f` form.
    """
    (top, bottom), (left, right) = padding
    return _conv2d_valid(jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))), kernel)


@jax.custom_vjp
def _conv2d_valid(x: Array, kernel: Array) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_NHWC)


def _conv2d_valid_fwd(x, kernel):
    return _conv2d_valid(x, kernel), (x, kernel)


def _conv2d_valid_bwd(residuals, grad_out):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # [kh, kw, C_out, C_in]
    grad_x = _conv2d_valid(jnp.pad(grad_out, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0))), flipped)
    # kernel gradient: channels as the batch, the batch as features, the output gradient as the kernel
    grad_kernel = _conv2d_valid(x.transpose(3, 1, 2, 0), grad_out.transpose(1, 2, 0, 3))
    return grad_x, grad_kernel.transpose(1, 2, 0, 3).astype(kernel.dtype)


_conv2d_valid.defvjp(_conv2d_valid_fwd, _conv2d_valid_bwd)


def conv2d_space_to_depth(x: Array, kernel: Array, strides: tuple[int, int], padding: Padding = "VALID") -> Array:
    """A strided convolution as a stride-1 one: space-to-depth of the (padded) input, then a VALID conv.

    A k×k kernel with stride s reads input row s·i + kh = s·(i + a) + p for kh = s·a + p, so after moving
    each s×s block of pixels into channels (order: p_h, p_w, C) it is a ⌈k/s⌉×⌈k/s⌉ stride-1 conv whose
    kernel is the original one regrouped (zero-padded to a multiple of s). Same values and FLOPs (up to that
    padding) as `lax.conv_general_dilated`, but every gradient of it is a stride-1 convolution too.
    """
    (top, bottom), (left, right), out_h, out_w = _conv_geometry("conv2d_space_to_depth", x, kernel, strides,
                                                                 padding)
    kh, kw, c_in, c_out = kernel.shape
    sh, sw = strides
    ah, aw = -(-kh // sh), -(-kw // sw)  # kernel size in blocks
    kernel = jnp.pad(kernel, ((0, ah * sh - kh), (0, aw * sw - kw), (0, 0), (0, 0)))
    kernel = kernel.reshape(ah, sh, aw, sw, c_in, c_out).transpose(0, 2, 1, 3, 4, 5)
    kernel = kernel.reshape(ah, aw, sh * sw * c_in, c_out)
    rows, cols = (out_h - 1 + ah) * sh, (out_w - 1 + aw) * sw  # padded extent the blocks cover
    x = jnp.pad(x, ((0, 0), (top, max(rows - x.shape[1] - top, 0)), (left, max(cols - x.shape[2] - left, 0)),
                    (0, 0)))[:, :rows, :cols]
    batch = x.shape[0]
    x = x.reshape(batch, rows // sh, sh, cols // sw, sw, c_in).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, rows // sh, cols // sw, sh * sw * c_in)
    return conv2d_stride1(x, kernel.astype(x.dtype), ((0, 0), (0, 0)))


def conv2d(x: Array, kernel: Array, strides: tuple[int, int] = (1, 1), padding: Padding = "VALID",
           impl: ConvImpl = "auto") -> Array:
    """NHWC / HWIO convolution. `impl`: 'auto' (space-to-depth for strided convs, XLA's conv for stride 1),
    'space_to_depth' / 'matmul' (im2col) for strided convs (stride-1 ones: XLA's conv, resp. im2col), or
    'xla' (`lax.conv_general_dilated` everywhere). All give the same values."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
    strides = tuple(strides)
    if impl == "matmul":
        return conv2d_matmul(x, kernel, strides, padding)
    if impl in ("auto", "space_to_depth") and strides != (1, 1):
        return conv2d_space_to_depth(x, kernel, strides, padding)
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
