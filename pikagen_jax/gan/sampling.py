"""Text → images with a (text encoder, generator) pair: training sample grids, and loading a GAN run for
`generate` / evaluation (`load_run_sampler`, see `pikagen_jax.run_sampler`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pikagen_jax.errors import NoCheckpointError, UsageError
from pikagen_jax.training.samples import noise


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


def load_gan_for_sampling(workdir: str | Path, step: int | None = None, best: bool = False):
    """(config, text encoder, EMA generator, step) restored from a GAN work directory (latest checkpoint,
    `step`, or the best one with `best`)."""
    from pikagen_jax.training.checkpointing import Checkpointer

    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise NoCheckpointError(f"no checkpoints in {workdir}: train first with "
                                f"`python launch.py --config=configs/gan.py --workdir={workdir}`")
    checkpointer = Checkpointer(workdir, read_only=True)
    config = ml_collections.ConfigDict(checkpointer.restore_config(step=step))
    if best:
        if not config.checkpoint.best_metric:
            raise UsageError(f"--best: the run in {workdir} keeps no best checkpoint (checkpoint.best_metric "
                             "is empty); drop --best or train with --config.eval.every_steps=N")
        checkpointer = Checkpointer.from_config(workdir, config, read_only=True)
    if config.system != "gan":
        raise UsageError(f"{workdir} holds a {config.system!r} run, not a 'gan' one: use "
                         "pikagen_jax.run_sampler.load_run_sampler for any system")
    nodes = inference_nodes(config)
    resolved = step if step is not None else checkpointer.latest_intact_step(best)
    restored = checkpointer.restore(nodes, step=resolved, best=best)
    for name, node in nodes.items():
        nnx.update(node, restored[name])
    return config, nodes["text_encoder"], nodes["ema_generator"], resolved


def inference_nodes(config: ml_collections.ConfigDict) -> dict[str, nnx.Module]:
    """The modules generation needs, by checkpoint item name (weights to be restored into them)."""
    from pikagen_jax.gan.state import build_generator
    from pikagen_jax.training.precision import compute_dtype
    from pikagen_jax.training.text import build_text_encoder

    return {"text_encoder": build_text_encoder(config, nnx.Rngs(0), compute_dtype(config)),
            "ema_generator": build_generator(config, nnx.Rngs(0), jnp.float32)}


def sampler_from_nodes(config: ml_collections.ConfigDict, nodes: dict[str, nnx.Module], step: int,
                       description: str, *, batch_size: int = 50):
    """A `RunSampler`: the EMA generator on the text encoder's embeddings, z drawn per image from the seed
    (`noise(seed, N, z_dim)`), in batches of `batch_size`."""
    from pikagen_jax.training.sampler import RunSampler, generate_in_batches

    sample = make_sampler(nodes["text_encoder"], nodes["ema_generator"])

    def generate(token_ids: np.ndarray, attention_mask: np.ndarray, seed: int) -> np.ndarray:
        z = np.asarray(noise(seed, len(token_ids), config.model.z_dim))
        return generate_in_batches(lambda index, ids, mask, codes: sample(ids, mask, jnp.asarray(codes)),
                                   (token_ids, attention_mask, z), batch_size)

    return RunSampler(config=config, step=step, conditional=True, generate=generate, description=description,
                      nodes=nodes)


def load_run_sampler(workdir: str | Path, step: int | None = None, best: bool = False, *, batch_size: int = 50):
    """A `RunSampler` of a GAN work directory (latest checkpoint, `step`, or the best one with `best`)."""
    config, text, generator, resolved = load_gan_for_sampling(workdir, step, best)
    return sampler_from_nodes(config, {"text_encoder": text, "ema_generator": generator}, resolved,
                              f"gan EMA generator, step {resolved}" + (" (best)" if best else ""),
                              batch_size=batch_size)
