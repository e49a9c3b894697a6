"""Text → images with a (text encoder, generator) pair: used for training sample grids and `generate`."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def make_sampler(text_encoder: nnx.Module, generator: nnx.Module
                 ) -> Callable[[np.ndarray, np.ndarray, jax.Array], jax.Array]:
    """Returns `sample(ids [B,T], mask [B,T], z [B,z_dim]) -> images [B,S,S,3]` in [-1, 1].

    The function is jitted once; it reads the modules' current weights at every call.
    """
    graphdef, _ = nnx.split((text_encoder, generator))

    @jax.jit
    def _sample(variables, ids, mask, z):
        text, gen = nnx.merge(graphdef, variables)
        tokens, sentence = text(ids, mask)
        return gen(z, sentence, tokens, mask)

    def sample(ids, mask, z):
        return _sample(nnx.state((text_encoder, generator)), jnp.asarray(ids), jnp.asarray(mask), z)

    return sample


def noise(seed: int, count: int, z_dim: int) -> jax.Array:
    """The latent codes for `count` images from `seed` (reproducible across runs and machines)."""
    return jax.random.normal(jax.random.key(seed), (count, z_dim), jnp.float32)
