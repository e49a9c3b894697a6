r"""Unconditional DCGAN (seed 004) at 64x64, with WGAN-GP as a loss option.

Train (defaults = seed 004's final model: 64 px, batch 128, the "doubled" generator, BCE loss, DCGAN's Adam):
    python launch.py --config=configs/dcgan.py --workdir=workdirs/dcgan
WGAN-GP instead of BCE (5 critic updates per generator update, gradient penalty lambda = 10, layer-norm
critic, Adam lr 1e-4 betas (0, 0.9): the loss-dependent fields left empty below are filled from the loss):
    python launch.py --config=configs/dcgan.py --config.loss.kind=wgan_gp --workdir=workdirs/wgan
Presets, picked after a colon:
    --config=configs/dcgan.py:smoke   seconds on a 2-core CPU (narrow networks, 4 steps); used by tests
    --config=configs/dcgan.py:cpu     64 px, batch 64, half widths, 1200 steps: ~1.4 s/step (BCE) on 2 busy CPU cores
Seed 004 trained on 64-96 px game sprites; the closest data here is the PokeAPI pixel sprites
(`--config.data.dataset=pokeapi` after `python -m data_prep.build --source=pokeapi ...`); the Kaggle
sprites (default) are 215 px renders resized to 64 px. Text is loaded but unused (unconditional model).
Generate: python -m pikagen_jax.generate --workdir=workdirs/dcgan --num=32 (no prompt needed).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from pikagen_jax.data.pipeline import data_config
from pikagen_jax.training.checkpointing import default_checkpoint_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = data_config()
    config.system = "dcgan"
    config.seed = 0
    config.data.dataset = "kaggle"
    config.data.image_size = 64
    config.data.augment.hflip = True
    config.text.max_length = 16  # the model ignores text; the loader still tokenizes it

    config.model = ml_collections.ConfigDict({
        "latent_dim": 100,
        "gen_channels": 64,  # ngf: width of the last generator stage (512, 256, 128, 64 at 64 px)
        "disc_channels": 64,  # ndf
        "doubled_generator": True,  # seed 004's best change: a 3x3 conv + BN + ReLU after every stage
        "doubled_discriminator": False,  # the seed's mirrored D ("no noticeable change")
        "disc_norm": "",  # "" = by loss: "batch" for bce, "layer" for wgan_gp; or "none"
    })
    config.loss = ml_collections.ConfigDict({
        "kind": "bce",  # "bce" (DCGAN) | "wgan_gp"
        "gp_weight": 10.0,  # WGAN-GP lambda
        "n_critic": 0,  # critic updates per generator update; 0 = by loss (1 for bce, 5 for wgan_gp)
        "drift_weight": 1e-3,  # WGAN-GP: eps_drift * E[C(x)^2] keeps the critic's offset near 0 (Karras et al.)
    })
    config.optim = ml_collections.ConfigDict({  # None = by loss (see pikagen_jax.losses.dcgan)
        "lr_g": placeholder(float), "lr_d": placeholder(float), "b1": placeholder(float), "b2": placeholder(float),
    })
    config.train = ml_collections.ConfigDict({
        "batch_size": 128,  # images per D and per G update (a WGAN-GP step loads n_critic such batches)
        "num_epochs": 125,
        "num_steps": 0,  # generator updates; 0 = num_epochs passes over the training split
        "mixed_precision": "float32",
        "nonfinite_policy": "stop",
        "log_every": 25,
        "max_minutes": 0.0,  # > 0: stop (sample, checkpoint) after this much wall-clock time, compile included
        "sample_every": 250,
        "num_samples": 32,  # fixed-noise samples in each grid
    })
    config.checkpoint = default_checkpoint_config()
    config.checkpoint.every_steps = 500

    preset = (arg or "").strip()
    if preset == "smoke":
        config.data.worker_count = 0
        config.model.update({"gen_channels": 8, "disc_channels": 8, "latent_dim": 16})
        config.train.update({"batch_size": 4, "num_steps": 4, "log_every": 2, "sample_every": 4, "num_samples": 8})
        config.checkpoint.update({"every_steps": 2, "max_to_keep": 2})
    elif preset == "cpu":
        config.model.update({"gen_channels": 32, "disc_channels": 32})
        config.train.update({"batch_size": 64, "num_steps": 1200, "log_every": 25, "sample_every": 200})
        config.checkpoint.every_steps = 250
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/dcgan.py; use '', 'smoke' or 'cpu'")
    config.lock()
    return config
