"""What every system's sample grids and generators share: the latent noise of a seed and the fixed prompts.

    z = noise(seed, count, z_dim)                   # the same codes on every run and machine
    prompts = fixed_prompts(config, 8)              # the first 8 validation captions (ids, mask, text, image)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pikagen_jax.data.pipeline import make_eval_loader


def noise(seed: int, count: int, z_dim: int) -> jax.Array:
    """The latent codes for `count` images from `seed` (reproducible across runs and machines)."""
    return jax.random.normal(jax.random.key(seed), (count, z_dim), jnp.float32)


def fixed_prompts(config: ml_collections.ConfigDict, count: int, split: str = "val") -> dict[str, np.ndarray]:
    """The first `count` captions of `split` (ids, mask, caption, image): the sample-grid prompts."""
    batch = next(iter(make_eval_loader(config, split, batch_size=count)))
    return {k: np.asarray(v) for k, v in batch.items()}
