"""What the seed 004 DCGAN trains: generator, discriminator (critic for WGAN-GP), their Adam optimizers.

The loss-dependent settings left empty in configs/dcgan.py are filled by `resolve_config` from the loss:
BCE takes DCGAN's Adam (lr 2e-4, betas 0.5 / 0.999), one D step per G step and a batch-norm D; WGAN-GP
takes the WGAN-GP paper's Adam (lr 1e-4, betas 0 / 0.9), 5 critic steps per G step and a critic with
per-sample layer norm (batch norm would couple the samples the gradient penalty treats separately).
"""

from __future__ import annotations

import ml_collections
import optax
from flax import nnx

from pikagen_jax.losses.dcgan import DCGAN_RECOMMENDED, WGAN_GP_RECOMMENDED
from pikagen_jax.models.dcgan import NORMS, Discriminator, Generator
from pikagen_jax.training.precision import compute_dtype

LOSS_KINDS = ("bce", "wgan_gp")
CHECKPOINT_ITEMS = ("generator", "discriminator", "opt_g", "opt_d")
_DEFAULT_NORM = {"bce": "batch", "wgan_gp": "layer"}


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with the loss-dependent fields set (empty = the loss's recommendation) and checked."""
    kind = config.loss.kind
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss.kind={kind!r} must be one of {LOSS_KINDS}")
    recommended = DCGAN_RECOMMENDED if kind == "bce" else WGAN_GP_RECOMMENDED
    config = config.copy_and_resolve_references()
    o, m, loss = config.optim, config.model, config.loss
    for name, key in (("lr_g", "learning_rate"), ("lr_d", "learning_rate"), ("b1", "b1"), ("b2", "b2")):
        if o[name] is None:
            o[name] = float(recommended[key])
    if not loss.n_critic:
        loss.n_critic = int(recommended["n_critic"])
    if not m.disc_norm:
        m.disc_norm = _DEFAULT_NORM[kind]
    if m.disc_norm not in NORMS:
        raise ValueError(f"model.disc_norm={m.disc_norm!r} must be one of {NORMS} (or '' for the loss's default)")
    if kind == "wgan_gp" and m.disc_norm == "batch":
        raise ValueError("WGAN-GP's gradient penalty is per sample, which batch norm in the critic breaks: use "
                         "--config.model.disc_norm=layer (default) or none")
    if loss.n_critic < 1 or loss.gp_weight < 0:
        raise ValueError(f"need loss.n_critic >= 1 and loss.gp_weight >= 0, got {loss.n_critic}, {loss.gp_weight}")
    compute_dtype(config)  # checks train.mixed_precision
    return config


def build_generator(config: ml_collections.ConfigDict, rngs: nnx.Rngs, dtype=None) -> Generator:
    """The configured generator (`model.doubled_generator` adds a 3x3 conv layer after every stage)."""
    m = config.model
    return Generator(m.latent_dim, image_size=config.data.image_size, base_channels=m.gen_channels,
                     extra_layers_per_stage=int(m.doubled_generator), dtype=dtype or compute_dtype(config), rngs=rngs)


class DcganState(nnx.Module):
    """Models and optimizers of one DCGAN run (call `resolve_config` on the config first)."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        m, o = config.model, config.optim
        self.generator = build_generator(config, rngs)
        self.discriminator = Discriminator(image_size=config.data.image_size, base_channels=m.disc_channels,
                                           norm=m.disc_norm, extra_layers_per_stage=int(m.doubled_discriminator),
                                           dtype=compute_dtype(config), rngs=rngs)
        self.opt_g = nnx.Optimizer(self.generator, optax.adam(o.lr_g, b1=o.b1, b2=o.b2), wrt=nnx.Param)
        self.opt_d = nnx.Optimizer(self.discriminator, optax.adam(o.lr_d, b1=o.b1, b2=o.b2), wrt=nnx.Param)

    def checkpoint_items(self) -> dict:
        """The named nodes saved in checkpoints."""
        return {name: getattr(self, name) for name in CHECKPOINT_ITEMS}
