"""Text -> sprites with the latent-diffusion networks: training sample grids, `generate`, evaluation.

    sample = LatentDiffusionSampler(text_encoder, vae, ema_unet, latent_stats, config, method="ddim",
                                    num_steps=50, guidance_scale=3.0)
    images = sample(token_ids, attention_mask, seed=0)           # [B, S, S, 3] in [-1, 1]

Text -> token embeddings -> DDIM (or DDPM) from Gaussian latents, with classifier-free guidance
(`guidance_scale` 1 = conditional only, 0 = unconditional, > 1 guided) -> latents / scale -> VAE decoder
(text-conditioned when the VAE was trained so). The whole chain is one jitted program per batch shape;
it reads the networks' current weights at every call. With DDIM (eta = 0) an image depends only on its
starting noise, drawn per image from `seed`; DDPM's per-step noise also depends on the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pikagen_jax.diffusion.schedule import SAMPLERS, ddim_sample, ddpm_sample, guided_eps_fn
from pikagen_jax.diffusion.stages import stage_dir, stage_has_checkpoints
from pikagen_jax.diffusion.state import SAMPLING_ITEMS, STAGES, LatentStats, build_unet, build_vae
from pikagen_jax.diffusion.steps import noise_schedule
from pikagen_jax.errors import NoCheckpointError, UsageError


class LatentDiffusionSampler:
    """Jitted text -> image sampling with a (text encoder, VAE, U-Net, latent scale) set of networks."""

    def __init__(self, text_encoder: nnx.Module, vae: nnx.Module, unet: nnx.Module, latent_stats: LatentStats,
                 config: ml_collections.ConfigDict, *, method: str = "ddim", num_steps: int = 50,
                 guidance_scale: float = 1.0, eta: float = 0.0, clip_x0: float | None = None):
        if method not in SAMPLERS:
            raise UsageError(f"unknown sampler {method!r}; use one of {SAMPLERS}")
        schedule = noise_schedule(config)
        if method == "ddim" and not 1 <= num_steps <= schedule.num_steps:
            raise UsageError(f"sampling_steps must be in 1..{schedule.num_steps}, got {num_steps}")
        self.networks = (text_encoder, vae, unet, latent_stats)
        self.method, self.num_steps, self.guidance_scale, self.eta = method, int(num_steps), float(guidance_scale), eta
        self.text_conditioned_decoder = bool(config.vae.text_conditioned)
        graphdef, _ = nnx.split(self.networks)
        # scale 1 is the conditional prediction alone: no unconditional half to compute
        guidance = None if self.guidance_scale == 1.0 else self.guidance_scale

        @jax.jit
        def _sample(variables, ids, mask, x_init, key):
            text, vae, unet, stats = nnx.merge(graphdef, variables)
            tokens, _ = text(ids, mask)
            eps_fn = guided_eps_fn(unet, tokens, mask, guidance)
            if method == "ddpm":
                z = ddpm_sample(eps_fn, schedule, key, x_init.shape, clip_x0=clip_x0, x_init=x_init)
            else:
                z = ddim_sample(eps_fn, schedule, key, x_init.shape, num_steps=num_steps, eta=eta, clip_x0=clip_x0,
                                x_init=x_init)
            z = z / stats.scale[...]
            context = (tokens, mask) if self.text_conditioned_decoder else (None, None)
            return vae.decode(z, *context)

        self._sample = _sample
        self.latent_shape = vae.latent_shape

    def describe(self) -> str:
        """e.g. 'ddim, 50 steps, guidance 3'."""
        steps = f"{self.num_steps} steps" if self.method == "ddim" else "all steps"
        return f"{self.method}, {steps}, guidance {self.guidance_scale:g}"

    def __call__(self, token_ids: Any, attention_mask: Any, seed: int = 0, *, batch_index: int = 0,
                 x_init: Any = None) -> jax.Array:
        """Images [B, S, S, 3] in [-1, 1] for one batch of tokenized text.

        The starting latents are `x_init` [B, h, w, C] if given, else drawn from `seed`; per-step noise
        (DDPM, eta > 0) comes from `fold_in(key(seed), batch_index)`.
        """
        ids, mask = jnp.asarray(token_ids), jnp.asarray(attention_mask)
        if x_init is None:
            x_init = jax.random.normal(jax.random.key(seed), (ids.shape[0], *self.latent_shape), jnp.float32)
        key = jax.random.fold_in(jax.random.key(seed), batch_index)
        return self._sample(nnx.state(self.networks), ids, mask, jnp.asarray(x_init, jnp.float32), key)


def sampling_stage(workdir: Path, stage: str | None = None) -> str:
    """The stage a diffusion run generates with: `stage` if given, else the last one with checkpoints
    among 'text', 'unet'. Raises FileNotFoundError when only the VAE (or nothing) is trained."""

    if stage is not None:
        if stage not in STAGES[1:]:
            raise UsageError(f"a diffusion run generates with stage 'unet' or 'text', not {stage!r}")
        if not stage_has_checkpoints(workdir, stage):
            raise NoCheckpointError(f"no checkpoints in {stage_dir(workdir, stage)}")
        return stage
    for candidate in ("text", "unet"):
        if stage_has_checkpoints(workdir, candidate):
            return candidate
    trained = "only the VAE stage is trained" if stage_has_checkpoints(workdir, "vae") else "no stage is trained"
    raise NoCheckpointError(f"{workdir}: {trained}; train the U-Net first with `python launch.py "
                            f"--config=configs/diffusion.py --config.stage=unet --workdir={workdir}`")


def load_sampling_networks(workdir: Path, stage: str, step: int | None = None
                           ) -> tuple[ml_collections.ConfigDict, tuple[nnx.Module, ...], int]:
    """(config, (text encoder, VAE, EMA U-Net, latent stats), step) restored from a stage's checkpoint."""
    from pikagen_jax.training.checkpointing import Checkpointer

    checkpointer = Checkpointer(stage_dir(workdir, stage), read_only=True)
    config = ml_collections.ConfigDict(checkpointer.restore_config(step=step))
    resolved = step if step is not None else checkpointer.latest_intact_step()
    networks = inference_nodes(config)
    restored = checkpointer.restore(networks, step=resolved)
    for name, node in networks.items():
        nnx.update(node, restored[name])
    return config, tuple(networks[name] for name in ("text_encoder", "vae", "ema_unet", "latent_stats")), resolved


