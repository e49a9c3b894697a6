"""Metrics of a generated image set against the real images of a dataset split: the split's records and
cached reference statistics in the FID Inception's pool3 features, and FID / KID of any feature set against
them. Shared by `pikagen_jax.evaluate` (after training) and the systems' in-training evaluation.

    inception = load_inception()                                   # FID Inception-v3 (fid-helper weights)
    data = load_split(config, "val")                               # real images + first captions
    reference = split_reference_stats(inception, config, "val", images=data.images)   # cached per data hash
    results = compare_features(extract_features(inception, generated, 50), reference)  # {'fid', 'kid', ...}
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np

from pikagen_jax.errors import UsageError

if TYPE_CHECKING:
    from pikagen_jax.metrics.fid import ReferenceStats
    from pikagen_jax.metrics.inception import InceptionV3

DEFAULT_SPLITS = ("test_intra", "test")  # seed 002's intra-class and novel-class test sets


@dataclasses.dataclass(frozen=True)
class MetricSettings:
    """How the metrics are estimated (defaults: torch-fidelity's; seed 002 used 100 KID subsets)."""

    kid_subsets: int = 100
    kid_subset_size: int = 1000
    kid_seed: int = 2020
    is_splits: int = 10
    batch_size: int = 50  # Inception (and generation) batch; the last batch is zero-padded

    def __post_init__(self):
        if self.kid_subsets < 1 or self.kid_subset_size < 2:
            raise UsageError(f"KID needs kid_subsets >= 1 and kid_subset_size >= 2, got {self.kid_subsets} "
                             f"and {self.kid_subset_size}")
        if self.batch_size < 1 or self.is_splits < 1:
            raise UsageError(f"batch_size and is_splits must be >= 1, got {self.batch_size}, {self.is_splits}")


@dataclasses.dataclass
class SplitData:
    """A split in record order: real images [N, S, S, 3] in [-1, 1], tokenized captions and the captions."""

    images: np.ndarray
    token_ids: np.ndarray
    attention_mask: np.ndarray
    captions: list[str]


# ----------------------------------------------------------------------------------------- real data

def load_split(config: ml_collections.ConfigDict, split: str, batch_size: int = 64) -> SplitData:
    """All records of `split` at `config.data.image_size`, each with its first (original) caption."""
    from pikagen_jax.data.pipeline import make_eval_loader

    batches = list(make_eval_loader(config, split, batch_size=batch_size))
    if not batches:
        raise UsageError(f"split {split!r} of dataset {config.data.dataset!r} has no records")
    join = lambda key: np.concatenate([np.asarray(b[key]) for b in batches])  # noqa: E731
    return SplitData(join("image").astype(np.float32), join("token_ids"), join("attention_mask"),
                     [str(c) for c in join("caption")])


def dataset_splits(config: ml_collections.ConfigDict) -> list[str]:
    """The splits written for `config.data.dataset` (empty splits are not written by the builder)."""
    import tensorflow_datasets as tfds

    from pikagen_jax.data.pipeline import dataset_dir

    builder = tfds.builder_from_directory(str(dataset_dir(config.data.data_dir, config.data.dataset)))
    return list(builder.info.splits)


def default_eval_splits(config: ml_collections.ConfigDict) -> list[str]:
    """`test_intra` (if the dataset has it) and `test`."""
    available = dataset_splits(config)
    splits = [s for s in DEFAULT_SPLITS if s in available]
    if not splits:
        raise UsageError(f"dataset {config.data.dataset!r} has no test split (it has {available}); pass "
                         f"--splits=<names>")
    return splits


def split_fingerprint(config: ml_collections.ConfigDict, split: str) -> str:
    """A short hash of the split's ArrayRecord shards: rebuilt or different data never reuses cached stats."""
    from pikagen_jax.data.pipeline import DATASET_NAME, dataset_dir

    shards = sorted(dataset_dir(config.data.data_dir, config.data.dataset).glob(f"{DATASET_NAME}-{split}.*"))
    if not shards:
        raise UsageError(f"split {split!r} is not in dataset {config.data.dataset!r} (it has "
                         f"{dataset_splits(config)})")
    digest = hashlib.sha1()
    for shard in shards:
        digest.update(shard.read_bytes())
    return digest.hexdigest()[:10]


def inception_tag(source: str) -> str:
    """A short name of the Inception weights for cache keys and reports."""
    return "fid_helper" if str(source) == "fid_helper" else Path(source).stem


def reference_key(config: ml_collections.ConfigDict, split: str, inception_source: str = "fid_helper") -> str:
    """Cache key of a split's real-image statistics: dataset/split/resolution/weights/data fingerprint."""
    return (f"{config.data.dataset}/{split}/{config.data.image_size}px/{inception_tag(inception_source)}/"
            f"{split_fingerprint(config, split)}")


def split_reference_stats(inception: InceptionV3, config: ml_collections.ConfigDict, split: str, *,
                          inception_source: str = "fid_helper", batch_size: int = 50,
                          cache_dir: str | Path | None = None, images: np.ndarray | None = None) -> ReferenceStats:
    """Cached `ReferenceStats` (mu, sigma, features) of the real images of `split` (computed once from
    `images`, or from the split itself when `images` is None)."""
    from pikagen_jax.metrics.fid import cached_reference_stats, extract_features

    def compute():
        real = images if images is not None else load_split(config, split).images
        return extract_features(inception, real, batch_size)

    return cached_reference_stats(reference_key(config, split, inception_source), compute, cache_dir=cache_dir)


def load_inception(source: str = "fid_helper") -> InceptionV3:
    """The FID Inception-v3 with `source` weights ('fid_helper', a pytorch-fid .pth or a .safetensors)."""
    from pikagen_jax.metrics.inception_weights import load_fid_inception

    return load_fid_inception(source)


# ----------------------------------------------------------------------------------------- metrics

def resolve_kid_subset_size(requested: int, num_a: int, num_b: int) -> tuple[int, str | None]:
    """The KID subset size actually used: `requested`, clamped to the smaller set (with a note saying so)."""
    available = min(num_a, num_b)
    if available < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {num_a} and {num_b}; use more captions "
                         f"or --samples_per_caption")
    if requested <= available:
        return requested, None
    note = f"KID subset size {requested} is larger than the sets ({num_a} and {num_b} images): using {available}"
    if num_a == num_b:
        note += "; every subset is then the whole of both sets, so KID has no spread over subsets (no ± std)"
    return available, note


