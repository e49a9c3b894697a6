"""Spectral normalisation (Miyato et al. 2018) for convolutions and dense layers in Flax NNX.

`nnx.SpectralNorm` (flax 0.12.8) is not used: it writes the normalised weight back into the wrapped
layer's `Param` on every call, so the stored weight drifts (it is divided by sigma at each forward pass,
in eval too) and the call mutates a `Param` inside any inner `jax.grad` (as MA-GP needs). The layers here
keep the raw weight `W` as the trainable `Param` and compute `W / sigma(W)` on the fly.

The power-iteration vector `u` is a `SpectralState` (a subclass of `nnx.BatchStat`, so filters on
`nnx.BatchStat` pick it up and optimizers built with `wrt=nnx.Param` ignore it). In training mode each call
runs `n_power_iterations` power iterations and stores the new `u` (as PyTorch's `spectral_norm` does); in
eval mode (`module.eval()`, or `update_stats=False` at call time) `u` is read but never written, so the
call is pure and can sit inside `jax.grad` / `jax.vjp`.

`frozen_spectral_norm(module)` computes every layer's `W / sigma(W)` once and makes the calls inside the
block reuse it, so a discriminator that runs several times in one step (hinge terms, MA-GP) runs one power
iteration and uses the same normalised weights everywhere, as PyTorch's `spectral_norm` does when the
gradient penalty reuses the hinge loss's forward pass.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.models.conv_matmul import CONV_IMPLS, ConvImpl, Padding, conv2d

Array = jax.Array


# id(layer) -> W / sigma(W), while a `frozen_spectral_norm` block is open (kept off the modules, whose
# attributes NNX treats as static or as state).
_FROZEN_KERNELS: contextvars.ContextVar[dict[int, Array]] = contextvars.ContextVar("frozen_kernels", default={})


class SpectralState(nnx.BatchStat):
    """Non-trainable state of spectral normalisation (the power-iteration vector `u`)."""


def _l2_normalize(x: Array, eps: float) -> Array:
    """x / max(||x||, eps), with a gradient that stays finite at x = 0."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x), eps * eps))


def spectral_normalize(kernel: Array, u: Array, *, n_power_iterations: int = 1,
                       eps: float = 1e-12) -> tuple[Array, Array, Array]:
    """Divides `kernel` by an estimate of its largest singular value.

    The kernel is viewed as a matrix [prod(shape[:-1]), shape[-1]] (inputs x outputs), the convention of
    flax kernels (HWIO for convolutions). Gradients flow through `kernel` but not through `u`, `v`.

    Returns:
      (normalised kernel with the shape of `kernel`, updated u [shape[-1]], sigma (scalar)).
    """
    if n_power_iterations < 1:
        raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
    matrix = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
    u = u.astype(jnp.float32)
    matrix_const = jax.lax.stop_gradient(matrix)
    for _ in range(n_power_iterations):  # same order as torch.nn.utils.spectral_norm (u lives in output space)
        v = _l2_normalize(matrix_const @ u, eps)
        u = _l2_normalize(matrix_const.T @ v, eps)
    u = jax.lax.stop_gradient(u)
    v = jax.lax.stop_gradient(v)
    sigma = v @ matrix @ u
    normalised = matrix / jnp.where(sigma > 0, sigma, 1.0)
    return normalised.reshape(kernel.shape), u, sigma


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


