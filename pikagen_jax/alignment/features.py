"""The alignment encoder's feature cache: frozen features of augmented training sprites and their captions.

The frozen networks (the FID Inception-v3 at 299 px, MiniLM) cost ~100x more than the trained heads, so they run
once: `model.feature_views` passes over the train split through the training pipeline (random flips and affine
warps, a caption variant drawn per sample by `data.captions`) give the cache the heads then train on for
thousands of steps. The cache is written to `<workdir>/feature_cache.npz` (atomically) with what it was made
from; a resumed run reuses it, a changed config rebuilds it.

    cache = load_or_extract_train_features(config, frozen, workdir)   # FeatureCache
    iterator = cached_batches(cache, batch_size=128, seed=0)            # resumable (get_state / set_state)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

CACHE_FILE = "feature_cache.npz"


@dataclasses.dataclass
class FeatureCache:
    """Frozen features of (augmented sprite, caption) pairs: image [N, 2048], text [N, D], species [N]."""

    image: np.ndarray
    text: np.ndarray
    species: np.ndarray

    def __len__(self) -> int:
        return len(self.image)


@dataclasses.dataclass
class FrozenNetworks:
    """The frozen feature networks and a jitted function of both."""

    inception: nnx.Module
    backbone: nnx.Module

    def __post_init__(self):
        from pikagen_jax.training.alignment_scorer import text_features

        self._features = nnx.jit(lambda inception, backbone, images, ids, mask: (
            inception(images), text_features(backbone, ids, mask)))

    def __call__(self, images: Any, ids: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
        image, text = self._features(self.inception, self.backbone, jnp.asarray(images), jnp.asarray(ids),
                                     jnp.asarray(mask))
        return np.asarray(image, np.float32), np.asarray(text, np.float32)


def cache_key(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the cached features depend on: a cache made from anything else is rebuilt."""
    data = config.data
    return {"dataset": data.dataset, "data_dir": str(Path(data.data_dir).resolve()), "split": data.train_split,
            "image_size": data.image_size, "augment": data.augment.to_dict(), "captions": data.captions.to_dict(),
            "text": config.text.to_dict(), "inception": config.model.inception, "views": config.model.feature_views,
            "seed": config.seed}


def extract_train_features(config: ml_collections.ConfigDict, frozen: FrozenNetworks) -> FeatureCache:
    """`model.feature_views` augmented passes over the train split through the frozen networks."""
    from tqdm import tqdm

    from pikagen_jax.data.pipeline import make_train_loader, open_split

    batch = int(config.train.batch_size)
    records = len(open_split(config.data.data_dir, config.data.dataset, config.data.train_split))
    batches = max(1, math.ceil(int(config.model.feature_views) * records / batch))
    loader = iter(make_train_loader(config))
    images, texts, species = [], [], []
    for _ in tqdm(range(batches), desc="alignment features (frozen Inception + text)", unit="batch",
                  disable=jax.process_index() != 0):
        item = next(loader)
        image, text = frozen(item["image"], item["token_ids"], item["attention_mask"])
        images.append(image)
        texts.append(text)
        species.append(np.asarray(item["national_number"], np.int32))
    return FeatureCache(np.concatenate(images), np.concatenate(texts), np.concatenate(species))


def load_or_extract_train_features(config: ml_collections.ConfigDict, frozen: FrozenNetworks,
                                   workdir: Path) -> FeatureCache:
    """The workdir's cache if it was made from this config, else extracted and written (atomically)."""
    path = Path(workdir) / CACHE_FILE
    key = json.dumps(cache_key(config), sort_keys=True)
    if path.is_file():
        try:
            with np.load(path) as saved:
                if str(saved["key"]) == key:
                    logging.info("alignment features: %d cached pairs from %s", len(saved["species"]), path)
                    return FeatureCache(saved["image"], saved["text"], saved["species"])
            logging.info("the feature cache %s was made from another config: extracting again", path)
        except (OSError, ValueError, KeyError) as error:
            logging.warning("the feature cache %s is unreadable (%s): extracting again", path, error)
    cache = extract_train_features(config, frozen)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, image=cache.image, text=cache.text, species=cache.species, key=np.asarray(key))
        os.replace(partial, path)
    return cache


def cached_batches(cache: FeatureCache, batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """An endless, shuffled (per epoch) iterator of batches of the cache; `get_state` / `set_state` resume it."""
    if len(cache) < batch_size:
        raise ValueError(f"the feature cache holds {len(cache)} pairs, fewer than train.batch_size={batch_size}")
    def pair(index: int) -> dict[str, np.ndarray]:
        return {"image_features": cache.image[index], "text_features": cache.text[index],
                "species": cache.species[index]}

    dataset = (grain.MapDataset.range(len(cache)).shuffle(seed=seed).repeat().map(pair)
               .batch(batch_size, drop_remainder=True))
    return iter(dataset.to_iter_dataset())
