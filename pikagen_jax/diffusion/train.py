"""`train_and_evaluate` for the latent-diffusion system (configs/diffusion.py), stage by stage.

`config.stage` = 'vae' | 'unet' | 'text' | 'all' (the three in order). Each stage is a run of the shared
training loop in its own sub-folder of the work directory, with its own steps, checkpoints (resume),
TensorBoard events and sample grids::

    workdir/vae/    checkpoints/  events  samples/step_*.png (top: real, bottom: reconstructions)
                    perceptual.json (which perceptual network the VAE trained with)
    workdir/unet/   checkpoints/  events  samples/step_*.png (top: real, bottom: EMA U-Net samples)
    workdir/text/   checkpoints/  events  samples/step_*.png

A stage starts from the latest checkpoint of the previous one (unet <- vae, text <- unet) and refuses to
start without it; the networks it takes over must have the same configuration. A finished stage (its
latest step = its step count) is skipped, so re-running `--config.stage=all` continues where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from pikagen_jax import config_utils
from pikagen_jax.data.pipeline import make_eval_loader, steps_per_epoch
from pikagen_jax.diffusion.sampling import LatentDiffusionSampler
from pikagen_jax.diffusion.schedule import SAMPLERS
from pikagen_jax.diffusion.stages import stage_dir, stage_has_checkpoints
from pikagen_jax.diffusion.state import INHERITED_ITEMS, STAGES, DiffusionState, previous_stage
from pikagen_jax.diffusion.steps import make_train_step
from pikagen_jax.metrics.perceptual import PERCEPTUAL_NETWORKS, build_perceptual_network
from pikagen_jax.models.params import count_params
from pikagen_jax.training.checkpointing import Checkpointer
from pikagen_jax.training.logging import write_image_grid
from pikagen_jax.training.loop import TrainResult, run_training
from pikagen_jax.training.mesh import check_batch_divisible, make_mesh, replicate_nodes
from pikagen_jax.training.samples import fixed_prompts

STAGE_CHOICES = STAGES + ("all",)
# Config blocks a later stage must share with the stage it takes networks over from.
SHARED_BLOCKS = {"unet": ("text", "vae"), "text": ("text", "vae", "unet", "diffusion")}
PERCEPTUAL_RECORD = "perceptual.json"


def stages_to_run(stage: str) -> tuple[str, ...]:
    """('vae', 'unet', 'text') for 'all', else the one stage."""
    if stage not in STAGE_CHOICES:
        raise ValueError(f"config.stage={stage!r} must be one of {STAGE_CHOICES}, e.g. --config.stage=vae")
    return STAGES if stage == "all" else (stage,)


def stage_batch_size(config: ml_collections.ConfigDict, stage: str) -> int:
    """`stages.<stage>.batch_size`, or `train.batch_size` when that is 0."""
    return int(config.stages[stage].batch_size or config.train.batch_size)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """The diffusion system's own checks (config_utils.validate_common does the shared ones)."""
    stages_to_run(config.stage)
    for stage in STAGES:
        block = config.stages[stage]
        check_batch_divisible(stage_batch_size(config, stage), num_devices, f"stages.{stage}.batch_size")
        if block.lr <= 0 or block.grad_clip <= 0 or not 0 <= block.warmup_fraction < 1:
            raise ValueError(f"stages.{stage}: need lr > 0, grad_clip > 0 and 0 <= warmup_fraction < 1, got "
                             f"lr={block.lr}, grad_clip={block.grad_clip}, warmup_fraction={block.warmup_fraction}")
        if block.num_steps <= 0 and block.num_epochs <= 0:
            raise ValueError(f"stages.{stage}: set num_steps or num_epochs > 0")
    if config.perceptual.network not in PERCEPTUAL_NETWORKS:
        raise ValueError(f"perceptual.network={config.perceptual.network!r} must be one of {PERCEPTUAL_NETWORKS}")
    if config.sample.method not in SAMPLERS:
        raise ValueError(f"sample.method={config.sample.method!r} must be one of {SAMPLERS}")
    if not 1 <= config.sample.num_steps <= config.diffusion.num_timesteps:
        raise ValueError(f"sample.num_steps must be in 1..{config.diffusion.num_timesteps}")
    if not 0 <= config.unet.cond_drop_prob <= 1:
        raise ValueError(f"unet.cond_drop_prob must lie in [0, 1], got {config.unet.cond_drop_prob}")
    if config.stages.text.num_steps or config.stages.text.num_epochs:
        if config.text.finetune == "none":
            raise ValueError("the text stage fine-tunes the text encoder: set text.finetune to 'partial' or 'full'")