def format_kid(kid: dict[str, Any], digits: int = 4) -> str:
    """'mean ± std', or 'mean (whole set)' when every subset was the whole of both sets (the std is then 0 by
    construction and says nothing about the estimate's spread)."""
    if kid.get("whole_sets"):
        return f"{kid['mean']:.{digits}f} (whole set)"
    return f"{kid['mean']:.{digits}f} ± {kid['std']:.{digits}f}"


def fid_of_features(features_a: np.ndarray, features_b: np.ndarray, low_rank_limit: int = 4096) -> float:
    """FID of two (N, D) feature sets, through the N x N route when the sets are small.

    Tr sqrt(S_a S_b) is the nuclear norm of Xa Xb^T / sqrt((Na-1)(Nb-1)) for the centred feature matrices
    (the non-zero eigenvalues of S_a S_b are those of M M^T, M = Xa Xb^T): exact, float64, and a
    (Na x Nb) SVD instead of `scipy.linalg.sqrtm` of a 2048 x 2048 product (tens of seconds on a small
    CPU, and inaccurate when the covariances are singular, i.e. N <= 2048). Larger sets go through
    `pikagen_jax.metrics.fid.frechet_distance` (pytorch-fid's formula).
    """
    from pikagen_jax.metrics.fid import feature_statistics, frechet_distance

    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"FID needs two (N, D) feature sets of one dimension, got shapes {a.shape} and {b.shape}")
    for name, array in (("generated", a), ("reference", b)):
        if not np.isfinite(array).all():
            raise ValueError(f"the {name} features have NaN/inf values: check that the images are finite and "
                             f"in [-1, 1]")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    if max(len(a), len(b)) > low_rank_limit:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    centred_a, centred_b = a - mu_a, b - mu_b
    trace_a = np.sum(centred_a ** 2) / (len(a) - 1)
    trace_b = np.sum(centred_b ** 2) / (len(b) - 1)
    cross = centred_a @ centred_b.T / np.sqrt((len(a) - 1) * (len(b) - 1))
    trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + trace_a + trace_b - 2.0 * trace_sqrt)


def compare_features(features: np.ndarray, reference: ReferenceStats, settings: MetricSettings = MetricSettings()
                     ) -> dict[str, Any]:
    """FID and KID of (N, 2048) features against a `ReferenceStats`; notes say what was adjusted."""
    from pikagen_jax.metrics.fid import kernel_inception_distance

    notes = []
    subset_size, note = resolve_kid_subset_size(settings.kid_subset_size, len(features), len(reference.features))
    if note:
        notes.append(note)
    fid = fid_of_features(features, reference.features)
    kid_mean, kid_std = kernel_inception_distance(features, reference.features, subsets=settings.kid_subsets,
                                                  subset_size=subset_size, seed=settings.kid_seed)
    return {"num_real": len(reference.features), "num_generated": len(features), "fid": fid,
            "kid": {"mean": kid_mean, "std": kid_std, "subsets": settings.kid_subsets, "subset_size": subset_size,
                    "whole_sets": subset_size == len(features) == len(reference.features)},
            "notes": notes}
