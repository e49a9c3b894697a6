"""The GAN generator's folded cross-attention as one custom-gradient op that works a few thousand pixels at a time.

    out = softmax_T(scale · (x · K_h) / |x W_q,h|, masked) · V      x [B, L, C], K [B, C, H·T], V [B, H·T, C]

where K_h = W_q,h k̂_hᵀ (the query projection folded onto the unit keys) and V = v W_out (the output projection
folded onto the values), see `pikagen_jax.models.gan.CrossAttention`. Autodiff of that expression makes XLA:CPU
write and re-read several [B, L, H·T] float32 tensors (64 MB each at 64 px, batch 16) and transpose one of
them for W_q's gradient. Here the forward and the hand-written backward run `lax.map` over blocks of about
`BLOCK_PIXELS` pixels (one example, or part of one, or a few small ones), so those intermediates stay in cache;
the backward recomputes the block's softmax instead of storing it, as flash attention does. Same values and
gradients as autodiff of the plain expression (`folded_attention_autodiff`, tests/test_gan_models.py); about 2×
faster than it, forward and forward + backward, at 64 and 128 px (BENCHMARKS.md).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array

L2_EPS = 1e-12  # torch.nn.functional.normalize's default
BLOCK_PIXELS = 4096  # pixels per lax.map iteration: a [4096, H·T=256] float32 block is 4 MiB


def inverse_l2_norm(x: Array, eps: float = L2_EPS) -> Array:
    """1 / max(|x|, eps) over the last axis (kept as size 1)."""
    return _inverse_norm_from_squared(jnp.sum(x * x, axis=-1, keepdims=True), eps)


def _inverse_norm_from_squared(squared: Array, eps: float = L2_EPS) -> Array:
    """1 / max(sqrt(squared), eps)."""
    return jax.lax.rsqrt(jnp.maximum(squared, eps * eps))


def masked_softmax(logits: Array, keep: Array) -> Array:
    """Softmax over the last (token) axis of float32 `logits` [B, ·, ·, T], skipping tokens where keep [B, T] is
    False; a row with no kept token comes out uniform, as in `jax.nn.dot_product_attention`."""
    return jax.nn.softmax(jnp.where(keep[:, None, None, :], logits, jnp.finfo(jnp.float32).min), axis=-1)


def folded_attention(pixels: Array, query_keys: Array, w_q: Array, values_out: Array, keep: Array,
                     scale: Array | float, *, num_heads: int, block_pixels: int = BLOCK_PIXELS) -> Array:
    """softmax(scale · (x K_h) / |x W_q,h|, masked) · V summed over heads, for pixels [B, L, C] -> [B, L, C].

    query_keys [B, C, H·T] = W_q,h k̂_hᵀ per head; w_q [C, H·D]; values_out [B, H·T, C] = v_h W_out,h; keep [B, T]
    (bool); scale: the logit scale (a float or a traced scalar, which then gets a gradient). Matmuls run in
    `pixels.dtype`, the norm and the softmax in float32. The work is split into blocks of about `block_pixels`
    pixels (the value does not depend on it)."""
    batch, length, _ = pixels.shape
    if query_keys.shape[-1] % num_heads or values_out.shape[1] != query_keys.shape[-1]:
        raise ValueError(f"query_keys {query_keys.shape} / values_out {values_out.shape} do not hold "
                         f"{num_heads} heads of the same tokens")
    splits = _smallest_divisor_from(length, length // block_pixels)  # blocks per example
    group = min(batch, max(1, block_pixels // length)) if splits == 1 else 1  # examples per block
    group = None if group == 1 else group  # lax.map(batch_size=1) vmaps a size-1 axis: ~2x slower backward
    return _folded(num_heads, splits, group, pixels, query_keys, w_q, values_out, keep,
                   jnp.asarray(scale, jnp.float32))


def folded_attention_autodiff(pixels: Array, query_keys: Array, w_q: Array, values_out: Array, keep: Array,
                              scale: Array | float, *, num_heads: int) -> Array:
    """`folded_attention` as one plain expression left to autodiff: the reference it is tested and benchmarked
    against (it materialises the [B, L, H·T] logits, weights and their gradients at once)."""
    batch, length, _ = pixels.shape
    raw = jnp.einsum("blc,bcn->bln", pixels, query_keys).astype(jnp.float32).reshape(batch, length, num_heads, -1)
    q = (pixels @ w_q).astype(jnp.float32).reshape(batch, length, num_heads, -1)
    weights = masked_softmax(raw * (inverse_l2_norm(q) * scale), keep).astype(pixels.dtype)
    return jnp.einsum("bln,bnc->blc", weights.reshape(batch, length, -1), values_out)


def _smallest_divisor_from(n: int, k: int) -> int:
    """The smallest divisor of n that is ≥ max(k, 1)."""
    return next(d for d in range(max(1, k), n + 1) if n % d == 0)


def _block_softmax(heads: int, x: Array, query_keys: Array, w_q: Array, keep: Array, scale: Array
                   ) -> tuple[Array, ...]:
    """One block's attention weights: x [l, C], query_keys [C, H·T], keep [T] -> weights [l, H, T] float32, and
    what the backward needs besides (logits, inverse query norms, squared norms, queries)."""
    length = x.shape[0]
    tokens = query_keys.shape[-1] // heads
    raw = (x @ query_keys).astype(jnp.float32).reshape(length, heads, tokens)
    q = (x @ w_q).astype(jnp.float32).reshape(length, heads, -1)
    squared = jnp.sum(q * q, axis=-1)
    inv = _inverse_norm_from_squared(squared)
    logits = raw * (inv * scale)[..., None]
    weights = masked_softmax(logits[None], keep[None])[0]
    return weights, logits, inv, squared, q


def _block_forward(heads: int, x: Array, query_keys: Array, w_q: Array, values_out: Array, keep: Array,
                   scale: Array) -> Array:
    """One block: x [l, C], values_out [H·T, C] -> out [l, C]."""
    weights = _block_softmax(heads, x, query_keys, w_q, keep, scale)[0]
    return weights.astype(x.dtype).reshape(x.shape[0], -1) @ values_out


def _block_backward(heads: int, x: Array, query_keys: Array, w_q: Array, values_out: Array, keep: Array,
                    scale: Array, d_out: Array) -> tuple[Array, ...]:
    """Gradients of one block w.r.t. x, query_keys, w_q, values_out, and Σ ∂L/∂logit · logit (for the scale)."""
    length = x.shape[0]
    tokens = query_keys.shape[-1] // heads
    weights, logits, inv, squared, q = _block_softmax(heads, x, query_keys, w_q, keep, scale)
    d_out = d_out.astype(x.dtype)
    d_weights = (d_out @ values_out.T).astype(jnp.float32).reshape(length, heads, tokens)
    d_values_out = weights.astype(x.dtype).reshape(length, -1).T @ d_out
    d_logits = weights * (d_weights - jnp.sum(weights * d_weights, axis=-1, keepdims=True))
    d_logits = jnp.where(keep[None, None, :], d_logits, 0.0)  # masked logits were replaced, not scaled
    d_logits_logits = jnp.sum(d_logits * logits, axis=-1)  # [l, H]: Σ_T ∂L/∂logit · logit
    d_raw = (d_logits * (inv * scale)[..., None]).astype(x.dtype).reshape(length, -1)
    # logit = raw · scale / |q|: ∂L/∂q = −(Σ_T ∂L/∂logit · logit) q / |q|², zero where the eps clamp holds.
    d_q = jnp.where(squared > L2_EPS * L2_EPS, -d_logits_logits * inv * inv, 0.0)[..., None] * q
    d_q = d_q.astype(x.dtype).reshape(length, -1)
    d_x = d_raw @ query_keys.T + d_q @ w_q.T
    return d_x, x.T @ d_raw, x.T @ d_q, d_values_out, jnp.sum(d_logits_logits)


def _blocks(array: Array, splits: int) -> Array:
    """[B, L, ...] -> [B·splits, L/splits, ...]."""
    return array.reshape(array.shape[0] * splits, array.shape[1] // splits, *array.shape[2:])


def _per_block(array: Array, splits: int) -> Array:
    """[B, ...] -> [B·splits, ...]: each example's array repeated for each of its blocks."""
    return jnp.repeat(array, splits, axis=0) if splits > 1 else array


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _folded(heads: int, splits: int, group: int | None, pixels: Array, query_keys: Array, w_q: Array, values_out: Array,
            keep: Array, scale: Array) -> Array:
    inputs = (_blocks(pixels, splits), _per_block(query_keys, splits), _per_block(values_out, splits),
              _per_block(keep, splits))
    out = jax.lax.map(lambda a: _block_forward(heads, a[0], a[1], w_q, a[2], a[3], scale), inputs,
                      batch_size=group)
    return out.reshape(pixels.shape[0], pixels.shape[1], -1)


def _folded_forward(heads, splits, group, pixels, query_keys, w_q, values_out, keep, scale):
    out = _folded(heads, splits, group, pixels, query_keys, w_q, values_out, keep, scale)
    return out, (pixels, query_keys, w_q, values_out, keep, scale)


def _folded_backward(heads, splits, group, residuals, d_out):
    pixels, query_keys, w_q, values_out, keep, scale = residuals
    inputs = (_blocks(pixels, splits), _per_block(query_keys, splits), _per_block(values_out, splits),
              _per_block(keep, splits), _blocks(d_out, splits))
    d_x, d_qk, d_wq, d_vo, d_logits_logits = jax.lax.map(
        lambda a: _block_backward(heads, a[0], a[1], w_q, a[2], a[3], scale, a[4]), inputs, batch_size=group)
    per_example = lambda g: g.reshape(pixels.shape[0], splits, *g.shape[1:]).sum(1)  # noqa: E731
    return (d_x.reshape(pixels.shape), per_example(d_qk).astype(query_keys.dtype), d_wq.sum(0).astype(w_q.dtype),
            per_example(d_vo).astype(values_out.dtype), None, jnp.sum(d_logits_logits) / scale)


_folded.defvjp(_folded_forward, _folded_backward)