def stage_config(config: ml_collections.ConfigDict, stage: str) -> tuple[ml_collections.ConfigDict, int]:
    """(the config of one stage's run, its steps per epoch): `stage`, `train.batch_size` and
    `train.num_steps` set from `stages.<stage>` (num_steps, else num_epochs x steps per epoch)."""
    run = config.copy_and_resolve_references()
    run.unlock()
    run.stage = stage
    run.train.batch_size = stage_batch_size(config, stage)
    per_epoch = steps_per_epoch(run)
    block = run.stages[stage]
    run.train.num_steps = int(block.num_steps or round(block.num_epochs * per_epoch))
    run.lock()
    return run, per_epoch


def _check_same_blocks(config: ml_collections.ConfigDict, previous: dict, stage: str, folder: Path) -> None:
    for name in SHARED_BLOCKS[stage] + ("data.image_size",):
        path = name.split(".")
        mine, theirs = config, ml_collections.ConfigDict(previous)
        for part in path:
            mine, theirs = mine[part], theirs[part]
        mine = mine.to_dict() if isinstance(mine, ml_collections.ConfigDict) else mine
        theirs = theirs.to_dict() if isinstance(theirs, ml_collections.ConfigDict) else theirs
        if json.loads(json.dumps(mine, default=list)) != json.loads(json.dumps(theirs, default=list)):
            raise ValueError(f"stage {stage!r} takes its networks from {folder}, trained with a different "
                             f"config.{name} ({theirs} there, {mine} now): use the same settings, or a new workdir")


def check_previous_stage(workdir: Path, stage: str, config: ml_collections.ConfigDict) -> Path:
    """The folder of the stage `stage` starts from, checked before anything is built: FileNotFoundError
    naming the command to run when it has no checkpoint, ValueError when it was trained with other settings
    of the networks `stage` takes over."""
    previous = previous_stage(stage)
    folder = stage_dir(workdir, previous)
    if not stage_has_checkpoints(workdir, previous):
        raise FileNotFoundError(
            f"stage {stage!r} starts from the {previous!r} stage's checkpoint, but {folder} has none: train it first "
            f"with `python launch.py --config=configs/diffusion.py --config.stage={previous} --workdir={workdir}` "
            "(or --config.stage=all)")
    checkpointer = Checkpointer(folder, read_only=True)
    saved = checkpointer.restore_config()
    _check_same_blocks(config, saved, stage, folder)
    step, expected = checkpointer.latest_step(), int(saved["train"]["num_steps"])
    if step < expected:
        logging.warning("the %s stage stopped at step %d of %d; %s starts from that checkpoint", previous, step,
                        expected, stage)
    return folder


def restore_previous_stage(state: DiffusionState, workdir: Path) -> int:
    """Loads the networks of `INHERITED_ITEMS[stage]` from the previous stage's latest checkpoint (see
    `check_previous_stage`); returns its step."""
    stage = state.stage
    checkpointer = Checkpointer(stage_dir(workdir, previous_stage(stage)), read_only=True)
    step = checkpointer.latest_step()
    nodes = {name: getattr(state, name) for name in INHERITED_ITEMS[stage]}
    restored = checkpointer.restore(nodes, step=step)
    for name, node in nodes.items():
        nnx.update(node, restored[name])
    logging.info("stage %s: restored %s from %s step %d", stage, sorted(nodes), checkpointer.workdir, step)
    return step


def estimate_latent_scale(state: DiffusionState, config: ml_collections.ConfigDict) -> float:
    """1 / std of VAE posterior samples over the first `unet.latent_scale_batches` training images."""
    encode = nnx.jit(lambda vae, x, key: vae.encode_latents(x, key))
    samples = []
    for index, batch in enumerate(make_eval_loader(config, config.data.train_split)):
        if index >= config.unet.latent_scale_batches:
            break
        samples.append(np.asarray(encode(state.vae, jnp.asarray(batch["image"]), jax.random.key(index))))
    std = float(np.std(np.concatenate(samples)))
    if not np.isfinite(std) or std <= 0:
        raise FloatingPointError(f"the VAE's latents have standard deviation {std}: retrain the VAE stage")
    return 1.0 / std


