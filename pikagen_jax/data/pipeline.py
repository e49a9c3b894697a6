"""Grain input pipeline over the `pokemon_sprites` ArrayRecord shards.

Training batches are dicts of numpy arrays: `image` float32 [B, S, S, 3] in [-1, 1], `token_ids` and
`attention_mask` int32 [B, T], `national_number` int32 [B]; with `text.clip_max_length` > 0 (set by trainers
whose loss embeds captions with CLIP) also `clip_token_ids` / `clip_attention_mask` int32 [B, L], the same
caption in CLIP's BPE. Each host reads its own shard of the records
(`jax.process_index()`), and the iterator state can be saved and restored with checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import grain
import ml_collections
import numpy as np

from pikagen_jax.data import augment, colours
from pikagen_jax.data.tokenizers import Tokenizer, make_tokenizer
from pikagen_jax.errors import ConfigError, DatasetNotFoundError, SplitNotFoundError

DATASET_NAME = "pokemon_sprites"
VERSION = "1.0.0"


def dataset_dir(data_dir: str | Path, dataset: str) -> Path:
    """The folder of a built dataset config: <data_dir>/pokemon_sprites/<dataset>/1.0.0."""
    path = Path(data_dir).expanduser() / DATASET_NAME / dataset / VERSION
    if not (path / "dataset_info.json").is_file():
        raise DatasetNotFoundError(
            f"no built dataset at {path}: build it first, e.g. "
            f"`python -m data_prep.build --source={dataset.split('-')[0]} --data_dir={data_dir}` "
            "(see README, 'Build a dataset')")
    return path


def open_split(data_dir: str | Path, dataset: str, split: str):
    """A random-access source of raw records (images left as PNG bytes) for one split."""
    import tensorflow_datasets as tfds  # imported lazily: heavy

    builder = tfds.builder_from_directory(str(dataset_dir(data_dir, dataset)))
    if split not in builder.info.splits:
        raise SplitNotFoundError(f"split {split!r} is not in dataset {dataset!r} (it has "
                                 f"{list(builder.info.splits)}); empty splits are not written: see the build summary")
    return builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})


def dataset_metadata(data_dir: str | Path, dataset: str) -> dict[str, Any]:
    """The build metadata: split membership (species per split), source, skipped rows, warnings."""
    import json

    return json.loads((dataset_dir(data_dir, dataset) / "metadata.json").read_text())


def text_of(value) -> str:
    """A record's caption field (bytes from the shards, or str) as text."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class CaptionPolicy:
    """Probabilities of training on the original text, another flavor text (paraphrase) or the
    enriched original (seed 000: text + classification + types), and, independently of which, of putting
    a phrase naming the training sprite's main colours in front of it (`colours.colour_phrase`)."""

    original: float = 0.8
    paraphrase: float = 0.2
    enriched: float = 0.0
    colour_phrase: float = 0.0
    recolour: float = 0.0  # probability that a sprite given a phrase gets its hues turned by a random angle first

    def __post_init__(self):
        probs = (self.original, self.paraphrase, self.enriched)
        if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"caption probabilities (original, paraphrase, enriched) must be >= 0 and sum "
                             f"to 1, got {probs}")
        if not 0.0 <= self.colour_phrase <= 1.0:
            raise ValueError(f"data.captions.colour_phrase is a probability in [0, 1], got {self.colour_phrase}")
        if not 0.0 <= self.recolour <= 1.0:
            raise ValueError(f"data.captions.recolour is a probability in [0, 1], got {self.recolour}")
        if self.recolour > 0 and self.colour_phrase == 0:
            raise ValueError("data.captions.recolour recolours only sprites that get a colour phrase: set "
                             "data.captions.colour_phrase > 0 too (e.g. --config.data.captions.colour_phrase=0.5)")

    def with_colour_phrase(self, caption: str, pixels: np.ndarray,
                           rng: np.random.Generator) -> tuple[str, np.ndarray]:
        """(caption, pixels): with probability `colour_phrase` the caption gets a phrase in front (so that
        truncation to text.max_length keeps it) naming the colours of the augmented training sprite `pixels`
        ([-1, 1]), which with probability `recolour` first has its hues turned by a uniform random angle: then
        only the phrase, not the species, tells the sprite's colours."""
        if self.colour_phrase > 0 and rng.random() < self.colour_phrase:
            if self.recolour > 0 and rng.random() < self.recolour:
                pixels = colours.rotate_hue(pixels, rng.uniform(0.0, 360.0))
            return f"{colours.colour_phrase(pixels, rng)} {caption}", pixels
        return caption, pixels

    def choose(self, record: dict, rng: np.random.Generator) -> str:
        descriptions = [text_of(d) for d in record["descriptions"]]
        kind = rng.choice(3, p=[self.original, self.paraphrase, self.enriched])
        if kind == 1 and len(descriptions) > 1:
            return descriptions[1 + int(rng.integers(len(descriptions) - 1))]
        if kind == 2:
            return text_of(record["enriched_descriptions"][0])
        return descriptions[0]


