"""`train_and_evaluate` for the sprite-caption alignment encoder (configs/alignment.py).

Trains on the `train` split only (the encoder must never see the validation or test sprites it later scores):
the frozen networks' features of `model.feature_views` augmented passes over it are extracted once
(`alignment.features`), then the heads train on them. Keeps the best checkpoint by validation R-precision of
the real sprites and writes `results.json`: the real sprites' own R-precision on every split — the ceiling
generated sprites are compared with (on `train`, sprites the encoder was fitted to: an optimistic ceiling).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from pikagen_jax import config_utils
from pikagen_jax.alignment.features import (
    FrozenNetworks,
    cached_batches,
    extra_dataset_names,
    load_or_extract_train_features,
)
from pikagen_jax.alignment.state import AlignmentState
from pikagen_jax.alignment.steps import make_train_step
from pikagen_jax.data.pipeline import dataset_dir
from pikagen_jax.errors import DatasetNotFoundError
from pikagen_jax.metrics.alignment import r_precision
from pikagen_jax.metrics.split_eval import dataset_splits, load_split
from pikagen_jax.models.params import count_params
from pikagen_jax.training.alignment_scorer import (
    AlignmentScorer,
    build_frozen_networks,
    colour_bins,
    load_alignment_scorer,
)
from pikagen_jax.training.loop import TrainResult, run_training
from pikagen_jax.training.mesh import make_mesh, replicate_nodes

RESULTS_FILE = "results.json"
TRAIN_SPLIT = "train"
FEATURE_BATCH = 32  # images per frozen-feature batch (Inception at 299 px: memory, not speed, sets it)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """The alignment system's own checks: it trains on the train split only, without colour jitter."""
    if config.data.train_split != TRAIN_SPLIT:
        raise ValueError(f"data.train_split={config.data.train_split!r}: the alignment encoder trains on the "
                         f"'{TRAIN_SPLIT}' split only (it scores validation and test sprites later)")
    if config.data.augment.color_jitter:
        raise ValueError("data.augment.color_jitter=True would teach the encoder to ignore colour, which captions "
                         "name: set --config.data.augment.color_jitter=False")
    for name in extra_dataset_names(config):
        if name == config.data.dataset:
            raise ValueError(f"data.extra_datasets names the training dataset {name!r} itself")
        try:
            dataset_dir(config.data.data_dir, name)
        except DatasetNotFoundError as error:
            folder = name.split("-", 1)[1] if name.startswith("pokeapi-") else None
            raise DatasetNotFoundError(
                f"data.extra_datasets names {name!r}, which is not built in {config.data.data_dir}: build it with "
                f"`python -m data_prep.build --source={name.split('-')[0]} --source_dir=<its source folder>"
                + (f" --sprite_folder={folder}" if folder else "") + f" --data_dir={config.data.data_dir}`"
                " or leave it out of data.extra_datasets") from error
    if config.model.feature_views < 1:
        raise ValueError(f"model.feature_views={config.model.feature_views}: use at least 1 augmented pass")


def real_r_precision(scorer: AlignmentScorer, config: ml_collections.ConfigDict, split: str,
                     candidates: int = 100) -> dict[str, float]:
    """R-precision of the real sprites of `split` against their own captions (the ceiling)."""
    data = load_split(config, split, scorer.batch_size)
    image_emb = scorer.embed_images(data.images)
    text_emb = scorer.embed_tokens(data.token_ids, data.attention_mask)
    return r_precision(image_emb, text_emb, candidates=candidates, seed=config.seed)


def _split_features(frozen: FrozenNetworks, config: ml_collections.ConfigDict, split: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features of a split's sprites (unaugmented) and their original captions."""
    data = load_split(config, split, FEATURE_BATCH)
    images, texts = [], []
    for start in range(0, len(data.images), FEATURE_BATCH):
        chunk = slice(start, start + FEATURE_BATCH)
        image, text = frozen(data.images[chunk], data.token_ids[chunk], data.attention_mask[chunk])
        images.append(image)
        texts.append(text)
    return np.concatenate(images), np.concatenate(texts)


def _extraction_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.train.batch_size = FEATURE_BATCH
    return copy


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainResult:
    """Extracts (or reuses) the frozen features, trains the heads for `train.num_steps`, evaluating val
    R-precision every `eval.every_steps`, and writes the real sprites' R-precision per split."""
    workdir = Path(workdir)
    config_utils.validate_common(config, jax.device_count())
    validate_config(config)
    mesh = make_mesh()
    inception, backbone = build_frozen_networks(config)
    frozen = FrozenNetworks(inception, backbone, colour_bins(config))
    state = AlignmentState(config, backbone.config.hidden_size, rngs=nnx.Rngs(config.seed))
    logging.info("alignment heads: %d parameters (Inception-v3 and the %s text backbone frozen)",
                 count_params(state.heads), config.text.checkpoint)
    replicate_nodes(mesh, state)
    cache = load_or_extract_train_features(_extraction_config(config), frozen, workdir)
    val_images, val_texts = _split_features(frozen, config, "val")
    embed = nnx.jit(lambda heads, image, text: (heads.embed_images(image), heads.embed_texts(text)))

    def eval_fn(step: int) -> dict[str, float]:
        image_emb, text_emb = embed(state.heads, val_images, val_texts)
        result = r_precision(np.asarray(image_emb), np.asarray(text_emb), candidates=config.eval.candidates,
                             seed=config.seed)
        return {"val_r_precision_top1": result["r_precision_top1"], "val_r_precision_top5": result["r_precision_top5"]}

    result = run_training(config, workdir, mesh=mesh, nodes=state.checkpoint_items(),
                          train_step=make_train_step(state, config, mesh), eval_fn=eval_fn,
                          train_iterator=cached_batches(cache, config.train.batch_size, config.seed))
    if jax.process_index() == 0:
        best = load_alignment_scorer(workdir)
        report = {"step": best.step, "feature_pairs": len(cache), "splits": {}}
        for split in [s for s in ("val", "test", "test_intra", TRAIN_SPLIT) if s in dataset_splits(config)]:
            report["splits"][split] = real_r_precision(best, config, split, config.eval.candidates)
            logging.info("real %s sprites: R-precision top-1 %.3f, top-5 %.3f among %d (chance %.3f)", split,
                         report["splits"][split]["r_precision_top1"], report["splits"][split]["r_precision_top5"],
                         report["splits"][split]["candidates"], report["splits"][split]["chance_top1"])
        (workdir / RESULTS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return result
