"""Gaussian diffusion for the latent-diffusion system (seed 003): schedules, loss, samplers, guidance."""

from pikagen_jax.diffusion.schedule import (
    NoiseSchedule,
    classifier_free_guidance,
    cosine_beta_schedule,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    denoising_loss,
    guided_eps_fn,
    linear_beta_schedule,
    make_schedule,
    predict_x0,
    q_sample,
    sample,
)

__all__ = [
    "NoiseSchedule",
    "classifier_free_guidance",
    "cosine_beta_schedule",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "denoising_loss",
    "guided_eps_fn",
    "linear_beta_schedule",
    "make_schedule",
    "predict_x0",
    "q_sample",
    "sample",
]
