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
from typing import Any, Iterable, Iterator

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
    """Frozen features of (augmented sprite, caption) pairs: image [N, 2048 (+ colour)], text [N, D], species [N]."""

    image: np.ndarray
    text: np.ndarray
    species: np.ndarray

    def __len__(self) -> int:
        return len(self.image)


@dataclasses.dataclass
class FrozenNetworks:
    """The frozen feature networks and jitted functions of both or of either."""

    inception: nnx.Module
    backbone: nnx.Module
    colour_bins: int = 0  # > 0: the image features also hold the sprite's colour histogram (model.colour_bins)

    def __post_init__(self):
        from pikagen_jax.training.alignment_scorer import image_features, text_features

        bins = self.colour_bins
        self._features = nnx.jit(lambda inception, backbone, images, ids, mask: (
            image_features(inception, images, bins), text_features(backbone, ids, mask)))
        self._images = nnx.jit(lambda inception, images: image_features(inception, images, bins))
        self._texts = nnx.jit(text_features)

    def __call__(self, images: Any, ids: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
        image, text = self._features(self.inception, self.backbone, jnp.asarray(images), jnp.asarray(ids),
                                     jnp.asarray(mask))
        return np.asarray(image, np.float32), np.asarray(text, np.float32)

    def images(self, images: np.ndarray, batch_size: int, desc: str | None = None) -> np.ndarray:
        """Sprites [N, H, W, 3] in [-1, 1] -> image features [N, 2048 (+ colour)], `batch_size` at a time (a
        progress bar named `desc` if given)."""
        from tqdm import tqdm

        starts = tqdm(range(0, len(images), batch_size), desc=desc, unit="batch",
                      disable=desc is None or jax.process_index() != 0)
        return np.concatenate([np.asarray(self._images(self.inception, jnp.asarray(images[i:i + batch_size])),
                                          np.float32) for i in starts])

    def texts(self, ids: np.ndarray, mask: np.ndarray, batch_size: int) -> np.ndarray:
        """Tokenized captions -> masked-mean token states [N, D], `batch_size` at a time."""
        return np.concatenate([np.asarray(self._texts(self.backbone, jnp.asarray(ids[i:i + batch_size]),
                                                      jnp.asarray(mask[i:i + batch_size])), np.float32)
                               for i in range(0, len(ids), batch_size)])


def cache_key(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the cached features depend on: a cache made from anything else is rebuilt."""
    from pikagen_jax.training.alignment_scorer import colour_bins

    data = config.data
    return {"dataset": data.dataset, "data_dir": str(Path(data.data_dir).resolve()), "split": data.train_split,
            "image_size": data.image_size, "augment": data.augment.to_dict(), "captions": data.captions.to_dict(),
            "text": config.text.to_dict(), "inception": config.model.inception, "views": config.model.feature_views,
            "colour_bins": colour_bins(config),
            "seed": config.seed, "extra_datasets": extra_dataset_names(config)}


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


def extra_dataset_names(config: ml_collections.ConfigDict) -> list[str]:
    """The datasets named by `data.extra_datasets` (comma-separated; '' for none)."""
    return [name.strip() for name in str(config.data.get("extra_datasets", "") or "").split(",") if name.strip()]


def _records(data_dir: str, dataset: str, splits: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Every raw record of the named splits of a built dataset (splits the build left empty are not written)."""
    from pikagen_jax.data.pipeline import open_split
    from pikagen_jax.errors import SplitNotFoundError

    for split in splits:
        try:
            source = open_split(data_dir, dataset, split)
        except SplitNotFoundError:
            continue
        yield from (source[i] for i in range(len(source)))


def held_out(config: ml_collections.ConfigDict) -> tuple[set[int], set[str]]:
    """What `data.dataset` keeps from training, which the encoder later scores: the species of no training record
    (validation and test species) and the captions of its other splits (e.g. test_intra's held-out captions)."""
    from pikagen_jax.data.pipeline import dataset_metadata, text_of

    splits = dataset_metadata(config.data.data_dir, config.data.dataset)["splits"]["species"]
    train = {int(n) for n in splits.get(config.data.train_split, [])}
    species = {int(n) for numbers in splits.values() for n in numbers} - train
    others = [split for split in splits if split != config.data.train_split]
    captions = {text_of(t) for record in _records(config.data.data_dir, config.data.dataset, others)
                for t in record["descriptions"]}
    return species, captions


def extract_extra_features(config: ml_collections.ConfigDict, frozen: FrozenNetworks) -> FeatureCache:
    """Pairs from the `data.extra_datasets` (e.g. the PokeAPI builds: several flavour texts per species, other
    sprite styles, species no Kaggle split has), all their splits, leaving out every species `data.dataset` holds
    out and its held-out captions (`held_out`).

    Each species' sprites (and their mirror images) and distinct captions are pooled over the extra datasets;
    every caption is paired with one of its species' sprites drawn at random (seeded by `config.seed`)."""
    from pikagen_jax.data import augment
    from pikagen_jax.data.pipeline import dataset_metadata, text_of, tokenizer_from_config

    held_species, held_captions = held_out(config)
    sprites: dict[tuple[str, int], np.ndarray] = {}
    captions: dict[int, list[str]] = {}
    for name in extra_dataset_names(config):
        splits = dataset_metadata(config.data.data_dir, name)["splits"]["species"]
        for record in _records(config.data.data_dir, name, splits):
            number = int(record["national_number"])
            if number in held_species:
                continue
            texts = captions.setdefault(number, [])
            texts += [t for t in map(text_of, record["descriptions"]) if t not in texts and t not in held_captions]
            if (name, number) not in sprites:
                sprites[(name, number)] = augment.resize_to_float(augment.decode_png(record["image"]),
                                                                  config.data.image_size)
    if not sprites:
        raise ValueError(f"data.extra_datasets={config.data.extra_datasets!r} holds no species that "
                         f"{config.data.dataset!r} does not hold out")
    batch = int(config.train.batch_size)
    species = np.asarray([number for _, number in sprites for _ in range(2)], np.int32)
    pixels = np.stack([view for image in sprites.values() for view in (image, image[:, ::-1])]).astype(np.float32)
    logging.info("alignment features: %d extra sprites (with mirror images) and %d captions of %d species from %s",
                 len(pixels), sum(map(len, captions.values())), len(captions), ", ".join(extra_dataset_names(config)))
    image_features = frozen.images(pixels, batch, desc="alignment features of the extra sprites (frozen Inception)")
    pictured = set(species.tolist())
    pairs = [(number, text) for number, texts in sorted(captions.items()) if number in pictured for text in texts]
    ids, mask = tokenizer_from_config(config)([text for _, text in pairs])
    text_features = frozen.texts(ids, mask, batch)
    rng = np.random.default_rng(config.seed)
    rows_of = {int(n): np.nonzero(species == n)[0] for n in np.unique(species)}
    chosen = np.asarray([rng.choice(rows_of[number]) for number, _ in pairs])
    return FeatureCache(image_features[chosen], text_features, species[chosen])


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
    if extra_dataset_names(config):
        extra = extract_extra_features(config, frozen)
        cache = FeatureCache(*(np.concatenate([getattr(cache, f), getattr(extra, f)])
                               for f in ("image", "text", "species")))
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
