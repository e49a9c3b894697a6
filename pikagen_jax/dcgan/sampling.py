"""Noise -> sprites with a trained DCGAN generator (unconditional): sample grids, `generate`, evaluation.

The generator runs in inference mode (batch norm with its running averages), so an image depends only on
its own latent code, drawn per image from the seed (`pikagen_jax.gan.sampling.noise`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pikagen_jax.dcgan.state import build_generator
from pikagen_jax.errors import UsageError
from pikagen_jax.training.samples import noise


def make_sampler(generator: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """`sample(z [B, latent_dim]) -> images [B, S, S, 3]` in [-1, 1], jitted once; reads the generator's
    current weights at every call."""
    graphdef, _ = nnx.split(generator)

    @jax.jit
    def _sample(variables, z):
        return nnx.merge(graphdef, variables)(z, train=False)

    return lambda z: _sample(nnx.state(generator), jnp.asarray(z, jnp.float32))


def load_run_sampler(workdir: str | Path, step: int | None = None, best: bool = False, *, batch_size: int = 64):
    """A `RunSampler` (unconditional: the token arrays only give the number of images) for a DCGAN run."""
    from pikagen_jax.training.checkpointing import Checkpointer

    workdir = Path(workdir)
    if best:
        raise UsageError(f"--best: the DCGAN run in {workdir} keeps no best checkpoint; drop --best or pick --step=N")
    checkpointer = Checkpointer(workdir, read_only=True)
    config = ml_collections.ConfigDict(checkpointer.restore_config(step=step))
    resolved = step if step is not None else checkpointer.latest_intact_step()
    nodes = inference_nodes(config)
    nnx.update(nodes["generator"], checkpointer.restore(nodes, step=resolved)["generator"])
    return sampler_from_nodes(config, nodes, resolved, f"dcgan ({config.loss.kind}) step {resolved}",
                              batch_size=batch_size)


def inference_nodes(config: ml_collections.ConfigDict) -> dict[str, nnx.Module]:
    """The modules generation needs, by checkpoint item name."""
    return {"generator": nnx.eval_shape(lambda: build_generator(config, nnx.Rngs(0)))}


def sampler_from_nodes(config: ml_collections.ConfigDict, nodes: dict[str, nnx.Module], step: int,
                       description: str, *, batch_size: int = 64):
    """A `RunSampler` (unconditional: the token arrays only give the number of images)."""
    from pikagen_jax.training.sampler import RunSampler, generate_in_batches

    sample = make_sampler(nodes["generator"])

    def generate(token_ids: np.ndarray, attention_mask: np.ndarray, seed: int) -> np.ndarray:
        del attention_mask  # unconditional
        z = np.asarray(noise(seed, len(token_ids), config.model.latent_dim))
        return generate_in_batches(lambda index, codes: sample(codes), (z,), batch_size)

    return RunSampler(config=config, step=step, conditional=False, generate=generate, description=description,
                      nodes=nodes)
