r"""Encoder–attention–decoder text-to-sprite model (seeds 000/001), trained with a pixel L1 loss.

Train (defaults = seed 001's final configuration: Kaggle data at 215 px, enriched descriptions, 8 rotations,
2 encoder layers, 4 heads, FF 1024, dropout 0.3, Adam lr 1e-4 + weight decay 1e-5, batch 10, 100 epochs,
best checkpoint by validation L1):
    python launch.py --config=configs/l1.py --workdir=workdirs/l1
Presets, picked after a colon:
    --config=configs/l1.py:smoke   under a minute on 2 CPU cores (BERT-mini, tiny decoder, 64 px, 4 steps)
    --config=configs/l1.py:cpu     64 px, frozen MiniLM, narrow decoder: ~1 s/step on 2 CPU cores, 30 epochs
                                   of 71 steps (rotations drawn on the fly, not counted as epochs) ≈ 40 min
The full configuration takes ~3 s/step on 2 CPU cores (0.30-0.34 steps/s, 56,800 steps): train it on a GPU.
Any field can be overridden, e.g. --config.optim.lr=3e-4 --config.model.encoder_heads=2;
an unknown key is an error. Grid search: `python -m pikagen_jax.l1.sweep --help`.

Epochs: seed 000 stored every rotation of a training sprite as its own example, so with
`train.epoch_counts_rotations` one epoch is `rotations` passes over the training species (the pipeline
draws one of the rotations per example on the fly). `train.num_steps=0` derives the step count from
`train.num_epochs`; evaluation, sample sheets and the learning curve run every `eval.every_epochs` /
`report.every_epochs` epochs. `train.early_stop_patience=N` ends the run once validation L1 has not
improved for N evaluations (e.g. `--config.train.early_stop_patience=3`: "until val L1 stops improving").
"""

from __future__ import annotations

import ml_collections