class _SpectralNormBase(nnx.Module):
    """Holds kernel, bias, the power-iteration vector and the train/eval flag."""

    def _init_spectral(self, kernel_shape: tuple[int, ...], out_features: int, *, use_bias: bool,
                       n_power_iterations: int, eps: float, dtype, param_dtype, rngs: nnx.Rngs) -> None:
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), kernel_shape, param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        u0 = jax.random.normal(rngs.params(), (out_features,), jnp.float32)
        self.u = SpectralState(u0 / jnp.linalg.norm(u0))
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        self.dtype = dtype
        # Named like BatchNorm's flag so that `module.train()` / `module.eval()` toggle it.
        self.use_running_average = False

    def normalized_kernel(self, update_stats: bool | None = None) -> Array:
        """W / sigma(W) in float32; in training mode (or update_stats=True) also stores the new `u`.

        Inside `frozen_spectral_norm` it returns the kernel computed on entry and `update_stats` is ignored."""
        frozen = _FROZEN_KERNELS.get().get(id(self))
        if frozen is not None:
            return frozen
        update = (not self.use_running_average) if update_stats is None else update_stats
        kernel, u, _ = spectral_normalize(self.kernel[...], self.u[...],
                                          n_power_iterations=self.n_power_iterations, eps=self.eps)
        if update:
            self.u[...] = u
        return kernel

    def sigma(self) -> Array:
        """The current estimate of the kernel's largest singular value (does not update state)."""
        return spectral_normalize(self.kernel[...], self.u[...],
                                  n_power_iterations=self.n_power_iterations, eps=self.eps)[2]

    def _compute_dtype(self, x: Array, compute_dtype) -> jnp.dtype:
        return jnp.dtype(compute_dtype or self.dtype or x.dtype)


@contextlib.contextmanager
def frozen_spectral_norm(module: nnx.Module, *, update_stats: bool | None = None) -> Iterator[None]:
    """Within the block, every spectral-norm layer of `module` uses the `W / sigma(W)` computed on entry.

    On entry each layer runs its power iteration once (storing the new `u` when `update_stats` is True, or
    when it is None and the layer is in training mode); calls inside the block then read that kernel and
    mutate nothing, so they may sit inside `jax.vjp` / `jax.grad`. Gradients flow into the raw kernels.
    """
    layers = [node for _, node in nnx.iter_graph(module) if isinstance(node, _SpectralNormBase)]
    frozen = dict(_FROZEN_KERNELS.get())
    for layer in layers:
        frozen.pop(id(layer), None)  # a nested block recomputes
    token = _FROZEN_KERNELS.set(frozen)
    try:
        for layer in layers:
            frozen[id(layer)] = layer.normalized_kernel(update_stats)
        yield
    finally:
        _FROZEN_KERNELS.reset(token)


class SpectralNormConv(_SpectralNormBase):
    """2-D convolution (NHWC) whose HWIO kernel is spectrally normalised on every call.

    `conv_impl` ('auto', 'space_to_depth', 'matmul', 'xla'; see `pikagen_jax.models.conv_matmul`): 'auto'
    computes strided convolutions as space-to-depth + a stride-1 conv, which XLA:CPU differentiates (twice,
    for MA-GP) many times faster than its strided convolution.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int],
                 strides: int | Sequence[int] = 1, *, padding: Padding = "SAME", use_bias: bool = True,
                 n_power_iterations: int = 1, eps: float = 1e-12, dtype=None, param_dtype=jnp.float32,
                 conv_impl: ConvImpl = "auto", rngs: nnx.Rngs):
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
        self.kernel_size = _pair(kernel_size)
        self.strides = _pair(strides)
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        self.padding = padding
        self.conv_impl = conv_impl
        self._init_spectral((*self.kernel_size, in_features, out_features), out_features, use_bias=use_bias,
                            n_power_iterations=n_power_iterations, eps=eps, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Array, *, update_stats: bool | None = None, compute_dtype=None) -> Array:
        """x: [B, H, W, in_features] -> [B, H', W', out_features] in the compute dtype."""
        dtype = self._compute_dtype(x, compute_dtype)
        kernel = self.normalized_kernel(update_stats).astype(dtype)
        y = conv2d(x.astype(dtype), kernel, self.strides, self.padding, impl=self.conv_impl)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class SpectralNormLinear(_SpectralNormBase):
    """Dense layer whose [in, out] kernel is spectrally normalised on every call."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 n_power_iterations: int = 1, eps: float = 1e-12, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self._init_spectral((in_features, out_features), out_features, use_bias=use_bias,
                            n_power_iterations=n_power_iterations, eps=eps, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Array, *, update_stats: bool | None = None, compute_dtype=None) -> Array:
        """x: [..., in_features] -> [..., out_features] in the compute dtype."""
        dtype = self._compute_dtype(x, compute_dtype)
        y = x.astype(dtype) @ self.normalized_kernel(update_stats).astype(dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y
