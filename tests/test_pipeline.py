"""Grain input pipeline: shapes and ranges, augmentation, caption sampling, determinism, resume."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from pikagen_jax.data import augment
from pikagen_jax.data.pipeline import CaptionPolicy, data_config, make_eval_loader, make_train_loader


def _config(small_data, dataset="pokeapi", batch_size=8, image_size=64, workers=0):
    cfg = data_config()
    cfg.data.data_dir = str(small_data["data_dir"])
    cfg.data.dataset = small_data[dataset]
    cfg.data.image_size = image_size
    cfg.data.worker_count = workers
    cfg.text.max_length = 32
    cfg.seed = 0
    cfg.train = ml_collections.ConfigDict({"batch_size": batch_size})
    return cfg


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_batches_shapes_ranges_and_white_background(small_data):
    cfg = _config(small_data, dataset="kaggle", image_size=64)
    batch = next(iter(make_train_loader(cfg)))
    assert batch["image"].shape == (8, 64, 64, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert np.allclose(batch["image"][:, 0, 0], 1.0, atol=1e-2)  # white corner
    assert batch["token_ids"].shape == (8, 32) and batch["attention_mask"].shape == (8, 32)
    assert (batch["token_ids"][:, 0] == 101).all()  # [CLS]
    assert set(np.unique(batch["attention_mask"])) <= {0, 1}


def test_loader_is_deterministic_and_resumable(small_data):
    cfg = _config(small_data)
    cfg.data.augment.hflip = True
    cfg.data.augment.color_jitter = True
    first = _take(iter(make_train_loader(cfg)), 4)
    second = _take(iter(make_train_loader(cfg)), 4)
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])

    it = iter(make_train_loader(cfg))
    _take(it, 2)
    state = it.get_state()
    expected = _take(it, 2)
    resumed = iter(make_train_loader(cfg))
    resumed.set_state(state)
    for a, b in zip(expected, _take(resumed, 2)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])

    other_seed = next(iter(make_train_loader(cfg, seed=1)))
    assert not np.array_equal(other_seed["national_number"], first[0]["national_number"])


def test_worker_processes_give_the_same_batches(small_data):
    cfg = _config(small_data, batch_size=4)
    serial = _take(iter(make_train_loader(cfg)), 3)
    cfg.data.worker_count = 1
    parallel = _take(iter(make_train_loader(cfg)), 3)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])


def test_eval_loader_is_ordered_single_pass_with_captions(small_data):
    cfg = _config(small_data, dataset="kaggle", batch_size=3)
    batches = list(make_eval_loader(cfg, "val"))
    assert sum(len(b["national_number"]) for b in batches) == 4  # last batch smaller, nothing dropped
    assert all(isinstance(c, str) and c for b in batches for c in b["caption"])
    again = list(make_eval_loader(cfg, "val"))
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]),
                                  np.concatenate([b["image"] for b in again]))


def test_caption_policy_sampling_frequencies():
    record = {"descriptions": [b"orig", b"p1", b"p2"], "enriched_descriptions": [b"orig rich", b"x", b"y"]}
    rng = np.random.default_rng(0)
    picks = [CaptionPolicy(0.8, 0.2, 0.0).choose(record, rng) for _ in range(4000)]
    assert abs(picks.count("orig") / 4000 - 0.8) < 0.03
    assert set(picks) == {"orig", "p1", "p2"}
    assert CaptionPolicy(0.0, 0.0, 1.0).choose(record, rng) == "orig rich"
    single = {"descriptions": [b"only"], "enriched_descriptions": [b"only rich"]}
    assert CaptionPolicy(0.0, 1.0, 0.0).choose(single, rng) == "only"  # no paraphrase: fall back
    with pytest.raises(ValueError, match="sum"):
        CaptionPolicy(0.5, 0.2, 0.0)


def test_augmentations_keep_white_background_and_change_sprite():
    from PIL import Image

    pixels = np.full((64, 64, 3), 255, np.uint8)
    pixels[20:44, 16:40] = (30, 120, 200)
    image = Image.fromarray(pixels)
    rng = np.random.default_rng(0)
    rotated = np.asarray(augment.fixed_rotation(image, 8, np.random.default_rng(1)))
    assert (rotated[0, 0] == 255).all()
    affine = np.asarray(augment.mild_affine(image, rng, 10.0, 0.05, (0.9, 1.1)))
    assert (affine[0, 0] == 255).all() and not np.array_equal(affine, pixels)
    as_float = augment.resize_to_float(image, 32)
    assert as_float.shape == (32, 32, 3) and np.isclose(as_float.max(), 1.0)
    jittered = augment.color_jitter_on_white(as_float, rng, 0.5, 0.5, 0.5)
    background = np.all(as_float > 0.96, axis=-1)
    assert (jittered[background] == 1.0).all()
    assert not np.allclose(jittered[~background], as_float[~background])
    flips = {augment.horizontal_flip(image, np.random.default_rng(s)).tobytes() == image.tobytes()
             for s in range(10)}
    assert flips == {True, False}
