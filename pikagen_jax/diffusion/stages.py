"""Where each stage of a latent-diffusion run lives (workdir/vae, workdir/unet, workdir/text) and whether it
has been trained; read by the trainer (to chain stages) and the sampler (to find the newest trained stage)."""

from __future__ import annotations

from pathlib import Path

from pikagen_jax.training.checkpointing import Checkpointer


def stage_dir(workdir: str | Path, stage: str) -> Path:
    """The run folder of one stage: workdir/<stage>."""
    return Path(workdir) / stage


def stage_has_checkpoints(workdir: str | Path, stage: str) -> bool:
    """Whether a stage has saved at least one checkpoint."""
    folder = stage_dir(workdir, stage) / "checkpoints"
    return folder.is_dir() and Checkpointer(stage_dir(workdir, stage), read_only=True).latest_step() is not None
