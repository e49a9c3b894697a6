"""CompileCounter sees every XLA compilation (new shapes) and none for jit cache hits."""

from pathlib import Path

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


def test_persistent_cache_loads_count_and_a_set_cache_dir_wins(tmp_path):
    import os

    from pikagen_jax.training.compile_watch import enable_persistent_cache

    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # scripts/test.sh sets one: the environment's choice wins
            assert enable_persistent_cache(tmp_path / "ignored") == Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
            assert not (tmp_path / "ignored").exists()
            cache_dir = Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
        else:
            jax.config.update("jax_compilation_cache_dir", None)
            assert enable_persistent_cache(tmp_path / "cache") == tmp_path / "cache"
            assert enable_persistent_cache(tmp_path / "other") == tmp_path / "cache"  # already set: kept
            cache_dir = tmp_path / "cache"
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        x = jnp.full((7, 5), 0.25)
        jax.jit(lambda a: jnp.cos(a) @ a.T * 1.5)(x).block_until_ready()  # compiled and written to disk
        assert any(cache_dir.iterdir())
        jax.clear_caches()
        loaded, hits = CompileCounter(), []
        jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event))
        with loaded:  # a new jit object: the executable comes from the disk cache, and still counts
            jax.jit(lambda a: jnp.cos(a) @ a.T * 1.5)(x).block_until_ready()
        assert loaded.count == 1 and "/jax/compilation_cache/cache_hits" in hits
    finally:
        jax.config.update("jax_compilation_cache_dir", saved[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
