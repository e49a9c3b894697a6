"""Exponential moving averages of model parameters (the GAN's EMA generator, the diffusion EMA U-Net).

    decay = warmup_decay(step, 0.999)          # min(d, (1 + t) / (10 + t)): follows the model early on
    ema_update(ema_model, model, decay)        # in place, inside the jitted step

Only `nnx.Param`s are averaged; the EMA copy is kept in float32 whatever the model's compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def warmup_decay(step: jax.Array | int, max_decay: float) -> jax.Array:
    """EMA decay with warm-up, min(max_decay, (1 + step) / (10 + step)).

    Early on the average follows the model closely instead of staying near the random initialisation
    (a constant 0.999 would still hold 78 % of it after 250 steps).
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))


def ema_update(ema: nnx.Module, model: nnx.Module, decay: jax.Array | float) -> None:
    """ema <- decay * ema + (1 - decay) * model, over the parameters, in place."""
    new = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype),
                       nnx.state(ema, nnx.Param), nnx.state(model, nnx.Param))
    nnx.update(ema, new)