def _make_sample_fn(state: DiffusionState, config: ml_collections.ConfigDict, folder: Path):
    prompts = fixed_prompts(config, config.train.num_sample_prompts)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "samples" / "prompts.txt").write_text("\n".join(str(c) for c in prompts["caption"]) + "\n",
                                                   encoding="utf-8")
    if state.stage == "vae":
        context = config.vae.text_conditioned

        @nnx.jit
        def reconstruct(text, vae, images, ids, mask):
            tokens = text(ids, mask)[0] if context else None
            return vae(images, None, tokens, mask if context else None)[0]

        def images_of() -> np.ndarray:
            return reconstruct(state.text_encoder, state.vae, prompts["image"], prompts["token_ids"],
                               prompts["attention_mask"])
    else:
        s = config.sample
        sampler = LatentDiffusionSampler(state.text_encoder, state.vae, state.ema_unet, state.latent_stats, config,
                                         method=s.method, num_steps=s.num_steps, guidance_scale=s.guidance_scale,
                                         eta=s.eta, clip_x0=s.clip_x0 or None)

        def images_of() -> np.ndarray:
            return sampler(prompts["token_ids"], prompts["attention_mask"], seed=config.seed)

    name = "samples/reconstruction" if state.stage == "vae" else "samples/ema_unet"

    def sample_fn(step: int, writer) -> None:
        images = np.asarray(jax.device_get(images_of()))
        grid = np.concatenate([prompts["image"], images])  # top row: real; bottom row: reconstructions / samples
        write_image_grid(writer, step, name, grid, ncols=len(images),
                         png_path=folder / "samples" / f"step_{step:07d}.png")

    return sample_fn


def _perceptual_for(config: ml_collections.ConfigDict, folder: Path):
    p = config.perceptual
    network, record = build_perceptual_network(p.network, p.weights, input_size=p.input_size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PERCEPTUAL_RECORD).write_text(json.dumps({**record, "weight": config.vae.perceptual_weight},
                                                       indent=2) + "\n")
    logging.info("VAE perceptual network: %s (weight %g)", record["description"], config.vae.perceptual_weight)
    return network, record


def train_stage(config: ml_collections.ConfigDict, workdir: Path, stage: str) -> TrainResult | None:
    """Trains one stage in workdir/<stage> (resuming); returns None when it was already complete."""
    config, per_epoch = stage_config(config, stage)
    folder = stage_dir(workdir, stage)
    if stage_has_checkpoints(workdir, stage):
        done = Checkpointer(folder, read_only=True).latest_step()
        if done >= config.train.num_steps:
            logging.info("stage %s already trained (%d of %d steps): skipped", stage, done, config.train.num_steps)
            return None
    if stage != "vae":
        check_previous_stage(workdir, stage, config)  # fail before building anything
    logging.info("stage %s: %d steps of batch %d (%d per epoch, %.3g epochs) in %s", stage, config.train.num_steps,
                 config.train.batch_size, per_epoch, config.train.num_steps / per_epoch, folder)
    perceptual, record = _perceptual_for(config, folder) if stage == "vae" else (None, None)
    state = DiffusionState(config, stage, rngs=nnx.Rngs(config.seed), perceptual=perceptual)
    logging.info("parameters: VAE %d, text encoder %d%s", count_params(state.vae), count_params(state.text_encoder),
                 f", U-Net {count_params(state.unet)}" if stage != "vae" else "")
    if stage != "vae":
        restore_previous_stage(state, workdir)
    if stage == "unet" and not stage_has_checkpoints(workdir, stage):
        scale = estimate_latent_scale(state, config)
        state.latent_stats.scale[...] = jnp.asarray(scale, jnp.float32)
        logging.info("latent scale 1/std = %.4f", scale)
    mesh = make_mesh()
    replicate_nodes(mesh, state)  # the frozen networks too: the step reads them on every device
    sample_fn = _make_sample_fn(state, config, folder)
    train_step = make_train_step(state, config, mesh, steps_per_epoch=per_epoch)
    if record is not None:
        from pikagen_jax.training.logging import create_writer

        writer = create_writer(folder)
        writer.write_texts(0, {"perceptual_network": record["description"]})
        writer.flush()
    return run_training(config, folder, mesh=mesh, nodes=state.checkpoint_items(), train_step=train_step,
                        sample_fn=sample_fn)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainResult | None:
    """Trains the stages of `config.stage` in order; returns the last trained stage's result (None when
    every requested stage was already complete)."""
    workdir = Path(workdir)
    config_utils.validate_common(config, jax.device_count())
    validate_config(config, jax.device_count())
    result = None
    for stage in stages_to_run(config.stage):
        result = train_stage(config, workdir, stage) or result
    return result