class TrainTransform(grain.transforms.RandomMap):
    """Decode, augment, resize, sample a caption and tokenize one record (training)."""

    def __init__(self, image_size: int, tokenizer: Tokenizer, captions: CaptionPolicy,
                 aug: ml_collections.ConfigDict, clip_tokenizer: Tokenizer | None = None):
        self.image_size, self.tokenizer, self.captions, self.aug = image_size, tokenizer, captions, aug
        self.clip_tokenizer = clip_tokenizer

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        image = augment.decode_png(record["image"])
        if self.aug.rotations > 1:
            image = augment.fixed_rotation(image, self.aug.rotations, rng)
        if self.aug.hflip:
            image = augment.horizontal_flip(image, rng)
        if self.aug.affine:
            image = augment.mild_affine(image, rng, self.aug.affine_degrees, self.aug.affine_translate,
                                        tuple(self.aug.affine_scale))
        pixels = augment.resize_to_float(image, self.image_size)
        if self.aug.color_jitter:
            pixels = augment.color_jitter_on_white(pixels, rng, self.aug.brightness, self.aug.contrast,
                                                   self.aug.saturation)
        caption, pixels = self.captions.with_colour_phrase(self.captions.choose(record, rng), pixels, rng)
        ids, mask = self.tokenizer([caption])
        out = {"image": pixels, "token_ids": ids[0], "attention_mask": mask[0],
               "national_number": np.int32(record["national_number"])}
        if self.clip_tokenizer is not None:
            clip_ids, clip_mask = self.clip_tokenizer([caption])
            out.update(clip_token_ids=clip_ids[0], clip_attention_mask=clip_mask[0])
        return out


class EvalTransform(grain.transforms.Map):
    """Decode and resize one record and tokenize its original (or enriched) first caption."""

    def __init__(self, image_size: int, tokenizer: Tokenizer, enriched: bool = False):
        self.image_size, self.tokenizer, self.enriched = image_size, tokenizer, enriched

    def map(self, record: dict) -> dict:
        key = "enriched_descriptions" if self.enriched else "descriptions"
        caption = text_of(record[key][0])
        ids, mask = self.tokenizer([caption])
        return {"image": augment.resize_to_float(augment.decode_png(record["image"]), self.image_size),
                "token_ids": ids[0], "attention_mask": mask[0],
                "national_number": np.int32(record["national_number"]), "caption": caption}


def tokenizer_from_config(config: ml_collections.ConfigDict) -> Tokenizer:
    """The tokenizer named by config.text (kind, optional local path, max length)."""
    return make_tokenizer(config.text.tokenizer, config.text.tokenizer_path or None, config.text.max_length)


def clip_tokenizer_from_config(config: ml_collections.ConfigDict) -> Tokenizer | None:
    """CLIP's BPE tokenizer (open-clip-torch's vocabulary) padded to `text.clip_max_length`, or None when
    that is absent or 0: the second tokenization of each training caption, for CLIP losses."""
    length = int(config.text.get("clip_max_length", 0))
    return make_tokenizer("clip", None, length) if length > 0 else None


def data_shards(config: ml_collections.ConfigDict) -> tuple[int, list[int]]:
    """(shards per global batch, the shard indices this process reads).

    Each shard is one disjoint part of every global batch (Grain's process sharding). By default there is one
    shard per process; `data.num_shards` = k x processes gives each process k consecutive shards, so one process
    can reproduce exactly the batches a multi-process run sees (tests, debugging)."""
    import jax

    processes, index = jax.process_count(), jax.process_index()
    shards = int(config.data.get("num_shards", 0) or 0) or processes
    if shards % processes:
        raise ConfigError(f"data.num_shards={shards} must be a multiple of the {processes} processes")
    per_process = shards // processes
    return shards, list(range(index * per_process, (index + 1) * per_process))


class ShardedLoader:
    """Several Grain DataLoaders read as one: `iter()` gives their batches concatenated (`ShardedBatches`)."""

    def __init__(self, loaders: list[grain.DataLoader]):
        self.loaders = loaders

    def __iter__(self) -> "ShardedBatches":
        return ShardedBatches([iter(loader) for loader in self.loaders])


