"""`train_and_evaluate` for the sprite-caption alignment encoder (configs/alignment.py).

Trains on the `train` split only (the encoder must never see the validation or test sprites it later scores),
keeps the best checkpoint by validation R-precision of the real sprites, and writes `results.json`: the real
sprites' own R-precision on every evaluation split — the ceiling generated sprites are compared with.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
from absl import logging
from flax import nnx

from pikagen_jax import config_utils
from pikagen_jax.alignment.state import AlignmentState
from pikagen_jax.alignment.steps import make_train_step
from pikagen_jax.metrics.alignment import r_precision
from pikagen_jax.metrics.split_eval import dataset_splits, load_split
from pikagen_jax.models.params import count_params
from pikagen_jax.training.alignment_scorer import AlignmentScorer, load_alignment_scorer
from pikagen_jax.training.loop import TrainResult, run_training
from pikagen_jax.training.mesh import make_mesh, replicate_nodes

RESULTS_FILE = "results.json"
TRAIN_SPLIT = "train"


def validate_config(config: ml_collections.ConfigDict) -> None:
    """The alignment system's own checks: it trains on the train split only, without colour jitter."""
    if config.data.train_split != TRAIN_SPLIT:
        raise ValueError(f"data.train_split={config.data.train_split!r}: the alignment encoder trains on the "
                         f"'{TRAIN_SPLIT}' split only (it scores validation and test sprites later)")
    if config.data.augment.color_jitter:
        raise ValueError("data.augment.color_jitter=True would teach the encoder to ignore colour, which captions "
                         "name: set --config.data.augment.color_jitter=False")


def real_r_precision(scorer: AlignmentScorer, config: ml_collections.ConfigDict, split: str,
                     candidates: int = 100) -> dict[str, float]:
    """R-precision of the real sprites of `split` against their own captions (the ceiling)."""
    data = load_split(config, split, scorer.batch_size)
    image_emb = scorer.embed_images(data.images)
    text_emb = scorer.embed_tokens(data.token_ids, data.attention_mask)
    return r_precision(image_emb, text_emb, candidates=candidates, seed=config.seed)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainResult:
    """Trains the heads for `train.num_steps`, evaluating val R-precision every `eval.every_steps`."""
    workdir = Path(workdir)
    config_utils.validate_common(config, jax.device_count())
    validate_config(config)
    mesh = make_mesh()
    state = AlignmentState(config, rngs=nnx.Rngs(config.seed))
    logging.info("alignment heads: %d parameters (Inception-v3 and the %s text backbone frozen)",
                 count_params(state.heads), config.text.checkpoint)
    replicate_nodes(mesh, state)
    scorer = AlignmentScorer(config, state.inception, state.backbone, state.heads, step=0)

    def eval_fn(step: int) -> dict[str, float]:
        result = real_r_precision(scorer, config, "val", config.eval.candidates)
        return {"val_r_precision_top1": result["r_precision_top1"], "val_r_precision_top5": result["r_precision_top5"]}

    result = run_training(config, workdir, mesh=mesh, nodes=state.checkpoint_items(),
                          train_step=make_train_step(state, config, mesh), eval_fn=eval_fn)
    best = load_alignment_scorer(workdir)
    report = {"step": best.step, "splits": {}}
    for split in [s for s in ("val", "test", "test_intra") if s in dataset_splits(config)]:
        report["splits"][split] = real_r_precision(best, config, split, config.eval.candidates)
        logging.info("real %s sprites: R-precision top-1 %.3f, top-5 %.3f among %d (chance %.3f)", split,
                     report["splits"][split]["r_precision_top1"], report["splits"][split]["r_precision_top5"],
                     report["splits"][split]["candidates"], report["splits"][split]["chance_top1"])
    (workdir / RESULTS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return result
