"""GAN evaluation: EMA-generator images for a split's captions, and the in-training FID / KID `eval_fn`.

With `config.eval.every_steps > 0`, `gan.train` computes `config.eval.metric` ('fid' or 'kid') of
`config.eval.num_samples` EMA samples for the validation captions against the real validation images,
logs it as `val_fid` / `val_kid` and keeps the best checkpoint by it (lower is better) in `workdir/best`.
With `config.eval.alignment_workdir` (a trained `configs/alignment.py` run) it also logs the samples'
R-precision top-1 against the validation captions (`val_r_precision_top1`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from pikagen_jax.training.samples import noise

EVAL_METRICS = ("fid", "kid")
EVAL_SPLIT = "val"


def generate_for_tokens(sample: Callable, token_ids: np.ndarray, attention_mask: np.ndarray, z_dim: int, *,
                        samples_per_caption: int = 1, seed: int = 0, batch_size: int = 50) -> np.ndarray:
    """Images [N * samples_per_caption, S, S, 3] in [-1, 1], caption-major (the samples of caption 0 first).

    `sample(ids, mask, z)` is a `make_sampler` function; the noise comes from `seed`, so equal seeds give
    equal images. Batches have one fixed size (the last is padded), so the sampler compiles once.
    """
    from pikagen_jax.training.sampler import generate_in_batches

    if samples_per_caption < 1:
        raise ValueError(f"samples_per_caption must be >= 1, got {samples_per_caption}")
    ids = np.repeat(np.asarray(token_ids), samples_per_caption, axis=0)
    mask = np.repeat(np.asarray(attention_mask), samples_per_caption, axis=0)
    if len(ids) == 0:
        raise ValueError("no captions to generate images for")
    z = np.asarray(noise(seed, len(ids), z_dim))
    return generate_in_batches(lambda index, i, m, codes: jax.device_get(sample(i, m, codes)), (ids, mask, z),
                               batch_size)


def eval_metric_name(config: ml_collections.ConfigDict) -> str:
    """The logged name of the in-training metric: 'val_fid' or 'val_kid'."""
    metric = config.eval.metric
    if metric not in EVAL_METRICS:
        raise ValueError(f"eval.metric must be one of {EVAL_METRICS}, got {metric!r}")
    return f"{EVAL_SPLIT}_{metric}"


def with_eval_checkpointing(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose best checkpoint is kept by the in-training metric (`checkpoint.best_metric`
    = 'val_fid' / 'val_kid', mode 'min') when it is left empty; other settings are checked."""
    name = eval_metric_name(config)
    if int(config.eval.num_samples) < 2:
        raise ValueError(f"eval.num_samples must be >= 2 for FID/KID, got {config.eval.num_samples}")
    config = config.copy_and_resolve_references()
    block = config.checkpoint
    if not block.best_metric:
        block.best_metric = name
    produced = (name, f"{name}_std") if name.endswith("kid") else (name,)
    if block.best_metric not in produced:
        raise ValueError(f"checkpoint.best_metric={block.best_metric!r} is not computed during training (eval.metric"
                         f"={config.eval.metric!r} gives {list(produced)}); set --config.checkpoint.best_metric="
                         f"{name} or leave it empty")
    if block.best_metric == name and block.best_mode != "min":
        raise ValueError(f"{name} is lower-is-better: set --config.checkpoint.best_mode=min")
    return config


def make_eval_fn(config: ml_collections.ConfigDict, text_encoder: nnx.Module, ema_generator: nnx.Module, *,
                 inception_source: str = "fid_helper", batch_size: int = 50,
                 cache_dir: str | Path | None = None) -> Callable[[int], dict[str, float]]:
    """`eval_fn(step) -> {'val_fid': x}` (or `{'val_kid': mean, 'val_kid_std': std}`) for `run_training`.

    Generates `config.eval.num_samples` images with the current EMA weights, cycling over the validation
    captions with noise fixed across evaluations, and compares them with the real validation images
    (statistics cached). The Inception network and the real data load on the first call. With several
    processes each generates and featurises its share of the images on its own devices, and the features are
    gathered, so every process gets the same metric from all of them.
    """
    from pikagen_jax.metrics import split_eval
    from pikagen_jax.metrics.fid import extract_features
    from pikagen_jax.training.distributed import gather_rows, local_copy, process_share

    name = eval_metric_name(config)
    num_samples = int(config.eval.num_samples)
    graphdef, _ = nnx.split((text_encoder, ema_generator))

    @jax.jit
    def _sample(variables, ids, mask, z):
        text, gen = nnx.merge(graphdef, variables)
        tokens, sentence = text(ids, mask)
        return gen(z, sentence, tokens, mask)

    def sample_share(ids, mask, z):  # this process's share, on its own devices
        return _sample(local_copy(nnx.state((text_encoder, ema_generator))), ids, mask, z)

    batch_size = min(batch_size, num_samples)
    cache: dict = {}

    def eval_fn(step: int) -> dict[str, float]:
        if not cache:
            cache["inception"] = split_eval.load_inception(inception_source)
            data = split_eval.load_split(config, EVAL_SPLIT, batch_size)
            cache["tokens"] = (data.token_ids, data.attention_mask)
            cache["reference"] = split_eval.split_reference_stats(
                cache["inception"], config, EVAL_SPLIT, inception_source=inception_source, batch_size=batch_size,
                cache_dir=cache_dir, images=data.images)
            if num_samples < len(data.captions):
                logging.warning("eval.num_samples=%d < %d validation captions: only the first %d are used",
                                num_samples, len(data.captions), num_samples)
            alignment_workdir = config.eval.get("alignment_workdir", "")
            if alignment_workdir:  # fails here, at the first evaluation, if the encoder is missing
                from pikagen_jax.training.alignment_scorer import load_alignment_scorer

                cache["scorer"] = load_alignment_scorer(alignment_workdir, batch_size=batch_size)
                cache["caption_emb"] = cache["scorer"].embed_captions(data.captions)
        from pikagen_jax.training.sampler import generate_in_batches

        ids, mask = cache["tokens"]
        index = np.arange(num_samples) % len(ids)
        share = process_share(num_samples)
        z = np.asarray(noise(config.seed, num_samples, config.model.z_dim))[share]
        images = generate_in_batches(lambda _, i, m, codes: jax.device_get(sample_share(i, m, codes)),
                                     (ids[index][share], mask[index][share], z), batch_size)
        features = gather_rows(extract_features(cache["inception"], images, batch_size), num_samples)
        settings = split_eval.MetricSettings(kid_subset_size=min(1000, num_samples), batch_size=batch_size)
        results = split_eval.compare_features(features, cache["reference"], settings)
        out = ({name: results["fid"]} if config.eval.metric == "fid"
               else {name: results["kid"]["mean"], f"{name}_std": results["kid"]["std"]})
        if cache.get("scorer") is not None:
            from pikagen_jax.metrics.alignment import r_precision

            image_emb = gather_rows(cache["scorer"].embed_images(images), num_samples)
            out[f"{EVAL_SPLIT}_r_precision_top1"] = r_precision(image_emb, cache["caption_emb"], caption_index=index,
                                                                seed=config.seed)["r_precision_top1"]
        return out

    return eval_fn
