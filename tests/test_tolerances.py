"""The tolerance model of tests/tolerances.py holds for real float32 sums in different orders, and its
assertion names the worst element."""

from __future__ import annotations

import numpy as np
import pytest

from tests.tolerances import assert_within, network_tolerance, path_tolerance, sum_tolerance


@pytest.mark.parametrize("n", [10, 300, 5000])
def test_two_summation_orders_differ_by_less_than_sum_tolerance(n):
    rng = np.random.default_rng(n)
    for trial in range(20):
        terms = (rng.normal(size=n) * rng.uniform(0.1, 10.0)).astype(np.float32)
        sequential = np.float32(0)
        for t in terms:  # left to right, one rounding per addition
            sequential = np.float32(sequential + t)
        reverse = np.float32(0)
        for t in terms[::-1]:
            reverse = np.float32(reverse + t)
        pairwise = terms.sum(dtype=np.float32)  # numpy's blocked pairwise sum: a third order
        exact = terms.astype(np.float64).sum()
        bound = sum_tolerance(n, np.abs(terms.astype(np.float64)).sum())
        for value in (sequential, reverse, pairwise):
            assert abs(float(value) - exact) <= bound / 2  # one evaluation: gamma_n * sum|t| (n u = n eps / 2)
        assert abs(float(sequential) - float(reverse)) <= bound


def test_path_and_network_tolerances_add_the_sums():
    assert path_tolerance([10, 20], 2.0) == pytest.approx(sum_tolerance(30, 2.0))
    assert network_tolerance(16, 3) == pytest.approx(path_tolerance([16, 16, 16]))
    per_output = sum_tolerance(4, np.array([1.0, 2.0]))
    assert per_output.shape == (2,) and per_output[1] == pytest.approx(2 * per_output[0])
    with pytest.raises(ValueError):
        sum_tolerance(0)
    with pytest.raises(ValueError):
        path_tolerance([])


def test_assert_within_names_the_worst_element_and_accepts_per_element_tolerances():
    assert_within([1.0, 2.0], [1.0 + 1e-6, 2.0], 2e-6)
    assert_within([1.0, 2.0], [1.1, 2.0], [0.2, 0.0])
    with pytest.raises(AssertionError, match=r"\|difference\| 0\.1 at \(1,\) exceeds its tolerance 0\.05"):
        assert_within([1.0, 2.0], [1.0, 2.1], [1.0, 0.05], "pair")
    with pytest.raises(AssertionError, match="shapes"):
        assert_within([1.0], [1.0, 2.0], 1.0)
