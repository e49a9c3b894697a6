"""Evaluation command (`python -m pikagen_jax.evaluate`, any system) and the GAN's in-training FID/KID.

The fast tests evaluate an untrained smoke GAN checkpointed without training (evaluation does not care how
the weights were made) on the tiny PokeAPI subset (4 val / 4 test / 32 test_intra records, 64 px) with the
real fid-helper Inception weights; the end-to-end training run with in-training evaluation is `slow`.
"""

from __future__ import annotations

import json
import os
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from pikagen_jax import evaluate, plot_curves
from pikagen_jax.config_utils import load_config
from pikagen_jax.gan import evaluation as gan_evaluation
from pikagen_jax.metrics import split_eval
from pikagen_jax.metrics.fid import ReferenceStats
from tests.tolerances import EPS64

BATCH = 8  # one Inception / generator batch shape for the whole module: each compiles once


@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory):
    """A private cache dir (reference stats land here) that links the converted Inception weights."""
    from pikagen_jax.cache_dir import default_cache_dir
    from pikagen_jax.metrics.inception_weights import FID_HELPER_VERSION, converted_weights

    name = f"fid_inception_fid_helper_{FID_HELPER_VERSION}.safetensors"
    try:
        converted_weights("fid_helper")  # converts once into the user cache if needed
    except ValueError as error:
        pytest.skip(f"fid-helper Inception weights unavailable: {error}")
    cache = tmp_path_factory.mktemp("pikagen_cache")
    os.symlink(default_cache_dir() / name, cache / name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIKAGEN_JAX_CACHE", str(cache))
        yield cache


def _smoke_config(small_data, *overrides: str):
    return load_config("configs/gan.py:smoke", [f"data.data_dir={small_data['data_dir']}",
                                                f"data.dataset={small_data['pokeapi']}", *overrides])


@pytest.fixture(scope="module")
def gan_workdir(small_data, tmp_path_factory):
    """A work directory with an untrained smoke GAN saved at step 3 (latest) and as the best checkpoint."""
    from pikagen_jax.gan.state import GanState
    from pikagen_jax.training.checkpointing import Checkpointer

    config = gan_evaluation.with_eval_checkpointing(_smoke_config(small_data, "eval.every_steps=3"))
    state = GanState(config, rngs=nnx.Rngs(0))
    workdir = tmp_path_factory.mktemp("gan_eval_run")
    with Checkpointer.from_config(workdir, config) as checkpointer:
        checkpointer.save(3, state.checkpoint_items(), config=config, force=True)
        assert checkpointer.maybe_save_best(3, state.checkpoint_items(), {"val_fid": 100.0}, config=config)
    return workdir, config, state


# The CLIP test comes first: its checkpoint (conftest's `tiny_clip_dir`, saved by transformers) must import
# triton before anything imports TensorFlow. The CLIP score's parity with torchmetrics is in test_clip_vision.py.
def test_evaluate_run_with_clip_checkpoint(tiny_clip_dir, gan_workdir):
    report = evaluate.evaluate_run(gan_workdir[0], splits=["test"], clip_checkpoint=str(tiny_clip_dir),
                                   settings=evaluate.MetricSettings(kid_subsets=5, batch_size=BATCH), write=False)
    results = report["results"]["test"]
    assert 0.0 <= results["clip_score"] <= 100.0 and -1.0 <= results["clip_cosine"] <= 1.0
    assert np.isfinite(results["fid"])
    assert "| CLIP score ↑ |" in evaluate.markdown_report(report)


@pytest.fixture(scope="module")
def cli_report(gan_workdir):
    workdir, _, _ = gan_workdir
    rc = evaluate.main([f"--workdir={workdir}", "--splits=test", "--samples_per_caption=2",
                        f"--batch_size={BATCH}", "--kid_subsets=20", "--kid_subset_size=1000"])
    assert rc == 0
    return json.loads((workdir / "eval_3.json").read_text()), (workdir / "eval_3.md").read_text()


def test_cli_reports_fid_kid_and_unavailable_is(cli_report, gan_workdir, isolated_cache, small_data):
    report, markdown = cli_report
    assert report["system"] == "gan" and report["step"] == 3 and report["checkpoint"] == "latest"
    assert list(report["results"]) == ["test"] and report["samples_per_caption"] == 2
    results = report["results"]["test"]
    assert results["num_real"] == 4 and results["num_generated"] == 8
    assert np.isfinite(results["fid"]) and results["fid"] > 0
    kid = results["kid"]
    assert kid["subsets"] == 20 and kid["subset_size"] == 4  # clamped to the smaller set ...
    assert any("larger than the sets" in note for note in results["notes"])  # ... and said so
    assert np.isfinite(kid["mean"]) and 0 <= kid["std"] < 1.0
    assert kid["mean"] > 0.05  # an untrained generator is far from real sprites
    assert results["inception_score"] == evaluate.IS_UNAVAILABLE  # fid-helper weights: no head, no number
    assert results["clip_score"] == "n/a"
    assert "| FID ↓ |" in markdown and evaluate.IS_UNAVAILABLE in markdown and "20 subsets of 4" in markdown
    workdir = gan_workdir[0]
    assert _tensorboard_scalars(workdir)["eval/test/fid"] == pytest.approx(results["fid"], rel=1e-5)
    assert len(list((isolated_cache / "reference_stats").glob("pokeapi__test__64px*.npz"))) == 1  # cached reals
    config = gan_workdir[1]
    assert evaluate.default_eval_splits(config) == ["test_intra", "test"]  # intra-class first, when present
    assert evaluate.default_eval_splits(_configure(config, **{"data.dataset": small_data["kaggle"]})) == ["test"]


def test_best_checkpoint_and_same_seed_same_numbers(cli_report, gan_workdir):
    workdir, _, _ = gan_workdir
    report = evaluate.evaluate_run(workdir, splits=["test"], samples_per_caption=2, best=True,
                                   settings=evaluate.MetricSettings(kid_subsets=20, batch_size=BATCH), write=False)
    assert report["checkpoint"] == "best" and report["step"] == 3
    results = report["results"]["test"]
    # best == latest weights here and the noise seed is the same: identical metrics
    assert results["fid"] == pytest.approx(cli_report[0]["results"]["test"]["fid"], rel=1e-6)
    assert results["kid"] == pytest.approx(cli_report[0]["results"]["test"]["kid"], rel=1e-6)


def test_real_vs_real_floor(small_data, tmp_path, cli_report):
    config = _smoke_config(small_data)
    settings = evaluate.MetricSettings(kid_subsets=20, batch_size=BATCH)
    floor = evaluate.real_vs_real(config, "test", "val", settings=settings)["results"]["test vs val"]
    same = evaluate.real_vs_real(config, "test", "test", settings=settings)["results"]["test vs test"]
    assert floor["num_test"] == 4 and floor["num_val"] == 4 and floor["kid"]["subset_size"] == 4
    assert np.isfinite(floor["fid"]) and floor["fid"] > 1.0
    assert abs(same["fid"]) < 1e-2 < floor["fid"]  # a set against itself: zero up to sqrtm round-off
    generated = cli_report[0]["results"]["test"]
    assert floor["kid"]["mean"] < generated["kid"]["mean"]  # real test images are closer to real val ones
    rc = evaluate.main(["--real_vs_real=test,val", f"--data_dir={small_data['data_dir']}",
                        f"--dataset={small_data['pokeapi']}", "--image_size=64", f"--batch_size={BATCH}",
                        "--kid_subsets=20", f"--out_dir={tmp_path}"])
    assert rc == 0
    written = json.loads((tmp_path / "real_vs_real_test_val_64px.json").read_text())
    assert written["results"]["test vs val"]["fid"] == pytest.approx(floor["fid"], rel=1e-9)
    assert "test images" in (tmp_path / "real_vs_real_test_val_64px.md").read_text()


@pytest.mark.parametrize("metric", ["fid", "kid"])
def test_in_training_eval_fn(gan_workdir, metric):
    _, config, state = gan_workdir
    config = _configure(config, **{"eval.metric": metric, "eval.num_samples": 8, "checkpoint.best_metric": ""})
    config = gan_evaluation.with_eval_checkpointing(config)
    assert config.checkpoint.best_metric == f"val_{metric}" and config.checkpoint.best_mode == "min"
    eval_fn = gan_evaluation.make_eval_fn(config, state.text_encoder, state.ema_generator)
    first, again = eval_fn(2), eval_fn(4)
    expected = {"val_fid"} if metric == "fid" else {"val_kid", "val_kid_std"}
    assert set(first) == expected and all(np.isfinite(v) for v in first.values())
    assert first[f"val_{metric}"] > 0
    assert first == pytest.approx(again)  # same weights, fixed noise: the metric only moves with training


def _tensorboard_scalars(logdir: Path) -> dict[str, float]:
    """The last logged value of every scalar tag in `logdir`'s event files."""
    return {tag: points[max(points)] for tag, points in plot_curves.read_scalars(logdir).items()}


def _configure(config, **values):
    config = config.copy_and_resolve_references()
    for key, value in values.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return config


def test_eval_checkpointing_config_errors(gan_workdir):
    _, config, _ = gan_workdir
    with pytest.raises(ValueError, match="eval.metric must be one of"):
        gan_evaluation.with_eval_checkpointing(_configure(config, **{"eval.metric": "is"}))
    with pytest.raises(ValueError, match="not computed during training"):
        gan_evaluation.with_eval_checkpointing(_configure(config, **{"checkpoint.best_metric": "val_l1"}))
    with pytest.raises(ValueError, match="best_mode=min"):
        gan_evaluation.with_eval_checkpointing(_configure(config, **{"checkpoint.best_mode": "max"}))
    with pytest.raises(ValueError, match="num_samples must be >= 2"):
        gan_evaluation.with_eval_checkpointing(_configure(config, **{"eval.num_samples": 1}))


def test_generate_for_tokens_is_caption_major_padded_and_seeded():
    shapes = []

    def sample(ids, mask, z):  # image pixel = caption id / 100 (channel 0) and z[0] (channel 1)
        shapes.append(ids.shape)
        image = np.zeros((len(ids), 2, 2, 3), np.float32)
        image[..., 0] = ids[:, 0, None, None] / 100.0
        image[..., 1] = np.asarray(z)[:, 0, None, None]
        return image

    ids = np.arange(5, dtype=np.int32)[:, None].repeat(3, axis=1)
    mask = np.ones_like(ids)
    images = gan_evaluation.generate_for_tokens(sample, ids, mask, z_dim=4, samples_per_caption=3, seed=7,
                                                batch_size=4)
    assert images.shape == (15, 2, 2, 3) and set(shapes) == {(4, 3)}  # 4 fixed-size batches, last padded
    np.testing.assert_allclose(images[:, 0, 0, 0], np.repeat(np.arange(5), 3) / 100.0)
    assert len(np.unique(images[:, 0, 0, 1])) == 15  # different noise for every image
    same = gan_evaluation.generate_for_tokens(sample, ids, mask, z_dim=4, samples_per_caption=3, seed=7,
                                              batch_size=15)
    np.testing.assert_array_equal(images, same)  # batching does not change the images


def test_cli_errors(gan_workdir, tmp_path, capsys):
    workdir = gan_workdir[0]
    assert evaluate.main([f"--workdir={tmp_path / 'none'}"]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert evaluate.main([]) == 2 and "--workdir" in capsys.readouterr().err
    assert evaluate.main(["--real_vs_real=test"]) == 2 and "two different splits" in capsys.readouterr().err
    assert evaluate.main([f"--workdir={workdir}", "--kid_subset_size=1"]) == 2
    assert "kid_subset_size >= 2" in capsys.readouterr().err
    assert evaluate.main([f"--workdir={workdir}", "--samples_per_caption=0"]) == 2
    assert evaluate.main([f"--workdir={workdir}", "--splits=nope", f"--batch_size={BATCH}"]) == 2
    assert "'nope' is not in dataset" in capsys.readouterr().err
    assert evaluate.main([f"--workdir={workdir}", "--inception=/no/such.pth"]) == 2
    assert "not found" in capsys.readouterr().err


def _saved_run(workdir, config, state) -> Path:
    """Checkpoints `state` untrained at step 1 (evaluation does not care how the weights were made)."""
    from pikagen_jax.training.checkpointing import Checkpointer

    with Checkpointer.from_config(workdir, config) as checkpointer:
        checkpointer.save(1, state.checkpoint_items(), config=config, force=True)
    return workdir


def test_other_systems_evaluate_through_their_run_sampler(small_data, tmp_path, tiny_clip_dir):
    """L1 (conditional) and DCGAN (unconditional: no CLIP score) runs go through the same command."""
    from pikagen_jax.dcgan.state import DcganState, resolve_config
    from pikagen_jax.l1.state import L1State

    data = [f"data.data_dir={small_data['data_dir']}", f"data.dataset={small_data['pokeapi']}"]
    l1_config = load_config("configs/l1.py:smoke", data + ["data.captions.enriched=0.0",
                                                           "data.captions.original=1.0"])
    dcgan_config = resolve_config(load_config("configs/dcgan.py:smoke", data))
    settings = evaluate.MetricSettings(kid_subsets=5, batch_size=BATCH)
    for name, config, state, conditional in (
            ("l1", l1_config, L1State(l1_config, rngs=nnx.Rngs(0)), True),
            ("dcgan", dcgan_config, DcganState(dcgan_config, rngs=nnx.Rngs(0)), False)):
        workdir = _saved_run(tmp_path / name, config, state)
        report = evaluate.evaluate_run(workdir, splits=["test"], samples_per_caption=2, settings=settings,
                                       clip_checkpoint=str(tiny_clip_dir), write=False)
        results = report["results"]["test"]
        assert report["system"] == name and report["step"] == 1 and results["num_generated"] == 8
        assert np.isfinite(results["fid"]) and results["kid"]["mean"] > 0.0
        if conditional:
            assert 0.0 <= results["clip_score"] <= 100.0
        else:
            assert results["clip_score"] == evaluate.NOT_AVAILABLE
    with pytest.raises(ValueError, match="takes no option"):
        evaluate.evaluate_run(tmp_path / "l1", splits=["test"], settings=settings, write=False,
                              sampler_options={"guidance_scale": 3.0})


def test_bad_images_and_subset_sizes_are_clear_errors():
    rng = np.random.default_rng(0)
    features = rng.random((6, 16))
    reference = ReferenceStats(features.mean(0), np.cov(features, rowvar=False), features)
    with pytest.raises(ValueError, match="are 64x64: compare images of one resolution"):
        evaluate.evaluate_images(None, np.zeros((4, 32, 32, 3)), reference, reference_image_size=64)
    no_head = types.SimpleNamespace(has_classifier_head=False)  # NaN pixels are rejected before the network
    with pytest.raises(ValueError, match="NaN/inf pixels"):
        evaluate.evaluate_images(no_head, np.full((4, 64, 64, 3), np.nan), reference, reference_image_size=64)
    assert split_eval.resolve_kid_subset_size(50, 100, 80) == (50, None)
    size, note = split_eval.resolve_kid_subset_size(1000, 100, 80)
    assert size == 80 and "using 80" in note
    with pytest.raises(ValueError, match="at least 2 images"):
        split_eval.resolve_kid_subset_size(10, 1, 80)
    with pytest.raises(ValueError, match="NaN/inf"):
        evaluate.compare_features(np.full((6, 16), np.nan), reference)


def test_kid_on_whole_sets_reports_no_spread():
    """When the KID subsets are clamped to two equal-size sets, every subset is the whole set: the std is 0 by
    construction, so the result says so and reports print no '± 0.0000'."""
    rng = np.random.default_rng(0)
    real, generated = rng.random((12, 8)), rng.random((12, 8)) + 0.5
    reference = ReferenceStats(real.mean(0), np.cov(real, rowvar=False), real)
    settings = split_eval.MetricSettings(kid_subsets=5, kid_subset_size=1000)
    whole = split_eval.compare_features(generated, reference, settings)
    assert whole["kid"]["whole_sets"] and whole["kid"]["subset_size"] == 12 and whole["kid"]["std"] < 1e-12
    assert "no spread over subsets" in whole["notes"][0]
    assert split_eval.format_kid(whole["kid"]) == f"{whole['kid']['mean']:.4f} (whole set)"
    subsets = split_eval.compare_features(generated, reference, split_eval.MetricSettings(kid_subsets=5,
                                                                                           kid_subset_size=6))
    assert not subsets["kid"]["whole_sets"] and subsets["kid"]["std"] > 0
    assert split_eval.format_kid(subsets["kid"]) == f"{subsets['kid']['mean']:.4f} ± {subsets['kid']['std']:.4f}"
    more_generated = split_eval.compare_features(np.concatenate([generated, generated + 0.1]), reference, settings)
    assert not more_generated["kid"]["whole_sets"]  # 12 of 24 generated per subset: a real spread


@pytest.mark.slow  # a real smoke training run with two in-training evaluations (~2 min on 2 busy cores)
def test_training_keeps_best_checkpoint_by_val_fid(small_data, tmp_path):
    from pikagen_jax.gan.train import train_and_evaluate
    from pikagen_jax.training.checkpointing import Checkpointer

    config = _smoke_config(small_data, "eval.every_steps=2", "eval.num_samples=8")
    assert config.checkpoint.best_metric == ""  # filled in by the trainer
    train_and_evaluate(config, tmp_path)
    stored = Checkpointer(tmp_path, read_only=True).restore_config()
    assert stored["checkpoint"]["best_metric"] == "val_fid"
    best = Checkpointer(tmp_path, read_only=True, best_metric="val_fid")
    assert best.best_step() in (2, 4) and np.isfinite(best.best_value) and best.best_value > 0
    assert np.isfinite(_tensorboard_scalars(tmp_path)["val_fid"])  # logged by the loop
    assert (tmp_path / "best" / str(best.best_step()) / "ema_generator").is_dir()
    report = evaluate.evaluate_run(tmp_path, splits=["test"], best=True,
                                   settings=evaluate.MetricSettings(kid_subsets=5, batch_size=BATCH), write=False)
    assert report["step"] == best.best_step()


@pytest.mark.parametrize("n_a,n_b", [(40, 30), (300, 200)])  # rank-deficient and full-rank covariances
def test_fid_of_features_matches_the_sqrtm_formula(n_a, n_b):
    from pikagen_jax.metrics.fid import fid_from_features

    rng = np.random.default_rng(n_a)
    mixing = rng.normal(0, 0.2, (64, 64))
    a = np.abs(rng.normal(0, 1, (n_a, 64)) @ mixing)
    b = np.abs(rng.normal(0.3, 1, (n_b, 64)) @ mixing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns that singular covariances have no accurate root
        expected = fid_from_features(a, b)  # pytorch-fid's sqrtm route
    # FID is a difference of traces; the SVD route is backward stable, but sqrtm of a singular (rank-deficient)
    # product is accurate only to about sqrt(eps64) per eigenvalue: d * sqrt(eps64) in units of the traces.
    traces = np.trace(np.cov(a, rowvar=False)) + np.trace(np.cov(b, rowvar=False))
    assert abs(split_eval.fid_of_features(a, b) - expected) <= 64 * np.sqrt(EPS64) * traces
    # above the limit it is the same sqrtm computation: equal up to rounding
    assert split_eval.fid_of_features(a, b, low_rank_limit=10) == pytest.approx(expected, rel=1e-12)
    assert abs(split_eval.fid_of_features(a, a)) < 1e-9