def inference_nodes(config: ml_collections.ConfigDict) -> dict[str, nnx.Module]:
    """The modules generation needs, by checkpoint item name (text encoder, VAE, latent scale, EMA U-Net)."""
    from pikagen_jax.training.precision import compute_dtype
    from pikagen_jax.training.text import build_text_encoder

    text = build_text_encoder(config, nnx.Rngs(0), compute_dtype(config))
    vae = nnx.eval_shape(lambda: build_vae(config, nnx.Rngs(0), compute_dtype(config)))
    unet = nnx.eval_shape(lambda: build_unet(config, nnx.Rngs(0), jnp.float32))
    return dict(zip(SAMPLING_ITEMS, (text, vae, LatentStats(), unet)))


def load_run_sampler(workdir: str | Path, step: int | None = None, best: bool = False, *, sampler: str | None = None,
                     sampling_steps: int | None = None, guidance_scale: float | None = None,
                     eta: float | None = None, stage: str | None = None, batch_size: int = 16):
    """A `RunSampler` for a diffusion work directory (see `pikagen_jax.run_sampler`).

    Options (None = the run's `config.sample` settings): `sampler` 'ddim' | 'ddpm', `sampling_steps`
    (DDIM), `guidance_scale`, `eta` (DDIM noise), `stage` ('unet' | 'text', default the last trained),
    `batch_size` (images per jitted call). `step` is a step of that stage. Diffusion runs keep no best
    checkpoint, so `best` raises.
    """
    workdir = Path(workdir)
    if best:
        raise UsageError(f"--best: the diffusion run in {workdir} keeps no best checkpoint (it has no in-training "
                         "metric); drop --best or pick --step=N")
    stage = sampling_stage(workdir, stage)
    config, networks, resolved = load_sampling_networks(workdir, stage, step)
    nodes = dict(zip(("text_encoder", "vae", "ema_unet", "latent_stats"), networks))
    return sampler_from_nodes(config, nodes, resolved, f"diffusion stage {stage} step {resolved}", sampler=sampler,
                              sampling_steps=sampling_steps, guidance_scale=guidance_scale, eta=eta,
                              batch_size=batch_size)


def sampler_from_nodes(config: ml_collections.ConfigDict, nodes: dict[str, nnx.Module], step: int,
                       description: str, *, sampler: str | None = None, sampling_steps: int | None = None,
                       guidance_scale: float | None = None, eta: float | None = None, batch_size: int = 16):
    """A `RunSampler` with the given sampling options (None = the run's `config.sample`)."""
    from pikagen_jax.training.sampler import RunSampler, generate_in_batches

    networks = tuple(nodes[name] for name in ("text_encoder", "vae", "ema_unet", "latent_stats"))
    s = config.sample
    sample = LatentDiffusionSampler(
        *networks, config, method=sampler or s.method, num_steps=sampling_steps or s.num_steps,
        guidance_scale=s.guidance_scale if guidance_scale is None else guidance_scale,
        eta=s.eta if eta is None else eta, clip_x0=s.clip_x0 or None)

    def generate(token_ids: np.ndarray, attention_mask: np.ndarray, seed: int) -> np.ndarray:
        count = len(token_ids)
        x_init = np.asarray(jax.random.normal(jax.random.key(seed), (count, *sample.latent_shape), jnp.float32))
        return generate_in_batches(
            lambda index, ids, mask, x: sample(ids, mask, seed, batch_index=index, x_init=x),
            (token_ids, attention_mask, x_init), batch_size)

    return RunSampler(config=config, step=step, conditional=True, generate=generate,
                      description=f"{description}: {sample.describe()}", nodes=nodes)
