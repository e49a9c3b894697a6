"""Text -> sprites with a trained seed 000/001 model, for `generate` and evaluation.

The model runs in evaluation mode (no dropout, BatchNorm running statistics), so an image is a
deterministic function of its text and its latent code z, drawn per image from the seed.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pikagen_jax.errors import UsageError
from pikagen_jax.training.samples import noise


def inference_nodes(config: ml_collections.ConfigDict) -> dict[str, nnx.Module]:
    """The modules generation needs, by checkpoint item name."""
    from pikagen_jax.l1.state import model_config
    from pikagen_jax.models.l1_model import L1Model
    from pikagen_jax.training.precision import compute_dtype

    return {"model": L1Model(model_config(config), dtype=compute_dtype(config), rngs=nnx.Rngs(0))}


def load_run_sampler(workdir: str | Path, step: int | None = None, best: bool = False, *, batch_size: int = 16):
    """A `RunSampler` of an L1 run (latest checkpoint, `step`, or with `best` the best by validation L1)."""
    from pikagen_jax.training.checkpointing import Checkpointer

    workdir = Path(workdir)
    config = ml_collections.ConfigDict(Checkpointer(workdir, read_only=True).restore_config(step=step))
    checkpointer = Checkpointer.from_config(workdir, config, read_only=True)
    if best and checkpointer.best_step() is None:
        raise UsageError(f"--best: the run in {workdir} has no best checkpoint yet (no validation has run)")
    resolved = step if step is not None else checkpointer.latest_intact_step(best)
    nodes = inference_nodes(config)
    nnx.update(nodes["model"], checkpointer.restore(nodes, step=resolved, best=best)["model"])
    return sampler_from_nodes(config, nodes, resolved, f"l1 model, step {resolved}" + (" (best)" if best else ""),
                              batch_size=batch_size)


def sampler_from_nodes(config: ml_collections.ConfigDict, nodes: dict[str, nnx.Module], step: int,
                       description: str, *, batch_size: int = 16):
    """A `RunSampler` of the L1 model in evaluation mode, z drawn per image from the seed."""
    from pikagen_jax.training.sampler import RunSampler, generate_in_batches

    model = nodes["model"]
    graphdef, _ = nnx.split(model)

    @jax.jit
    def _predict(variables, ids, mask, z):
        return nnx.merge(graphdef, variables)(ids, mask, z, deterministic=True)

    def generate(token_ids: np.ndarray, attention_mask: np.ndarray, seed: int) -> np.ndarray:
        z = np.asarray(noise(seed, len(token_ids), config.model.z_dim))
        return generate_in_batches(
            lambda index, ids, mask, codes: _predict(nnx.state(model), jnp.asarray(ids), jnp.asarray(mask),
                                                     jnp.asarray(codes)),
            (token_ids, attention_mask, z), batch_size)

    return RunSampler(config=config, step=step, conditional=True, generate=generate, description=description,
                      nodes=nodes)
