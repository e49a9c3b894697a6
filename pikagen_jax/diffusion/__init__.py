"""The latent-diffusion system (seed 003).

`schedule` (re-exported here): noise schedules, the Huber eps-loss with text dropout, DDPM / DDIM samplers,
classifier-free guidance. `state`, `steps`, `sampling`, `train`: the three training stages (VAE, U-Net, text
encoder) on the shared training loop, text -> image sampling, and `train_and_evaluate` (configs/diffusion.py).
"""

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