class ShardedBatches:
    """Batches of several data shards of this process, concatenated in shard order; the iterator state of
    each shard is saved and restored with checkpoints."""

    def __init__(self, iterators: list[Any]):
        self.iterators = iterators

    def __iter__(self) -> "ShardedBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(it) for it in self.iterators]
        return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}

    def get_state(self) -> dict[str, Any]:
        return {"shards": [json.loads(it.get_state().decode()) if isinstance(it.get_state(), bytes)
                           else it.get_state() for it in self.iterators]}

    def set_state(self, state: dict[str, Any]) -> None:
        if len(state.get("shards", [])) != len(self.iterators):
            raise ConfigError(f"the data-iterator state holds {len(state.get('shards', []))} shard(s), this run "
                              f"reads {len(self.iterators)}: resume with the run's own data.num_shards / processes")
        for it, shard_state in zip(self.iterators, state["shards"]):
            it.set_state(json.dumps(shard_state).encode() if isinstance(it.get_state(), bytes) else shard_state)


def _ensure_absl_flags_parsed() -> None:
    """Grain worker processes read absl flags; outside `absl.app.run` (notebooks, tests) mark the
    defaults as parsed so workers start instead of failing with UnparsedFlagAccessError."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_loader(config: ml_collections.ConfigDict, *, seed: int | None = None) -> grain.DataLoader:
    """Infinite, shuffled, augmented training loader of this process's data shard(s) (`data_shards`); each
    process's batch is its part of the global batch (global batch / processes).

    `iter(loader)` gives a DataLoaderIterator whose `get_state()` / `set_state()` resume it exactly.
    """
    data = config.data
    if data.worker_count > 0:
        _ensure_absl_flags_parsed()
    source = open_split(data.data_dir, data.dataset, data.train_split)
    transform = TrainTransform(data.image_size, tokenizer_from_config(config),
                               CaptionPolicy(**data.captions.to_dict()), data.augment,
                               clip_tokenizer=clip_tokenizer_from_config(config))
    shards, mine = data_shards(config)
    if config.train.batch_size % shards:
        raise ConfigError(f"train.batch_size={config.train.batch_size} is not divisible by the {shards} data shards "
                          f"(one per process): use a multiple of {shards}")

    def loader(shard: int) -> grain.DataLoader:
        sampler = grain.samplers.IndexSampler(
            num_records=len(source),
            shard_options=grain.sharding.ShardOptions(shard_index=shard, shard_count=shards, drop_remainder=True),
            shuffle=True, num_epochs=None, seed=int(config.seed if seed is None else seed))
        return grain.DataLoader(
            data_source=source, sampler=sampler,
            operations=[transform, grain.transforms.Batch(config.train.batch_size // shards, drop_remainder=True)],
            worker_count=int(data.worker_count))

    if len(mine) == 1:
        return loader(mine[0])
    return ShardedLoader([loader(shard) for shard in mine])


def make_eval_loader(config: ml_collections.ConfigDict, split: str, batch_size: int | None = None,
                     enriched: bool = False) -> grain.DataLoader:
    """One ordered pass over a split without augmentation; batches also carry `caption` strings.
    The last batch may be smaller."""
    data = config.data
    source = open_split(data.data_dir, data.dataset, split)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=False),
        shuffle=False, num_epochs=1, seed=0)
    return grain.DataLoader(
        data_source=source, sampler=sampler,
        operations=[EvalTransform(data.image_size, tokenizer_from_config(config), enriched),
                    grain.transforms.Batch(batch_size or config.train.batch_size, drop_remainder=False)],
        worker_count=0,
    )


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """Number of full global batches in one pass over the training split."""
    n = len(open_split(config.data.data_dir, config.data.dataset, config.data.train_split))
    return max(1, n // config.train.batch_size)


def data_config() -> ml_collections.ConfigDict:
    """The default `config.data` / `config.text` blocks shared by every system's config."""
    cfg = ml_collections.ConfigDict({
        "data": {
            "data_dir": "data/tfds",
            "dataset": "kaggle",
            "train_split": "train",
            "image_size": 128,
            "worker_count": 2,
            # parts each global batch is read in: 0 = one per process (Grain's process sharding); a multiple of
            # the process count lets one process read exactly what a multi-process run reads
            "num_shards": 0,
            # colour_phrase: probability of putting "It is mostly <the sprite's main colours>." in front of a
            # training caption (data/colours.py), so colour words in a prompt mean something to the model;
            # recolour: probability that such a sprite's hues are first turned by a random angle (then the phrase
            # is the only way to know its colours)
            "captions": {"original": 0.8, "paraphrase": 0.2, "enriched": 0.0, "colour_phrase": 0.0,
                         "recolour": 0.0},
            "augment": {
                "rotations": 0, "hflip": False,
                "affine": False, "affine_degrees": 8.0, "affine_translate": 0.05, "affine_scale": (0.9, 1.1),
                "color_jitter": False, "brightness": 0.15, "contrast": 0.15, "saturation": 0.15,
            },
        },
        "text": {"tokenizer": "wordpiece", "tokenizer_path": "", "max_length": 64},
    })
    return cfg
