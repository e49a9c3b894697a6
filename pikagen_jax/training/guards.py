"""What to do when a loss or gradient goes NaN / Inf.

Two policies, chosen by config (`'stop'` or `'skip'`):

* `'stop'` (default): at each log interval the trainer fetches its metrics and calls
  `check_finite(metrics, step, 'stop')`, which raises a `FloatingPointError` naming the metric and step.
* `'skip'`: inside the jitted train step, `select_if_finite` (or `restore_nodes_if_nonfinite` for NNX
  modules mutated in place) keeps the previous state when the loss is not finite and reports a `skipped`
  flag; `check_finite(..., 'skip')` then only logs a warning.

In-step use with NNX (the optimizer updates the model in place, so snapshot first)::

    old = snapshot_state(model, optimizer)
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    optimizer.update(model, grads)
    skipped = restore_nodes_if_nonfinite((loss, grads), old, model, optimizer)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

POLICIES = ("stop", "skip")


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"non-finite policy must be one of {POLICIES}, got {policy!r} "
                         "(set e.g. --config.train.nonfinite_policy=stop)")


def check_finite(metrics: Mapping[str, Any], step: int, policy: str = "stop") -> bool:
    """Checks host-side metric values; returns True if all floating-point values are finite.

    Call it at log intervals, on metrics already fetched (or about to be: values are converted with
    `np.asarray`). Non-float entries (counters, flags) are ignored. With `policy='stop'` a non-finite value
    raises `FloatingPointError` naming the metric and step; with `'skip'` it is logged and False returned.
    """
    _check_policy(policy)
    bad = []
    for name, value in metrics.items():
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            bad.append(f"{name}={array.tolist() if array.size <= 4 else 'array with non-finite values'}")
    if not bad:
        return True
    message = f"non-finite metric(s) at step {step}: {', '.join(bad)}"
    if policy == "stop":
        raise FloatingPointError(
            f"{message}. Training stopped (nonfinite_policy='stop'). Lower the learning rate, check the input "
            "data, or resume from the last checkpoint with nonfinite_policy='skip' to skip such steps.")
    logging.warning("%s; the update(s) were skipped (nonfinite_policy='skip')", message)
    return False


def all_finite(tree: Any) -> jax.Array:
    """Scalar bool array: True iff every floating-point leaf of `tree` is finite. Jit-friendly."""
    checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def select_if_finite(loss: Any, new_state: Any, old_state: Any) -> tuple[Any, jax.Array]:
    """Returns `(new_state, False)` if every float leaf of `loss` is finite, else `(old_state, True)`.

    `loss` may be a scalar or any pytree (pass `(loss, grads)` to also guard the gradients). The two states
    must have the same tree structure; any leaves are allowed (PRNG keys included). Jit-friendly
    (`jax.lax.cond` over pytrees); the second output is the `skipped` flag for the step's metrics.
    """
    finite = all_finite(loss)
    state = jax.lax.cond(finite, lambda: new_state, lambda: old_state)
    return state, jnp.logical_not(finite)


def snapshot_state(*nodes: Any) -> Any:
    """A copy of the state of NNX modules / optimizers that later in-place updates do not touch.

    `nnx.state` returns the live Variables, which `optimizer.update` mutates; the identity `tree.map`
    builds new Variables holding the current arrays (no data is copied).
    """
    return jax.tree.map(lambda leaf: leaf, nnx.state(nodes))


def restore_nodes_if_nonfinite(loss: Any, old_state: Any, *nodes: Any) -> jax.Array:
    """Puts `old_state` (from `snapshot_state(*nodes)`) back into `nodes` if `loss` is not finite.

    Returns the `skipped` flag. Note: RNG counters in `nodes` are restored too, so a skipped step
    replays the same random draws on the next batch.
    """
    state, skipped = select_if_finite(loss, nnx.state(nodes), old_state)
    nnx.update(nodes, state)
    return skipped
