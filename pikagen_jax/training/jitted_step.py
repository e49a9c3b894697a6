"""The jitted, data-parallel train step every system's trainer wraps around its pure step function.

    train_step = make_jitted_step(state, lambda s, batch, step: my_step(s, batch, step, config), mesh)
    metrics = train_step(sharded_batch, step)          # what `run_training` calls

`state` is one NNX module holding everything a step reads or updates (models, optimizers, frozen
networks). Its variables are passed to one `jax.jit` program, replicated over the mesh and donated (the
step updates them in place on the devices); the batch arrives sharded over the mesh's `'data'` axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pikagen_jax.training.mesh import Mesh, replicated

Batch = dict[str, jax.Array]
StepFn = Callable[[Any, Batch, jax.Array], dict[str, jax.Array]]


def make_jitted_step(state: nnx.Module, step_fn: StepFn, mesh: Mesh, *,
                     batch_keys: Sequence[str] | None = None) -> Callable[[Batch, int], dict[str, jax.Array]]:
    """A host callable `(sharded batch, step) -> device metrics` that runs `step_fn(state, batch, step)`
    jitted on the donated, replicated variables of `state` and writes the new ones back into `state`.

    `step_fn` updates the merged module in place (NNX style) and returns scalar metrics. `batch_keys`
    selects the batch entries passed in (default: all); the step number arrives as an int32 array, so
    one compilation serves every step. The jitted function is exposed as `.jitted` (for compile checks
    and cost analysis).
    """
    graphdef, _ = nnx.split(state)

    def _step(variables: Any, batch: Batch, step: jax.Array):
        model = nnx.merge(graphdef, variables)
        metrics = step_fn(model, batch, step)
        return nnx.state(model), metrics

    jitted = jax.jit(_step, donate_argnums=(0,), out_shardings=replicated(mesh))

    def train_step(batch: Batch, step: int) -> dict[str, jax.Array]:
        inputs = dict(batch) if batch_keys is None else {key: batch[key] for key in batch_keys}
        variables, metrics = jitted(nnx.state(state), inputs, jnp.asarray(step, jnp.int32))
        nnx.update(state, variables)
        return metrics

    train_step.jitted = jitted
    return train_step
