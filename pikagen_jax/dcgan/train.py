"""`train_and_evaluate` for the unconditional DCGAN / WGAN-GP of seed 004 (configs/dcgan.py).

Work directory: `checkpoints/` (Orbax, resumable), TensorBoard events (losses, D(x) / D(G(z)) or critic
scores and the gradient penalty, gradient norms), and `samples/step_*.png`: the top row real validation
sprites, below them `train.num_samples` generator samples of fixed noise (the same codes at every step).
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from pikagen_jax import config_utils
from pikagen_jax.data.pipeline import make_eval_loader, steps_per_epoch
from pikagen_jax.dcgan.sampling import make_sampler
from pikagen_jax.dcgan.state import DcganState, resolve_config
from pikagen_jax.dcgan.steps import make_train_step
from pikagen_jax.models.params import count_params
from pikagen_jax.training.logging import write_image_grid
from pikagen_jax.training.loop import TrainResult, run_training
from pikagen_jax.training.mesh import make_mesh
from pikagen_jax.training.samples import noise

GRID_COLUMNS = 8


def run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The resolved config of a run; its loader batch is n_critic x train.batch_size (one real batch per
    critic update of a step), recorded in the saved config as `train.batch_size`; `train.num_steps=0`
    becomes `num_epochs` passes over the training split."""
    config = resolve_config(config)
    config.train.batch_size = int(config.train.batch_size) * int(config.loss.n_critic)
    if not config.train.num_steps:
        config.train.num_steps = int(round(config.train.num_epochs * steps_per_epoch(config)))
    return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainResult:
    """Trains the DCGAN for `train.num_steps` generator updates, resuming from `workdir`."""
    workdir = Path(workdir)
    config_utils.validate_common(config, jax.device_count())
    batch_size = int(config.train.batch_size)
    config = run_config(config)
    logging.info("loss %s: %d critic update(s) per generator update, batch %d (%d images per step); Adam lr "
                 "G %g / D %g, betas (%g, %g); discriminator norm %s", config.loss.kind, config.loss.n_critic,
                 batch_size, config.train.batch_size, config.optim.lr_g, config.optim.lr_d, config.optim.b1,
                 config.optim.b2, config.model.disc_norm)
    mesh = make_mesh()
    state = DcganState(config, rngs=nnx.Rngs(config.seed))
    logging.info("parameters: G %d, D %d", count_params(state.generator), count_params(state.discriminator))
    real = next(iter(make_eval_loader(config, "val", batch_size=GRID_COLUMNS)))["image"]
    z = noise(config.seed, config.train.num_samples, config.model.latent_dim)
    sample = make_sampler(state.generator)

    def sample_fn(step: int, writer) -> None:
        images = np.asarray(jax.device_get(sample(z)))
        write_image_grid(writer, step, "samples/generator", np.concatenate([np.asarray(real), images]),
                         ncols=GRID_COLUMNS, png_path=workdir / "samples" / f"step_{step:07d}.png")

    return run_training(config, workdir, mesh=mesh, nodes=state.checkpoint_items(),
                        train_step=make_train_step(state, config, mesh), sample_fn=sample_fn)
