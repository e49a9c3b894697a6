"""`train_and_evaluate` for the conditional GAN (configs/gan.py)."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from pikagen_jax.errors import ConfigError
from pikagen_jax.gan.evaluation import make_eval_fn, with_eval_checkpointing
from pikagen_jax.gan.sampling import make_sampler
from pikagen_jax.gan.state import GanState
from pikagen_jax.gan.steps import make_train_step
from pikagen_jax.losses.diffaugment import parse_policy
from pikagen_jax.models.params import count_params
from pikagen_jax.training.logging import write_image_grid
from pikagen_jax.training.loop import TrainResult, run_training
from pikagen_jax.training.mesh import make_mesh
from pikagen_jax.training.samples import fixed_prompts, noise


def validate_config(config: ml_collections.ConfigDict) -> None:
    """The GAN's own checks, before anything is built: discriminator kind, DiffAugment policy."""
    from pikagen_jax.gan.state import DISCRIMINATORS

    kind = config.model.get("discriminator", "dfgan")
    if kind not in DISCRIMINATORS:
        raise ConfigError(f"model.discriminator={kind!r} must be one of {DISCRIMINATORS}")
    try:
        parse_policy(config.train.get("diffaugment", ""))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if kind == "projected" and (config.model.projected.input_size % 32 or config.model.projected.input_size < 32):
        raise ConfigError(f"model.projected.input_size={config.model.projected.input_size} must be a positive "
                          "multiple of 32 (EfficientNet's stride), e.g. 128")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainResult:
    """Trains the GAN for `config.train.num_steps`, resuming from `workdir` if it holds checkpoints.

    With `eval.every_steps > 0`, evaluates `eval.metric` on the val split and keeps the best checkpoint by it.
    """
    workdir = Path(workdir)
    validate_config(config)
    evaluating = int(config.eval.every_steps) > 0
    if evaluating:
        config = with_eval_checkpointing(config)
    mesh = make_mesh()
    state = GanState(config, rngs=nnx.Rngs(config.seed))
    logging.info("parameters: G %d, D %d, text encoder %d (trainable %d)", count_params(state.generator),
                 count_params(state.discriminator), count_params(state.text_encoder),
                 count_params(state.text_encoder, state.text_filter))
    prompts = fixed_prompts(config, config.train.num_sample_prompts)
    z = noise(config.seed, len(prompts["caption"]), config.model.z_dim)
    sample = make_sampler(state.text_encoder, state.ema_generator)
    (workdir / "samples").mkdir(parents=True, exist_ok=True)
    captions_file = workdir / "samples" / "prompts.txt"
    captions_file.write_text("\n".join(str(c) for c in prompts["caption"]) + "\n", encoding="utf-8")

    def sample_fn(step: int, writer) -> None:
        images = np.asarray(jax.device_get(sample(prompts["token_ids"], prompts["attention_mask"], z)))
        grid = np.concatenate([prompts["image"], images])  # top row: real; bottom row: EMA samples
        write_image_grid(writer, step, "samples/ema", grid, ncols=len(images),
                         png_path=workdir / "samples" / f"step_{step:07d}.png")

    eval_fn = make_eval_fn(config, state.text_encoder, state.ema_generator) if evaluating else None
    return run_training(config, workdir, mesh=mesh, nodes=state.checkpoint_items(),
                        train_step=make_train_step(state, config, mesh), sample_fn=sample_fn, eval_fn=eval_fn)