from pikagen_jax.data.pipeline import data_config
from pikagen_jax.training.checkpointing import default_checkpoint_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = data_config()
    config.system = "l1"
    config.seed = 0
    config.data.dataset = "kaggle"
    config.data.image_size = 215
    config.data.captions.update({"original": 0.0, "paraphrase": 0.0, "enriched": 1.0})  # seed 001: enriched
    config.data.augment.rotations = 8
    config.text.max_length = 96  # the Kaggle enriched descriptions need up to 83 WordPiece tokens

    # Fields of pikagen_jax.models.l1_model.L1ModelConfig (image_size comes from data.image_size).
    config.model = ml_collections.ConfigDict({
        # 'minilm' = the pretrained MiniLM-L6 available offline (the seed's pretrained BERT-mini is not);
        # 'bert_mini' = BERT-mini's shape, random init; or a Hugging Face BERT directory / hub name.
        "bert_checkpoint": "minilm",
        # BERT's internal dropout: None keeps the checkpoint's (0.1). Seed 001's "dropout 0.3 everywhere" is
        # the dropout of its own modules (encoder layers, attention blocks, decoder) below.
        "bert_dropout": ml_collections.config_dict.placeholder(float),
        "encoder_layers": 2,
        "encoder_heads": 4,
        "encoder_ff_dim": 1024,
        "encoder_dropout": 0.3,
        "noise_std": 0.0,  # Gaussian noise on the BERT outputs in training (seed: optional, no value given)
        "attention_dim": 256,
        "attention_heads": 4,
        "attention_dropout": 0.3,
        "z_dim": 100,
        "decoder_channels": (1024, 512, 256, 128, 64),
        "base_size": 8,
        "final_kernel": 4,
        "decoder_dropout": 0.3,
        # "none" (the seed: tanh output) or "train_median": predict a residual on the per-pixel median of the
        # training sprites, which alone scores val/test L1 0.186/0.191 on seed 000's split (README, L1 section).
        "output_prior": "none",
    })
    config.loss = ml_collections.ConfigDict({
        "kind": "l1",  # "l1" | "clip" | "l1+clip" (the CLIP losses need clip.checkpoint)
        "clip_weight": 1.0,  # lambda of L1 + lambda * CLIP
    })
    config.clip = ml_collections.ConfigDict({
        # Hugging Face CLIPModel checkpoint (local directory, or hub name with internet access), run by our JAX
        # CLIP inside the train step. Needed by the CLIP losses; when set, the final evaluation also reports the
        # CLIP score.
        # No CLIP weights exist offline: e.g. openai/clip-vit-base-patch32 on a machine with internet.
        "checkpoint": "",
    })
    config.optim = ml_collections.ConfigDict({
        "lr": 1e-4,
        "weight_decay": 1e-5,
        # "l2": decay added to the gradient before Adam, as torch.optim.Adam(weight_decay=...) (the seed);
        # "decoupled": AdamW.
        "weight_decay_mode": "l2",
        "b1": 0.9,
        "b2": 0.999,
        "freeze_bert": False,  # True trains everything but the BERT stage
    })
    config.train = ml_collections.ConfigDict({
        "batch_size": 10,
        "num_epochs": 100,
        "num_steps": 0,  # 0: num_epochs × steps per epoch; > 0 overrides the epoch count
        "epoch_counts_rotations": True,  # one epoch = data.augment.rotations passes (seed 000's stored copies)
        "mixed_precision": "float32",  # or "bfloat16" (compute in bf16, params f32)
        "nonfinite_policy": "stop",  # non-finite loss: "stop" with a message, or "skip" the update
        "log_every": 50,
        "max_minutes": 0.0,  # > 0: stop (sample, checkpoint) after this much wall-clock time, compile included
        "sample_every": 0,  # derived from report.every_epochs
        # Stop when validation L1 has not improved by more than early_stop_min_delta for this many
        # evaluations (0: train all num_epochs, as the seed did). Decided from learning_curves.json, so a
        # resumed run stops where an uninterrupted one would.
        "early_stop_patience": 0,
        "early_stop_min_delta": 0.0,
    })
    config.eval = ml_collections.ConfigDict({
        "every_epochs": 1,  # validation L1 (and the learning-curve point) every N epochs
        "every_steps": 0,  # derived from every_epochs; > 0 overrides it
        "batch_size": 10,
        "caption": "auto",  # "original" | "enriched" | "auto" (enriched when training mostly uses it)
        "splits": ("train", "val", "test"),  # final L1 on the best checkpoint, in results.json
    })
    config.report = ml_collections.ConfigDict({
        "every_epochs": 10,  # prediction-vs-ground-truth sheets (train and val) every N epochs
        "num_examples": 8,
        "pdf": True,  # also write the sheets as PDF (as the seed did)
    })
    config.checkpoint = default_checkpoint_config()
    config.checkpoint.update({"best_metric": "val_l1", "best_mode": "min"})

    preset = (arg or "").strip()
    if preset == "smoke":
        config.data.image_size = 64
        config.data.worker_count = 0
        config.data.augment.rotations = 4
        config.text.max_length = 16
        config.model.update({
            # BERT-mini's shape (random init): the 'tiny' BERT's 99-token table cannot embed WordPiece ids.
            "bert_checkpoint": "bert_mini", "encoder_layers": 1, "encoder_heads": 2,
            "encoder_ff_dim": 16, "attention_dim": 8, "attention_heads": 2, "z_dim": 4,
            "decoder_channels": (8, 4, 4),  # 8 -> 16 -> 32 -> 64 px
        })
        config.train.update({"batch_size": 4, "num_steps": 4, "log_every": 2})
        config.eval.update({"every_steps": 2, "batch_size": 4})
        config.report.update({"num_examples": 3})
        config.checkpoint.update({"every_steps": 2, "max_to_keep": 2})
    elif preset == "cpu":
        # A 2-core CPU run: 64 px, frozen MiniLM (the encoder layers, attention and decoder train), narrow decoder.
        config.data.image_size = 64
        config.model.update({"decoder_channels": (256, 128, 64), "attention_dim": 128})  # 8 -> 16 -> 32 -> 64 px
        config.optim.freeze_bert = True
        config.train.update({"num_epochs": 30, "epoch_counts_rotations": False, "log_every": 25})
        config.report.every_epochs = 5
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/l1.py; use '', 'smoke' or 'cpu'")
    config.lock()
    return config
