"""Gaussian diffusion of seed 003: noise schedules, forward noising, the epsilon-prediction Huber loss,
DDPM and DDIM samplers, and classifier-free guidance.

Timesteps are integers 0..T-1 (T = 1000 by default); alphas_cumprod[t] is the signal level after step t.
Schedule: cosine (Nichol & Dhariwal 2021), alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t/T + s) /
(1 + s)) * pi / 2), s = 0.008, betas = 1 - alpha_bar_t / alpha_bar_{t-1} clipped to <= 0.999. (The
seed quotes "cosine (0.0001 to 0.02)"; those are the endpoints of Ho et al.'s linear schedule, available as
kind='linear'.)

Samplers take an `eps_fn(x_t, t [B] int32) -> predicted noise` and loop over timesteps with
`jax.lax.fori_loop`, so they jit as one program:

    schedule = make_schedule("cosine", 1000)
    eps_fn = guided_eps_fn(unet, tokens, mask, guidance_scale=4.0)
    z0 = ddim_sample(eps_fn, schedule, key, (B, 27, 27, 8), num_steps=50, eta=0.0)

`ddim_sample(..., eta=1.0)` over all T steps is DDPM (it equals `ddpm_sample` draw for draw); with fewer
steps it is DDPM on a respaced schedule ("configurable inference steps" of the seed). `clip_x0` clamps
the predicted clean latent, the seed's latent range clamp (-3, 3).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]
SCHEDULES = ("cosine", "linear")
SAMPLERS = ("ddim", "ddpm")


@struct.dataclass
class NoiseSchedule:
    """Per-timestep betas and cumulative signal levels alpha_bar (float32 arrays [T]); a jit-able pytree."""

    betas: Array
    alphas_cumprod: Array

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])


def cosine_beta_schedule(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Betas [num_steps] (float64) of the cosine schedule of Nichol & Dhariwal (2021), clipped to max_beta."""
    steps = np.arange(num_steps + 1, dtype=np.float64)
    f = np.cos((steps / num_steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)


def linear_beta_schedule(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Betas of Ho et al.'s linear schedule, rescaled so that 1000 steps give 1e-4 ... 0.02."""
    scale = 1000.0 / num_steps
    return np.linspace(beta_start * scale, beta_end * scale, num_steps, dtype=np.float64)


def make_schedule(kind: str = "cosine", num_steps: int = 1000) -> NoiseSchedule:
    """The NoiseSchedule of `kind` ('cosine' or 'linear') over num_steps timesteps."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {kind!r}; use one of {SCHEDULES}")
    if num_steps < 2:
        raise ValueError(f"a diffusion schedule needs >= 2 steps, got {num_steps}")
    betas = cosine_beta_schedule(num_steps) if kind == "cosine" else linear_beta_schedule(num_steps)
    alphas_cumprod = np.cumprod(1.0 - betas)
    return NoiseSchedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alphas_cumprod, jnp.float32))


def _per_sample(values: Array, t: Array, ndim: int) -> Array:
    """values[t] reshaped to [B, 1, ..., 1] for broadcasting against an array of rank ndim."""
    return values[t].reshape(t.shape + (1,) * (ndim - t.ndim))


def q_sample(schedule: NoiseSchedule, x0: Array, t: Array, noise: Array) -> Array:
    """Forward process: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, for t [B] int."""
    alpha_bar = _per_sample(schedule.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def predict_x0(schedule: NoiseSchedule, x_t: Array, t: Array, eps: Array) -> Array:
    """Clean sample implied by a noise prediction: (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    alpha_bar = _per_sample(schedule.alphas_cumprod, t, x_t.ndim)
    return (x_t - jnp.sqrt(1.0 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)


def denoising_loss(model: Callable[..., Array], schedule: NoiseSchedule, x0: Array, context: Array | None,
                   context_mask: Array | None, key: Array, *, cond_drop_prob: float = 0.1,
                   huber_delta: float = 1.0, deterministic: bool = False) -> tuple[Array, dict[str, Array]]:
    """Epsilon-prediction loss (SmoothL1 / Huber, as seed 003) at uniformly drawn timesteps.

    Text is replaced by the model's null embedding with probability cond_drop_prob per sample
    (classifier-free guidance training). `model(x_t, t, context, mask, drop_context=, deterministic=)` is
    e.g. a `UNet`. Huber with delta = 1 equals PyTorch's SmoothL1Loss(beta=1).

    Returns:
      (loss, {'huber', 'mse', 'dropped_fraction'}).
    """
    if not 0.0 <= cond_drop_prob <= 1.0:
        raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob}")
    key_t, key_noise, key_drop = jax.random.split(key, 3)
    batch = x0.shape[0]
    t = jax.random.randint(key_t, (batch,), 0, schedule.num_steps)
    noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
    x_t = q_sample(schedule, x0.astype(jnp.float32), t, noise)
    drop = jax.random.bernoulli(key_drop, cond_drop_prob, (batch,)) if context is not None else None
    eps = model(x_t, t, context, context_mask, drop_context=drop, deterministic=deterministic)
    eps = eps.astype(jnp.float32)
    loss = jnp.mean(optax.huber_loss(eps, noise, delta=huber_delta))
    dropped = jnp.mean(drop.astype(jnp.float32)) if drop is not None else jnp.ones((), jnp.float32)
    return loss, {"huber": loss, "mse": jnp.mean(jnp.square(eps - noise)), "dropped_fraction": dropped}


def classifier_free_guidance(eps_cond: Array, eps_uncond: Array, scale: float | Array) -> Array:
    """eps_uncond + scale * (eps_cond - eps_uncond): scale 1 is conditional, 0 unconditional, > 1 guided."""
    eps_cond, eps_uncond = eps_cond.astype(jnp.float32), eps_uncond.astype(jnp.float32)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided_eps_fn(model: Callable[..., Array], context: Array | None, context_mask: Array | None,
                  guidance_scale: float | None = None) -> EpsFn:
    """An eps_fn for the samplers from a text-conditioned model.

    guidance_scale None: the conditional prediction alone. Otherwise the conditional and the null-text
    predictions are computed in one batch of 2B and combined by classifier_free_guidance.
    """
    if guidance_scale is None or context is None:
        return lambda x, t: model(x, t, context, context_mask).astype(jnp.float32)
    if context_mask is None:
        context_mask = jnp.ones(context.shape[:2], jnp.int32)

    def eps_fn(x: Array, t: Array) -> Array:
        batch = x.shape[0]
        twice = lambda a: jnp.concatenate([a, a], axis=0)
        drop = jnp.concatenate([jnp.zeros(batch, bool), jnp.ones(batch, bool)])
        eps = model(twice(x), twice(t), twice(context), twice(context_mask), drop_context=drop)
        return classifier_free_guidance(eps[:batch], eps[batch:], guidance_scale)

    return eps_fn


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """num_steps timesteps evenly spread over 0 .. num_train_steps - 1 (both ends included), ascending."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must be in 1..{num_train_steps} (the schedule's length), got {num_steps}")
    return np.unique(np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int32))


def _x0_and_eps(schedule: NoiseSchedule, x: Array, t: Array, eps: Array,
                clip_x0: float | None) -> tuple[Array, Array]:
    x0 = predict_x0(schedule, x, t, eps)
    if clip_x0 is not None:
        x0 = jnp.clip(x0, -clip_x0, clip_x0)
        alpha_bar = schedule.alphas_cumprod[t]
        eps = (x - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1.0 - alpha_bar)
    return x0, eps


def ddim_sample(eps_fn: EpsFn, schedule: NoiseSchedule, key: Array, shape: tuple[int, ...], *,
                num_steps: int = 50, eta: float = 0.0, clip_x0: float | None = None,
                x_init: Array | None = None) -> Array:
    """DDIM (Song et al. 2021) from pure noise (or x_init) over num_steps timesteps; eta = 0 is
    deterministic, eta = 1 is ancestral (DDPM-like) sampling.

    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev); ab_prev = 1 after the last step.
    """
    taus = jnp.asarray(ddim_timesteps(schedule.num_steps, num_steps))
    count = int(taus.shape[0])
    key_init, key_steps = jax.random.split(key)
    x = jax.random.normal(key_init, shape, jnp.float32) if x_init is None else x_init.astype(jnp.float32)

    def step(i: int, x: Array) -> Array:
        index = count - 1 - i
        t = taus[index]
        alpha_bar = schedule.alphas_cumprod[t]
        alpha_bar_prev = jnp.where(index > 0, schedule.alphas_cumprod[taus[jnp.maximum(index - 1, 0)]], 1.0)
        eps = eps_fn(x, jnp.full((shape[0],), t, jnp.int32)).astype(jnp.float32)
        x0, eps = _x0_and_eps(schedule, x, t, eps, clip_x0)
        sigma = eta * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
        direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - sigma ** 2, 0.0)) * eps
        noise = jax.random.normal(jax.random.fold_in(key_steps, index), shape, jnp.float32)
        return jnp.sqrt(alpha_bar_prev) * x0 + direction + sigma * noise

    return jax.lax.fori_loop(0, count, step, x)


def ddpm_sample(eps_fn: EpsFn, schedule: NoiseSchedule, key: Array, shape: tuple[int, ...], *,
                clip_x0: float | None = None, x_init: Array | None = None) -> Array:
    """Ancestral DDPM sampling (Ho et al. 2020) through all T steps, posterior variance beta-tilde:

    x_{t-1} = coef_x0 x0 + coef_xt x_t + sqrt(beta_tilde_t) z (no noise at t = 0), with
    coef_x0 = beta_t sqrt(ab_{t-1}) / (1 - ab_t), coef_xt = (1 - ab_{t-1}) sqrt(alpha_t) / (1 - ab_t),
    beta_tilde_t = beta_t (1 - ab_{t-1}) / (1 - ab_t).
    """
    total = schedule.num_steps
    key_init, key_steps = jax.random.split(key)
    x = jax.random.normal(key_init, shape, jnp.float32) if x_init is None else x_init.astype(jnp.float32)

    def step(i: int, x: Array) -> Array:
        t = total - 1 - i
        beta = schedule.betas[t]
        alpha_bar = schedule.alphas_cumprod[t]
        alpha_bar_prev = jnp.where(t > 0, schedule.alphas_cumprod[jnp.maximum(t - 1, 0)], 1.0)
        eps = eps_fn(x, jnp.full((shape[0],), t, jnp.int32)).astype(jnp.float32)
        x0, _ = _x0_and_eps(schedule, x, t, eps, clip_x0)
        mean = (beta * jnp.sqrt(alpha_bar_prev) * x0 + (1.0 - alpha_bar_prev) * jnp.sqrt(1.0 - beta) * x) / (
            1.0 - alpha_bar)
        variance = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        noise = jax.random.normal(jax.random.fold_in(key_steps, t), shape, jnp.float32)
        return mean + jnp.sqrt(variance) * noise

    return jax.lax.fori_loop(0, total, step, x)


def sample(model: Callable[..., Array], schedule: NoiseSchedule, key: Array, shape: tuple[int, ...],
           context: Array | None = None, context_mask: Array | None = None, *, method: str = "ddim",
           num_steps: int = 50, eta: float = 0.0, guidance_scale: float | None = None,
           clip_x0: float | None = None) -> Array:
    """Latents of `shape` from a text-conditioned noise model with the chosen sampler ('ddim' | 'ddpm')."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; use one of {SAMPLERS}")
    if context is not None and context.shape[0] != shape[0]:
        raise ValueError(f"context batch {context.shape[0]} differs from the sample batch {shape[0]}")
    eps_fn = guided_eps_fn(model, context, context_mask, guidance_scale)
    if method == "ddpm":
        return ddpm_sample(eps_fn, schedule, key, shape, clip_x0=clip_x0)
    return ddim_sample(eps_fn, schedule, key, shape, num_steps=num_steps, eta=eta, clip_x0=clip_x0)
