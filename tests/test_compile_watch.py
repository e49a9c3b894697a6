"""CompileCounter sees every XLA compilation (new shapes) and none for jit cache hits."""

import jax
import jax.numpy as jnp

from pikagen_jax.training.compile_watch import CompileCounter


def test_counts_compilations_not_cache_hits():
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    two, two_again, three, four = (jnp.full((n,), 0.5) for n in (2, 2, 3, 4))  # made outside the counters
    first, later = CompileCounter(), CompileCounter()
    with first:
        f(two).block_until_ready()
    with later:
        f(two_again).block_until_ready()  # same shape: cache hit
    assert first.count == 1 and later.count == 0
    with later:
        f(three).block_until_ready()  # a new shape compiles again
    assert later.count == 1
    f(four).block_until_ready()  # outside any context: not counted
    assert later.count == 1
