"""What each stage of the latent-diffusion system (seed 003) trains, in one NNX container per stage.

    stage 'vae':  VAE (L1 + perceptual + annealed free-bits KL); text encoder frozen (decoder conditioning)
    stage 'unet': text-conditioned U-Net on scaled VAE latents (Huber eps-loss, text dropout for guidance)
                  + its EMA copy; VAE and text encoder frozen
    stage 'text': the text encoder (seed 002's partial fine-tuning filter) through the frozen EMA U-Net's
                  denoising loss + the frozen VAE decoder's reconstruction loss

Every stage's checkpoint holds all the networks generation needs (`STAGE_ITEMS`), so any finished stage
after the VAE can be sampled from; a stage starts from the previous stage's latest checkpoint
(`INHERITED_ITEMS`). Optimizers: gradient clipping by global norm, then AdamW on a OneCycle-like
schedule (linear warm-up from lr / 25 over `warmup_fraction` of the stage, cosine decay to ~0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from pikagen_jax.models.unet import UNet
from pikagen_jax.models.vae import VAE
from pikagen_jax.training.precision import compute_dtype
from pikagen_jax.training.text import build_text_encoder

STAGES = ("vae", "unet", "text")
STAGE_ITEMS = {
    "vae": ("text_encoder", "vae", "opt_vae"),
    "unet": ("text_encoder", "vae", "latent_stats", "unet", "ema_unet", "opt_unet"),
    "text": ("text_encoder", "vae", "latent_stats", "unet", "ema_unet", "opt_text"),
}
# The networks a stage takes over from the previous stage's latest checkpoint.
INHERITED_ITEMS = {"unet": ("text_encoder", "vae"),
                   "text": ("text_encoder", "vae", "latent_stats", "unet", "ema_unet")}
# The networks generation restores (from the unet or text stage).
SAMPLING_ITEMS = ("text_encoder", "vae", "latent_stats", "ema_unet")


def previous_stage(stage: str) -> str | None:
    """The stage whose checkpoint `stage` starts from ('vae' -> None, 'unet' -> 'vae', 'text' -> 'unet')."""
    index = STAGES.index(stage)
    return STAGES[index - 1] if index else None


class LatentScale(nnx.Variable):
    """A fixed (not trained) statistic of the VAE latents, checkpointed with the U-Net."""


class LatentStats(nnx.Module):
    """The factor that brings the VAE's latents to unit variance before diffusion (Stable Diffusion's
    0.18215, estimated here from training batches when the U-Net stage starts)."""

    def __init__(self):
        self.scale = LatentScale(jnp.ones((), jnp.float32))


def build_vae(config: ml_collections.ConfigDict, rngs: nnx.Rngs, dtype=jnp.float32) -> VAE:
    """The configured VAE; its decoder cross-attends to the text tokens when `vae.text_conditioned`."""
    v = config.vae
    mults = tuple(v.channel_mults) if v.channel_mults else None
    return VAE(config.data.image_size, latent_channels=v.latent_channels, base_channels=v.base_channels,
               channel_mults=mults, num_res_blocks=v.num_res_blocks, norm_groups=v.norm_groups,
               num_heads=v.num_heads, context_dim=config.text.out_dim if v.text_conditioned else None,
               dtype=dtype, rngs=rngs)


def build_unet(config: ml_collections.ConfigDict, rngs: nnx.Rngs, dtype=jnp.float32) -> UNet:
    """The configured U-Net over `vae.latent_channels` latents, cross-attending to `text.out_dim` tokens."""
    u = config.unet
    return UNet(config.vae.latent_channels, base_channels=u.base_channels, channel_mults=tuple(u.channel_mults),
                num_res_blocks=u.num_res_blocks, attention_levels=tuple(u.attention_levels),
                context_dim=config.text.out_dim, num_heads=u.num_heads, norm_groups=u.norm_groups,
                dropout=u.dropout, dtype=dtype, rngs=rngs)


def learning_rate_schedule(block: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """OneCycle-like: linear warm-up lr / 25 -> lr over `warmup_fraction` of the steps, cosine to lr / 25e4."""
    warmup = int(round(block.warmup_fraction * num_steps))
    return optax.warmup_cosine_decay_schedule(init_value=block.lr / 25.0, peak_value=block.lr,
                                              warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1),
                                              end_value=block.lr / 25e4)


def make_optimizer(block: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) then AdamW(weight_decay) on `learning_rate_schedule`."""
    return optax.chain(optax.clip_by_global_norm(block.grad_clip),
                       optax.adamw(learning_rate_schedule(block, num_steps), weight_decay=block.weight_decay))


class DiffusionState(nnx.Module):
    """The networks and the one optimizer of a training stage.

    `perceptual` (stage 'vae' only) is the frozen feature network of the perceptual loss; it travels
    with the state into the jitted step but is not checkpointed (it is rebuilt from its weights file).
    """

    def __init__(self, config: ml_collections.ConfigDict, stage: str, *, rngs: nnx.Rngs,
                 perceptual: nnx.Module | None = None):
        if stage not in STAGES:
            raise ValueError(f"unknown diffusion stage {stage!r}; use one of {STAGES}")
        dtype = compute_dtype(config)
        num_steps = int(config.train.num_steps)
        block = config.stages[stage]
        self.stage = stage
        self.text_encoder = build_text_encoder(config, rngs, dtype)
        self.vae = build_vae(config, rngs, dtype)
        self.perceptual = perceptual
        if stage == "vae":
            self.opt_vae = nnx.Optimizer(self.vae, make_optimizer(block, num_steps), wrt=nnx.Param)
            return
        self.latent_stats = LatentStats()
        self.unet = build_unet(config, rngs, dtype)
        self.ema_unet = build_unet(config, nnx.Rngs(0), jnp.float32)
        nnx.update(self.ema_unet, jax.tree.map(jnp.copy, nnx.state(self.unet, nnx.Param)))
        if stage == "unet":
            self.opt_unet = nnx.Optimizer(self.unet, make_optimizer(block, num_steps), wrt=nnx.Param)
        else:
            self.text_filter = self.text_encoder.trainable_filter()
            self.opt_text = nnx.Optimizer(self.text_encoder, make_optimizer(block, num_steps), wrt=self.text_filter)

    def checkpoint_items(self) -> dict:
        """The named nodes saved in this stage's checkpoints."""
        return {name: getattr(self, name) for name in STAGE_ITEMS[self.stage]}
