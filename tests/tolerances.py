"""Float32 tolerances for parity tests, argued from the computation instead of read off one machine.

Two float32 evaluations of the same function (JAX/XLA against PyTorch/oneDNN, XLA's Eigen against its
YNNPACK kernels, an AVX2 against an AVX-512 code path, two blockings of one matmul) differ because each
adds its terms in its own order, with or without fused multiply-adds. For a sum of n terms t_i the
rounding error of any order is at most γ_n · Σ|t_i|, γ_n = n·u / (1 − n·u) ≈ n·u, u = eps / 2 (Higham,
*Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1), so two evaluations differ by at most

    n · eps · Σ|t_i|                                        (one sum: `sum_tolerance`)

A network output is reached through a chain of such sums (dot products, convolutions, means, variances).
With activations kept at order `scale` (normalised layers, unit-variance initialisation), each sum's error
passes on with a gain of about one and the errors of `depth` sums add:

    eps · scale · Σ_k n_k   ≤   depth · terms · eps · scale    (`path_tolerance`, `network_tolerance`)

where n_k are the lengths of the sums on the path (a conv's kernel_h · kernel_w · in_channels, a
LayerNorm's width for its mean and again for its variance), `terms` the longest of them, and `scale` bounds Σ|t_i| of those sums in units of the outputs (the outputs' magnitude for normalised
activations, times a stated factor where terms cancel). These are worst-case figures for the sums; the
observed differences are usually 10-100x smaller, so a tolerance from them does not sit on a knife edge
when another CPU or kernel library sums in another order. Every test that uses them states its numbers.

Comparisons of quantities that come out of cancellation (a mean of cosines of both signs, a difference
of nearly equal FIDs) are made in absolute terms, in the unit of the inputs the error lives in: a
relative tolerance on a result near zero is meaningless.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: the spacing of float32 numbers at 1
EPS64 = float(np.finfo(np.float64).eps)  # 2.22e-16


def sum_tolerance(terms: int, abs_sum=1.0, eps: float = EPS32):
    """Largest difference between two evaluations of one sum of `terms` terms whose absolute values add up
    to `abs_sum` (a number or an array, one per output): terms · eps · abs_sum (each order's error is at
    most γ_terms · abs_sum). A linear layer's exact Σ|t_i| is the layer applied to |input| with |weights|."""
    if terms < 1 or np.min(abs_sum) < 0:
        raise ValueError(f"need terms >= 1 and abs_sum >= 0, got {terms}, {np.min(abs_sum)}")
    return terms * eps * np.asarray(abs_sum, np.float64) if np.ndim(abs_sum) else terms * eps * float(abs_sum)


def path_tolerance(sum_lengths: Sequence[int], scale: float = 1.0, eps: float = EPS32) -> float:
    """Difference allowed between two float32 evaluations of an output reached through chained sums of
    the given lengths, activations of order `scale`: eps · scale · Σ lengths (each sum's worst case, added)."""
    if not sum_lengths:
        raise ValueError("need at least one sum on the path")
    return sum(sum_tolerance(n, scale, eps) for n in sum_lengths)


def network_tolerance(terms: int, depth: int, scale: float = 1.0, eps: float = EPS32) -> float:
    """`path_tolerance` of `depth` sums of at most `terms` terms each: depth · terms · eps · scale."""
    if depth < 1:
        raise ValueError(f"need depth >= 1, got {depth}")
    return path_tolerance([terms] * depth, scale, eps)


def max_abs(array) -> float:
    """The largest magnitude in `array` (float64), the `scale` of outputs that are not normalised."""
    return float(np.max(np.abs(np.asarray(array, np.float64))))


def transformer_path(*, width: int, intermediate: int, head_dim: int, tokens: int, layers: int,
                     extra: Sequence[int] = ()) -> list[int]:
    """The sums from a transformer's input embeddings to its last hidden states: per layer two LayerNorms
    (mean and variance over `width`), the query projection, the logits (`head_dim`), the softmax's
    normaliser and the weighted sum of values (`tokens` each), the output projection and the MLP
    (`width`, then `intermediate`); then the embedding or final LayerNorm and any `extra` sums (patch
    convolution, pooler, projection)."""
    per_layer = [2 * width, width, head_dim, 2 * tokens, width, 2 * width, width, intermediate]
    return per_layer * layers + [2 * width] + list(extra)


def assert_within(actual, expected, tol, what: str = "values") -> None:
    """Asserts |actual − expected| <= tol elementwise (absolute; `tol` a scalar or an array of the same
    shape, e.g. `sum_tolerance` of each output's own Σ|t_i|), naming the worst element."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shapes {actual.shape} vs {expected.shape}"
    tol = np.broadcast_to(np.asarray(tol, np.float64), actual.shape)
    excess = np.abs(actual - expected) - tol
    if excess.size == 0 or excess.max() <= 0:
        return
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    diff = abs(actual[worst] - expected[worst])
    raise AssertionError(f"{what}: |difference| {diff:.3g} at {tuple(int(i) for i in worst)} exceeds its tolerance "
                         f"{tol[worst]:.3g} ({diff / max(tol[worst], 1e-300):.1f}x)")


# The FID Inception-v3's longest chain of sums (tests/tolerances.py), as kernel_h * kernel_w * in_channels: the
# 299 px resize (2 taps per axis), the stem (3*9, 32*9, 32*9, 64, 80*9), Mixed_5b-d and 6a through their
# double-3x3 branch (<= 288, 64*9, 96*9), Mixed_6b-e through the double-7x7 branch (768, then 4 x 192*7),
# Mixed_7a (768, 3 x 192*7, 192*9), Mixed_7b-c (<= 2048, 448*9, 384*3) and the final 8x8 mean. BatchNorms are
# per-channel affine maps, max-pools exact. 53,959 terms: 6.4e-3 for activations of order one.
INCEPTION_PATH = ([2, 2, 27, 288, 288, 64, 720] + [288 + 576 + 864] * 4 + [768 + 4 * 1344] * 4
                  + [768 + 3 * 1344 + 1728] + [2048 + 4032 + 1152] * 2 + [64])

BF16_UNIT_ROUNDOFF = 2.0 ** -8  # u of bfloat16 (8 significand bits): each stored value is within u of exact


def bfloat16_tolerance(roundings: int, scale: float = 1.0) -> float:
    """Difference allowed between a bfloat16-compute and a float32 evaluation when `roundings` activations on
    the path are stored in bfloat16 (sums accumulate in float32, so the roundings dominate):
    roundings · 2⁻⁸ · scale, worst case; the float32 side's own error is negligible beside it."""
    if roundings < 1:
        raise ValueError(f"need roundings >= 1, got {roundings}")
    return roundings * BF16_UNIT_ROUNDOFF * scale
