"""FID / KID / IS formulas against pytorch-fid and torch-fidelity, feature extraction and stats caching.

Each formula is checked against a numpy transcription of the reference tool's code (always) and against
the tool itself when it is installed (pytorch-fid==0.3.0, torch-fidelity==0.4.0).
"""

from __future__ import annotations

import importlib.util
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

from pikagen_jax.metrics.fid import (cached_reference_stats, extract_features, feature_statistics,
                                     fid_from_features, frechet_distance, inception_score,
                                     kernel_inception_distance, reference_stats_path)
from pikagen_jax.metrics.inception import InceptionV3
from pikagen_jax.metrics.inception_weights import inception_from_weights
from tests.tolerances import EPS64, INCEPTION_PATH, assert_within, max_abs, path_tolerance


def fid_tolerance(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """FID is a difference of traces (|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)), so its float64 error
    lives in units of those traces: the products, sqrtm (Schur) or eigensolvers (LAPACK through whichever BLAS
    kernels the CPU gets) are backward stable, accurate to d * eps64 * cond(S1 S2) relative to the traces."""
    condition = np.linalg.cond(sigma1 @ sigma2)
    assert condition < 1e8, f"test covariances too ill-conditioned for the bound: cond {condition:.3g}"
    return len(sigma1) * EPS64 * condition * (np.trace(sigma1) + np.trace(sigma2))


def kid_tolerance(a: np.ndarray, b: np.ndarray, subset_size: int) -> float:
    """KID is a difference of kernel means (MMD^2 = mean k_xx + mean k_yy - 2 mean k_xy), so its float64
    error lives in units of the largest kernel value K: each kernel value carries 3 (degree) x d terms of
    error, each of the four kernel sums subset_size^2 terms: 4 * (3 d + m^2) * eps64 * K."""
    largest = (max_abs(np.concatenate([a, b])) ** 2 + 1.0) ** 3  # (x.y / d + 1)^3 <= (max|x|^2 + 1)^3
    return 4 * (3 * a.shape[1] + subset_size ** 2) * EPS64 * largest


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def make_features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Correlated, non-negative features like pool3 activations (averages of ReLU outputs)."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(1000 + d).normal(0, 1 / np.sqrt(d), (d, d))
    return np.abs(rng.normal(shift, 1.0, (n, d)) @ mixing) + 0.1


# --- reference transcriptions -------------------------------------------------------------------------

def reference_fid(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid 0.3.0 `calculate_frechet_distance` (without the deprecated `disp` argument)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def reference_kid(f1, f2, subsets, subset_size, seed=2020):
    """torch-fidelity 0.4.0 `kid_features_to_metric` with its `kernel_poly` and `mmd2` (unbiased)."""
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = f1[rng.choice(len(f1), subset_size, replace=False)]
        y = f2[rng.choice(len(f2), subset_size, replace=False)]
        gamma = 1.0 / x.shape[1]
        k_xx, k_yy, k_xy = ((a @ b.T * gamma + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        m = len(x)
        kt_xx = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
        kt_yy = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
        mmds[i] = (kt_xx + kt_yy) / (m * (m - 1)) - 2 * k_xy.sum(axis=0).sum() / (m * m)
    return mmds.mean(), mmds.std()


def reference_is(logits, splits=10, seed=2020):
    """torch-fidelity 0.4.0 `isc_features_to_metric` in numpy (shuffle, softmax, mean exp(KL) per split)."""
    n = len(logits)
    logits = logits[np.random.RandomState(seed).permutation(n)]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    scores = []
    for i in range(splits):
        chunk = p[i * n // splits:(i + 1) * n // splits]
        q = chunk.mean(axis=0, keepdims=True)
        scores.append(np.exp((chunk * (np.log(chunk) - np.log(q))).sum(axis=1).mean()))
    return np.mean(scores), np.std(scores)


# --- FID ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,d", [(200, 64), (500, 256), pytest.param(2500, 2048, marks=pytest.mark.slow)])
def test_fid_matches_pytorch_fid(n, d):
    a, b = make_features(n, d, seed=1), make_features(n, d, seed=2, shift=0.3)
    ours = fid_from_features(a, b)
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    assert ours > 0
    tol = fid_tolerance(s1, s2)
    assert_within(ours, reference_fid(mu1, s1, mu2, s2), tol, "FID vs pytorch-fid's formula")
    if _has("pytorch_fid"):
        from pytorch_fid.fid_score import calculate_frechet_distance
        with warnings.catch_warnings():  # pytorch-fid still passes scipy's deprecated `disp`
            warnings.simplefilter("ignore", DeprecationWarning)
            tool = calculate_frechet_distance(mu1, s1, mu2, s2)
        assert_within(ours, tool, tol, "FID vs pytorch-fid")


def test_fid_known_values():
    a = make_features(300, 32, seed=3)
    assert abs(fid_from_features(a, a)) < 1e-8 * np.trace(np.cov(a, rowvar=False))
    shift = np.linspace(-1, 1, 32)
    sigma = np.cov(a, rowvar=False)
    assert_within(fid_from_features(a, a + shift), shift @ shift, fid_tolerance(sigma, sigma), "FID of a shift")
    mu, sigma = feature_statistics(a)
    np.testing.assert_allclose(mu, a.mean(0))
    np.testing.assert_allclose(sigma, np.cov(a, rowvar=False))


def test_fid_bad_inputs():
    a = make_features(50, 16, seed=4)
    with pytest.raises(ValueError, match="features_b has NaN/inf in 1 of 50 rows"):
        fid_from_features(a, np.where(np.arange(50)[:, None] == 7, np.nan, a))
    with pytest.raises(ValueError, match="feature dimensions differ: 16 vs 8"):
        fid_from_features(a, a[:, :8])
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_statistics(a[:1])
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- KID ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [64, 2048])
def test_kid_matches_torch_fidelity(d):
    a, b = make_features(300, d, seed=5), make_features(260, d, seed=6, shift=0.2)
    mean, std = kernel_inception_distance(a, b, subsets=12, subset_size=150)
    ref_mean, ref_std = reference_kid(a, b, subsets=12, subset_size=150)
    assert mean > 0 and std > 0
    tol = kid_tolerance(a, b, 150)  # absolute: the mean and std of MMD^2 come out of cancellation
    assert_within([mean, std], [ref_mean, ref_std], tol, "KID vs torch-fidelity's formula")
    if _has("torch_fidelity"):
        import torch
        from torch_fidelity.metric_kid import kid_features_to_metric
        tool = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=12,
                                      kid_subset_size=150, verbose=False)
        assert_within([mean, std], [tool["kernel_inception_distance_mean"], tool["kernel_inception_distance_std"]],
                      tol, "KID vs torch-fidelity")


def test_kid_is_near_zero_for_one_distribution_and_grows_with_shift():
    a, a2 = make_features(400, 32, seed=7), make_features(400, 32, seed=8)
    same, _ = kernel_inception_distance(a, a2, subsets=10, subset_size=200)
    shifted, _ = kernel_inception_distance(a, make_features(400, 32, seed=8, shift=0.5), subsets=10,
                                           subset_size=200)
    assert abs(same) < 0.1 * shifted


def test_kid_bad_inputs():
    a = make_features(120, 16, seed=9)
    with pytest.raises(ValueError, match=r"subset_size=1000 is larger than the number of samples \(120 and 120\)"
                                         r"; pass subset_size <= 120"):
        kernel_inception_distance(a, a)
    with pytest.raises(ValueError, match="features_a has NaN/inf"):
        kernel_inception_distance(np.full_like(a, np.nan), a, subset_size=50)
    with pytest.raises(ValueError, match="2-D"):
        kernel_inception_distance(a[0], a, subset_size=50)


# --- IS ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_model() -> InceptionV3:
    """FID Inception with random He-scaled weights and BN statistics (built from numpy arrays: eager NNX
    initialisation of 94 conv shapes takes ~30 s of kernel compilation on CPU)."""
    abstract = nnx.eval_shape(lambda: InceptionV3(num_classes=1008, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    weights = {}
    for path, leaf in nnx.to_flat_state(nnx.state(abstract)):
        shape, leaf_name = leaf.shape, str(path[-1])
        if path[0] == "fc":
            value = rng.normal(0, 0.4 if leaf_name == "kernel" else 0.5, shape)
        elif leaf_name == "kernel":
            value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:3])), shape)
        else:
            value = {"scale": lambda: rng.uniform(0.8, 1.2, shape), "bias": lambda: rng.normal(0, 0.1, shape),
                     "mean": lambda: rng.normal(0, 0.1, shape),
                     "var": lambda: rng.uniform(0.5, 1.5, shape)}[leaf_name]()
        weights["/".join(str(p) for p in path)] = value.astype(np.float32)
    return inception_from_weights(weights)


def test_inception_score_matches_torch_fidelity_on_random_weight_logits(random_model):
    images = np.random.default_rng(10).uniform(-1, 1, (20, 32, 32, 3)).astype(np.float32)
    _, logits = extract_features(random_model, images, batch_size=10, with_logits=True)
    assert logits.shape == (20, 1008) and logits.std() > 0.1
    # IS = exp(mean KL) >= 1 is no difference of large terms: a float64 relative tolerance fits (softmax and
    # KL over 1008 classes: ~1e3 eps64 = 2e-13; 1e-6 leaves room for any BLAS or libm).
    for splits in (1, 4):
        ours = inception_score(logits, splits=splits)
        np.testing.assert_allclose(ours, reference_is(logits, splits), rtol=1e-6)
        assert 1.0 <= ours[0] <= 1008
        if _has("torch_fidelity"):
            import torch
            from torch_fidelity.metric_isc import isc_features_to_metric
            tool = isc_features_to_metric(torch.from_numpy(logits), splits=splits)
            np.testing.assert_allclose(ours, [tool["inception_score_mean"], tool["inception_score_std"]],
                                       rtol=1e-6)


def test_inception_score_known_values():
    rng = np.random.default_rng(11)
    np.testing.assert_allclose(inception_score(np.zeros((30, 10)), splits=3), (1.0, 0.0), atol=1e-12)
    # Confident predictions spread evenly over k classes give IS = k.
    confident = np.eye(5)[np.arange(500) % 5] * 60.0 + rng.normal(0, 1e-3, (500, 5))
    np.testing.assert_allclose(inception_score(confident, splits=1, shuffle=False)[0], 5.0, rtol=1e-6)
    np.testing.assert_allclose(inception_score(confident)[0], reference_is(confident)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="10 splits needs at least 10 samples, got 4"):
        inception_score(np.zeros((4, 10)))
    with pytest.raises(ValueError, match="logits has NaN/inf"):
        inception_score(np.full((20, 10), np.inf))


# --- feature extraction ---------------------------------------------------------------------------------

def test_extract_features_batching_padding_and_input_forms(random_model):
    rng = np.random.default_rng(12)
    images_uint8 = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    images = images_uint8.astype(np.float32) / 127.5 - 1.0
    by_4 = extract_features(random_model, images, batch_size=4)  # batches 4 + 3 (padded to 4)
    assert by_4.dtype == np.float64 and by_4.shape == (7, 2048)
    by_8 = extract_features(random_model, iter(list(images)), batch_size=8)  # single images, one padded batch
    # Another batch size is another XLA program, free to block (and so sum) the convolutions differently:
    # the Inception path bound, in units of the largest feature (random weights, tests/test_inception.py).
    tol = path_tolerance(INCEPTION_PATH, max_abs(by_4))
    assert_within(by_8, by_4, tol, "features in batches of 8 vs 4")
    mixed_batches = [images_uint8[:2], images_uint8[2], images_uint8[3:]]
    assert_within(extract_features(random_model, mixed_batches, 4), by_4, tol, "features of uint8 batches")
    assert not np.allclose(by_4[0], by_4[1])  # different images, different features


def test_extract_features_bad_inputs(random_model):
    with pytest.raises(ValueError, match="image 1 is 40x40 but earlier images are 32x32"):
        extract_features(random_model, [np.zeros((32, 32, 3)), np.zeros((40, 40, 3))], batch_size=8)
    with pytest.raises(ValueError, match=r"have values in \[255, 255\]; pass float images in \[-1, 1\]"):
        extract_features(random_model, np.full((2, 32, 32, 3), 255.0), batch_size=8)
    with pytest.raises(ValueError, match="NaN/inf pixels"):
        extract_features(random_model, np.full((2, 32, 32, 3), np.nan), batch_size=8)
    with pytest.raises(ValueError, match=r"expected NHWC RGB"):
        extract_features(random_model, np.zeros((2, 32, 32, 4)), batch_size=8)
    with pytest.raises(ValueError, match="no images"):
        extract_features(random_model, [], batch_size=8)


# --- reference statistics cache -------------------------------------------------------------------------

def test_cached_reference_stats_computes_once_per_key(tmp_path):
    calls = []

    def compute(seed):
        def fn():
            calls.append(seed)
            return jnp.asarray(make_features(40, 8, seed=seed))
        return fn

    first = cached_reference_stats("kaggle/test/128px", compute(1), cache_dir=tmp_path)
    again = cached_reference_stats("kaggle/test/128px", compute(2), cache_dir=tmp_path)
    assert calls == [1]
    features = np.asarray(jnp.asarray(make_features(40, 8, seed=1)), np.float64)
    for stats in (first, again):
        np.testing.assert_array_equal(stats.features, features)
        np.testing.assert_allclose(stats.mu, features.mean(0))
        np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False))
    path = reference_stats_path("kaggle/test/128px", tmp_path)
    assert path.is_file() and path.parent == tmp_path / "reference_stats" and "kaggle__test__128px" in path.name
    other = cached_reference_stats("kaggle/val/128px", compute(3), cache_dir=tmp_path)
    assert calls == [1, 3] and not np.allclose(other.mu, first.mu)
    cached_reference_stats("kaggle/test/128px", compute(4), cache_dir=tmp_path, refresh=True)
    assert calls == [1, 3, 4]
    with pytest.raises(ValueError, match="NaN/inf"):
        cached_reference_stats("bad", lambda: np.full((4, 3), np.nan), cache_dir=tmp_path)
