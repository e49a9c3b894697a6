r"""DF-GAN-style conditional GAN (seed 002): text encoder → cross-attention generator, spectral-norm D.

Train (defaults = seed 002: 128 px, batch 64, MiniLM text encoder with partial fine-tuning):
    python launch.py --config=configs/gan.py --workdir=workdirs/gan
Presets, picked after a colon:
    --config=configs/gan.py:smoke   seconds on a 2-core CPU (tiny random text encoder, 64 px); used by tests
    --config=configs/gan.py:cpu     64 px, batch 16, half widths, frozen MiniLM: ~3 s/step on 2 CPU cores
Any field can be overridden, e.g. --config.train.batch_size=8 --config.data.image_size=64;
an unknown key is an error.
"""

from __future__ import annotations

import ml_collections

from pikagen_jax.data.pipeline import data_config
from pikagen_jax.training.checkpointing import default_checkpoint_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = data_config()
    config.system = "gan"
    config.seed = 0
    config.data.image_size = 128
    config.data.augment.hflip = True
    config.data.augment.affine = True
    config.data.augment.color_jitter = True

    config.text.backbone = "bert"  # "bert" or "clip"
    config.text.checkpoint = "minilm"  # preset name ("minilm", "bert_mini", "tiny") or a local HF folder
    config.text.finetune = "partial"  # "none" | "partial" (seed 002) | "full"
    config.text.out_dim = 256

    config.model = ml_collections.ConfigDict({
        "z_dim": 100,
        "gen_channels": 32,  # width at the output resolution; doubles per stage towards 4×4 (seed 002, Table 3.3)
        "disc_channels": 32,
        "max_channels": 256,
        "upsample": "bilinear",  # "bilinear" (+conv) or "transposed"
        "downsample": "strided",  # "strided" conv or "avgpool"
        # How D's convolutions are computed: "auto" (strided ones as space-to-depth + a stride-1 conv: the
        # fastest MA-GP on XLA:CPU), "space_to_depth" (same), "matmul" (im2col for all) or "xla" (lax.conv
        # everywhere). Same values either way.
        "conv_impl": "auto",
        "attn_heads": 4,
        "attn_head_dim": 64,
    })
    config.loss = ml_collections.ConfigDict({"magp_weight": 1.5, "magp_power": 6.0})
    config.optim = ml_collections.ConfigDict({
        "lr_g": 1e-4, "lr_d": 4e-4, "lr_text": 2e-5, "b1": 0.0, "b2": 0.9,
    })
    config.train = ml_collections.ConfigDict({
        "batch_size": 64,
        "num_steps": 100_000,
        "mixed_precision": "float32",  # or "bfloat16" (compute in bf16, params f32, MA-GP in f32)
        "ema_decay": 0.999,
        "nonfinite_policy": "stop",  # non-finite loss: "stop" with a message, or "skip" the update
        "log_every": 50,
        "sample_every": 1000,
        "num_sample_prompts": 8,
    })
    config.checkpoint = default_checkpoint_config()
    config.eval = ml_collections.ConfigDict({
        "every_steps": 0,  # 0 = no in-training evaluation; >0 computes `metric` on the val split
        "metric": "fid",  # "fid" or "kid"; the best checkpoint is kept by it
        "num_samples": 256,
    })

    preset = (arg or "").strip()
    if preset == "smoke":
        config.data.image_size = 64
        config.data.worker_count = 0
        config.data.augment.update({"affine": False, "color_jitter": False})
        config.text.checkpoint = "tiny"
        config.text.max_length = 16
        config.text.out_dim = 32
        config.model.update({"z_dim": 16, "gen_channels": 32, "disc_channels": 32, "max_channels": 64,
                             "attn_heads": 2, "attn_head_dim": 16})
        config.train.update({"batch_size": 4, "num_steps": 4, "log_every": 2, "sample_every": 4,
                             "num_sample_prompts": 4})
        config.checkpoint.update({"every_steps": 2, "max_to_keep": 2})
    elif preset == "cpu":
        # ~3 s/step on 2 CPU cores: half the seed's widths, frozen MiniLM (its heads still train), batch 16.
        config.data.image_size = 64
        config.text.finetune = "none"
        config.text.max_length = 48
        config.model.update({"gen_channels": 16, "disc_channels": 16, "max_channels": 128})
        config.train.update({"batch_size": 16, "num_steps": 3000, "log_every": 25, "sample_every": 250})
        config.checkpoint.every_steps = 250
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/gan.py; use '', 'smoke' or 'cpu'")
    config.lock()
    return config
