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


def sum_tolerance(terms: int, abs_sum: float = 1.0, eps: float = EPS32) -> float:
    """Largest difference between two evaluations of one sum of `terms` terms whose absolute values add up
    to `abs_sum`: terms · eps · abs_sum (each order's error is at most γ_terms · abs_sum)."""
    if terms < 1 or abs_sum < 0:
        raise ValueError(f"need terms >= 1 and abs_sum >= 0, got {terms}, {abs_sum}")
    return terms * eps * abs_sum


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
