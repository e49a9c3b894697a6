r"""The sprite-caption alignment encoder (DAMSM-style) that measures whether sprites follow their text.

Train (on the train split only; a few minutes on 2 CPU cores, most of it extracting the frozen features once),
then pass it to evaluate for R-precision:
    python launch.py --config=configs/alignment.py --workdir=workdirs/alignment
    python -m pikagen_jax.evaluate --workdir=workdirs/gan64 --alignment_workdir=workdirs/alignment
Presets: `:pokeapi` (also trains on the PokeAPI builds: every flavour text, art and pixel sprites, and species 899+;
build them first, see docs/evaluation.md), `:smoke` (a tiny random text backbone, 4 steps; used by tests).
Frozen: the FID Inception-v3's pool3 features of each sprite (offline fid-helper weights) and the masked mean of
the MiniLM token states of its caption, extracted once for `model.feature_views` augmented passes over the train
split (cached in the workdir); trained: two MLP heads into a 256-wide space, InfoNCE loss.
"""

from __future__ import annotations

import ml_collections

from pikagen_jax.data.pipeline import data_config
from pikagen_jax.training.checkpointing import default_checkpoint_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = data_config()
    config.system = "alignment"
    config.seed = 0
    config.data.dataset = "kaggle-splits_seed000_split"
    config.data.image_size = 64  # the resolution the systems are evaluated at
    # geometric augmentations only: colour jitter would teach the encoder to ignore the colours captions name
    config.data.augment.update({"hflip": True, "affine": True, "color_jitter": False})
    config.data.captions.update({"original": 0.7, "paraphrase": 0.0, "enriched": 0.3})
    # more (sprite, caption) pairs from other built datasets, comma-separated; the species data.dataset holds out
    # for validation and test are left out of them (alignment.features.extract_extra_features)
    config.data.extra_datasets = ""
    config.text.backbone = "bert"
    config.text.checkpoint = "minilm"
    config.text.max_length = 64
    config.model = ml_collections.ConfigDict({
        "inception": "fid_helper",  # weights of the frozen image features (see pikagen_jax.metrics)
        "embed_dim": 256, "hidden": 512, "dropout": 0.1,
        "feature_views": 8,  # augmented passes over the train split whose frozen features the heads train on
        # > 0: beside pool3, the share of the sprite's non-white pixels in each of colour_bins³ RGB cells (pool3 is
        # nearly colour-blind; captions and types name colours); 0 = pool3 only
        "colour_bins": 0,
    })
    config.optim = ml_collections.ConfigDict({"lr": 1e-3, "weight_decay": 1e-4})
    config.train = ml_collections.ConfigDict({
        "batch_size": 128, "num_steps": 3000, "mixed_precision": "float32", "nonfinite_policy": "stop",
        "log_every": 100, "max_minutes": 0.0,
    })
    config.eval = ml_collections.ConfigDict({"every_steps": 100, "candidates": 100})
    config.checkpoint = default_checkpoint_config()
    config.checkpoint.update({"every_steps": 500, "best_metric": "val_r_precision_top1", "best_mode": "max"})

    preset = (arg or "").strip()
    if preset == "pokeapi":
        config.data.extra_datasets = "pokeapi-sprites96_art,pokeapi"
    elif preset == "smoke":
        config.data.worker_count = 0
        config.text.update({"checkpoint": "tiny", "max_length": 16})
        config.model.update({"embed_dim": 16, "hidden": 32, "feature_views": 1})
        config.train.update({"batch_size": 4, "num_steps": 4, "log_every": 2})
        config.eval.update({"every_steps": 2})
        config.checkpoint.update({"every_steps": 2, "max_to_keep": 2})
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/alignment.py; use '', 'pokeapi' or 'smoke'")
    config.lock()
    return config
