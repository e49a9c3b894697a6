"""Text-image alignment: the InfoNCE loss, R-precision and colour agreement on constructed cases, the alignment
encoder's training split, a smoke run of configs/alignment.py and R-precision in `evaluate`."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from pikagen_jax.config_utils import load_config
from pikagen_jax.losses.alignment import info_nce_loss
from pikagen_jax.metrics.alignment import (
    COLOURS,
    alignment_report,
    colour_agreement,
    colour_histogram,
    colour_match,
    colour_name,
    colour_word_response,
    dominant_colour,
    named_colours,
    r_precision,
    text_influence,
)
from tests.launch_helpers import kaggle_overrides, launch
from tests.tolerances import assert_within, path_tolerance


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_info_nce_equals_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    image, text = _unit(rng.normal(size=(5, 7))), _unit(rng.normal(size=(5, 7)))
    loss, parts = info_nce_loss(jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32), np.log(10.0))
    logits = 10.0 * image @ text.T
    row = -np.mean([logits[i, i] - np.log(np.exp(logits[i]).sum()) for i in range(5)])
    col = -np.mean([logits[i, i] - np.log(np.exp(logits[:, i]).sum()) for i in range(5)])
    # float32: 7-term dot products scaled by 10, a 5-term log-sum-exp per row, means of 5
    assert_within(float(loss), (row + col) / 2, path_tolerance([7, 5, 5, 5], 10.0), "InfoNCE")
    assert float(parts["batch_top1"]) == np.mean(np.argmax(logits, axis=1) == np.arange(5))
    # pairs 0 and 1 of one species: neither is the other's negative
    groups = np.array([7, 7, 1, 2, 3])
    grouped, _ = info_nce_loss(jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32), np.log(10.0),
                               groups=jnp.asarray(groups))
    keep = (groups[:, None] != groups[None, :]) | np.eye(5, dtype=bool)
    row = -np.mean([logits[i, i] - np.log(np.exp(logits[i][keep[i]]).sum()) for i in range(5)])
    col = -np.mean([logits[i, i] - np.log(np.exp(logits[:, i][keep[:, i]]).sum()) for i in range(5)])
    assert_within(float(grouped), (row + col) / 2, path_tolerance([7, 5, 5, 5], 10.0), "InfoNCE with groups")
    assert float(grouped) < float(loss)  # fewer negatives
    perfect, _ = info_nce_loss(jnp.eye(4), jnp.eye(4), np.log(100.0))
    assert float(perfect) < 1e-6  # matching pairs far apart from the others: no loss
    with pytest.raises(ValueError, match="one shape"):
        info_nce_loss(jnp.ones((3, 4)), jnp.ones((3, 5)), 0.0)


def test_r_precision_is_exact_on_constructed_cases():
    rng = np.random.default_rng(1)
    text = _unit(rng.normal(size=(150, 32)))
    same = r_precision(text, text, candidates=100)
    assert same == {"r_precision_top1": 1.0, "r_precision_top5": 1.0, "candidates": 100, "chance_top1": 0.01}
    # random images: near chance (1 % top-1, 5 % top-5 among 100) with a fixed seed
    random = r_precision(_unit(rng.normal(size=(2000, 32))), text, caption_index=np.arange(2000) % 150, seed=3)
    assert 0.002 <= random["r_precision_top1"] <= 0.025 and 0.03 <= random["r_precision_top5"] <= 0.08
    # several samples per caption, the shuffled pairing, few captions (all used), distractors
    index = np.repeat(np.arange(10), 3)
    images = text[:10][index]
    assert r_precision(images, text[:10], caption_index=index)["r_precision_top1"] == 1.0
    assert r_precision(images, text[:10], caption_index=(index + 1) % 10)["r_precision_top1"] == 0.0
    assert r_precision(images, text[:10], caption_index=index)["candidates"] == 10
    with_distractors = r_precision(images, text[:10], caption_index=index, distractor_emb=text[10:])
    assert with_distractors["candidates"] == 100 and with_distractors["r_precision_top1"] == 1.0
    with pytest.raises(ValueError, match="caption_index"):
        r_precision(images, text[:5], caption_index=index)


def _sprite(rgb, size=16, fill=0.5) -> np.ndarray:
    """A white sprite with a centred square of one colour covering `fill` of the side, in [-1, 1]."""
    image = np.ones((size, size, 3))
    side = int(size * fill)
    start = (size - side) // 2
    image[start:start + side, start:start + side] = rgb
    return image * 2.0 - 1.0


COLOURS_RGB = {"red": (0.85, 0.1, 0.1), "orange": (0.95, 0.55, 0.1), "yellow": (0.95, 0.85, 0.1),
               "green": (0.2, 0.7, 0.2), "blue": (0.15, 0.3, 0.9), "purple": (0.55, 0.2, 0.75),
               "pink": (0.95, 0.45, 0.75), "brown": (0.45, 0.25, 0.1), "black": (0.05, 0.05, 0.05),
               "gray": (0.5, 0.5, 0.5)}


def test_colour_agreement_is_exact_on_synthetic_single_colour_sprites():
    for name, rgb in COLOURS_RGB.items():
        assert colour_name(np.asarray(rgb)) == name, name
        assert dominant_colour(_sprite(rgb)) == name
    assert dominant_colour(np.ones((16, 16, 3))) == "white"  # nothing but background
    sprites = np.stack([_sprite(rgb) for rgb in COLOURS_RGB.values()])
    right = [f"A {name} creature." for name in COLOURS_RGB]
    assert colour_agreement(sprites, right) == {"colour_agreement": 1.0, "colour_prompts": len(COLOURS_RGB)}
    wrong = [f"A {name} creature." for name in list(COLOURS_RGB)[1:] + list(COLOURS_RGB)[:1]]
    assert colour_agreement(sprites, wrong)["colour_agreement"] == 0.0
    half = right[:5] + ["A creature with no colour word."] * 5
    assert colour_agreement(sprites, half) == {"colour_agreement": 1.0, "colour_prompts": 5}
    assert colour_agreement(sprites[:1], ["no colour"]) == {"colour_agreement": None, "colour_prompts": 0}
    assert named_colours("Its GREY fur and crimson eyes; bluish (not counted)") == {"gray", "red"}
    report = alignment_report(None, sprites, sprites, right)  # no encoder: the colour scores only
    assert report == {"colour_agreement": 1.0, "colour_prompts": 10, "colour_agreement_real": 1.0,
                      "colour_match": 1.0, "colour_match_shuffled": 0.0}


def test_text_influence_separates_text_from_noise_exactly():
    rng = np.random.default_rng(0)
    by_caption = rng.uniform(-1, 1, (4, 1, 8, 8, 3))  # one image per caption, whatever the noise
    by_noise = rng.uniform(-1, 1, (1, 5, 8, 8, 3))  # one image per noise draw, whatever the caption
    deaf = text_influence(np.broadcast_to(by_noise, (4, 5, 8, 8, 3)))
    assert deaf["text_variance"] == 0.0 and deaf["text_influence"] == 0.0
    assert deaf["noise_variance"] == pytest.approx(by_noise[0].var(axis=0).mean())
    blind = text_influence(np.broadcast_to(by_caption, (4, 5, 8, 8, 3)))
    assert blind["noise_variance"] < 1e-30 and blind["text_influence"] > 1e6  # ignores the noise (var of equal values)
    mixed = text_influence(by_caption + 0.5 * by_noise)  # additive: each variance is its own part's
    assert mixed["text_variance"] == pytest.approx(by_caption[:, 0].var(axis=0).mean())
    assert mixed["noise_variance"] == pytest.approx((0.5 * by_noise[0]).var(axis=0).mean())
    with pytest.raises(ValueError, match="captions >= 2"):
        text_influence(by_caption)


def test_colour_word_response_is_exact_on_synthetic_sprites():
    names = ["red", "green", "blue"]
    sprites = {name: _sprite(COLOURS_RGB[name]) for name in names}
    obedient = np.stack([[sprites[name]] * 2 for name in names])  # [K=3, N=2]: always the named colour
    assert colour_word_response(obedient, names) == {
        "colour_word_accuracy": 1.0, "colour_word_chance": pytest.approx(1 / 3), "colour_word_named_share": 1.0,
        "colour_word_other_share": 0.0}
    deaf = np.stack([[sprites["red"], sprites["blue"]]] * 3)  # the words change nothing: every pair ties
    result = colour_word_response(deaf, names)
    assert result["colour_word_accuracy"] == pytest.approx(1 / 3)  # exactly chance
    assert result["colour_word_named_share"] == result["colour_word_other_share"] == pytest.approx(1 / 3)
    contrary = np.stack([[sprites[names[(k + 1) % 3]]] * 2 for k in range(3)])  # always the next colour
    assert colour_word_response(contrary, names)["colour_word_accuracy"] == 0.0
    with pytest.raises(ValueError, match="K = 3 >= 2 colours"):
        colour_word_response(obedient[:2], names)


def test_colour_match_is_exact_on_synthetic_two_colour_sprites():
    red, blue, green = COLOURS_RGB["red"], COLOURS_RGB["blue"], COLOURS_RGB["green"]

    def two_colour(top, bottom):  # a square whose top half is one colour and bottom half the other
        image = _sprite(top)
        image[8:12, 4:12] = np.asarray(bottom) * 2.0 - 1.0
        return image

    histogram = colour_histogram(two_colour(red, blue))
    assert histogram.sum() == pytest.approx(1.0)
    assert {c: h for c, h in zip(COLOURS, histogram) if h} == {"red": 0.5, "blue": 0.5}
    assert colour_histogram(np.ones((16, 16, 3)))[COLOURS.index("white")] == 1.0  # no foreground: all white
    real = np.stack([two_colour(red, blue), _sprite(green)])
    # two samples per caption: caption 0's are half right (red+green: 0.5) and all right (1.0); caption 1's are
    # all right (green, 1.0) and all wrong (blue, 0.0); against the other caption's sprite: 0.5, 0, 0, 0.5
    generated = np.stack([two_colour(red, green), two_colour(blue, red), _sprite(green), _sprite(blue)])
    assert colour_match(generated, real, samples_per_caption=2) == {
        "colour_match": pytest.approx((0.5 + 1.0 + 1.0 + 0.0) / 4), "colour_match_shuffled": pytest.approx(0.25)}
    with pytest.raises(ValueError, match="3 generated sprites for 2 real"):
        colour_match(generated[:3], real, samples_per_caption=2)


def test_colour_histogram_features_are_exact_on_synthetic_sprites():
    from pikagen_jax.models.alignment import colour_feature_dim, colour_histogram_features

    red, blue = COLOURS_RGB["red"], COLOURS_RGB["blue"]  # cells (3, 0, 0) and (0, 1, 3) of a 4-bin grid
    image = _sprite(red)  # 8x8 red square in a 16x16 white sprite: a quarter of the pixels
    image[8:12, 4:12] = np.asarray(blue) * 2.0 - 1.0  # half of the square blue
    features = np.asarray(colour_histogram_features(jnp.asarray(np.stack([image, np.ones((16, 16, 3))])), 4))
    assert features.shape == (2, colour_feature_dim(4)) == (2, 65)
    expected = np.zeros(65)
    expected[(3 * 4 + 0) * 4 + 0] = expected[(0 * 4 + 1) * 4 + 3] = 0.5
    expected[64] = 0.25  # the foreground's share of the image
    np.testing.assert_allclose(features[0], expected, atol=1e-7)
    np.testing.assert_array_equal(features[1], np.zeros(65))  # all background: no colour, no foreground
    assert colour_feature_dim(0) == 0


def test_colour_bins_widen_the_frozen_image_features_and_the_image_head():
    from flax import nnx

    from pikagen_jax.alignment.features import FrozenNetworks
    from pikagen_jax.models.alignment import colour_histogram_features
    from pikagen_jax.training.alignment_scorer import build_heads, image_feature_dim

    class Pool3Stub(nnx.Module):  # stands in for Inception-v3: a fixed 2048-wide feature per image
        def __call__(self, images):
            return jnp.broadcast_to(jnp.mean(images, axis=(1, 2, 3))[:, None], (images.shape[0], 2048))

    sprites = np.stack([_sprite(rgb) for rgb in COLOURS_RGB.values()]).astype(np.float32)
    plain = FrozenNetworks(Pool3Stub(), None).images(sprites, batch_size=4)
    coloured = FrozenNetworks(Pool3Stub(), None, colour_bins=4).images(sprites, batch_size=4)
    assert plain.shape == (10, 2048) and coloured.shape == (10, 2048 + 65)
    np.testing.assert_array_equal(coloured[:, :2048], plain)
    np.testing.assert_allclose(coloured[:, 2048:], colour_histogram_features(jnp.asarray(sprites), 4), atol=1e-7)
    config = load_config("configs/alignment.py:smoke", ["model.colour_bins=4"])
    assert image_feature_dim(config) == 2113
    assert build_heads(config, 32, nnx.Rngs(0)).image_head.norm.scale.value.shape == (2113,)


def test_alignment_encoder_trains_on_the_train_split_only(small_data):
    from pikagen_jax.alignment.train import validate_config
    from pikagen_jax.data.pipeline import dataset_metadata, make_train_loader

    config = load_config("configs/alignment.py:smoke", kaggle_overrides(small_data))
    validate_config(config)
    meta = dataset_metadata(small_data["data_dir"], small_data["kaggle"])
    species = meta["splits"]["species"]
    train, held_out = set(species["train"]), set(species["val"]) | set(species["test"])
    loader = iter(make_train_loader(config))
    seen = {int(n) for _ in range(3 * len(train) // config.train.batch_size + 1)
            for n in next(loader)["national_number"]}
    assert seen and seen <= train and not seen & held_out
    for bad in (["data.train_split=val"], ["data.augment.color_jitter=True"]):
        with pytest.raises(ValueError, match="train_split|color_jitter"):
            validate_config(load_config("configs/alignment.py:smoke", kaggle_overrides(small_data) + bad))


class _PixelFeatures:
    """A stand-in for the frozen networks: an image's 'feature' is its pixels, a caption's its token ids."""

    def images(self, images, batch_size, desc=None):
        return np.asarray(images, np.float32).reshape(len(images), -1)

    def texts(self, ids, mask, batch_size):
        return np.asarray(ids, np.float32)


def test_extra_datasets_add_pairs_of_training_species_only(small_data):
    from pikagen_jax.alignment.features import extract_extra_features
    from pikagen_jax.alignment.train import validate_config
    from pikagen_jax.data import augment
    from pikagen_jax.data.pipeline import dataset_metadata, open_split, text_of, tokenizer_from_config
    from pikagen_jax.errors import DatasetNotFoundError

    config = load_config("configs/alignment.py:smoke",
                         kaggle_overrides(small_data) + [f"data.extra_datasets={small_data['pokeapi']}"])
    validate_config(config)
    splits = dataset_metadata(small_data["data_dir"], small_data["kaggle"])["splits"]["species"]
    held_out = set(splits["val"]) | set(splits["test"])
    sprites, captions = {}, {}  # every sprite (and mirror image) and caption of the PokeAPI subset, by species
    for split in dataset_metadata(small_data["data_dir"], small_data["pokeapi"])["splits"]["species"]:
        source = open_split(small_data["data_dir"], small_data["pokeapi"], split)
        for i in range(len(source)):
            record = source[i]
            image = augment.resize_to_float(augment.decode_png(record["image"]), config.data.image_size)
            sprites.setdefault(int(record["national_number"]), []).extend([image, image[:, ::-1]])
            captions.setdefault(int(record["national_number"]), set()).update(map(text_of, record["descriptions"]))
    assert held_out & set(sprites), "the subsets must share held-out species, or this test proves nothing"

    cache = extract_extra_features(config, _PixelFeatures())
    kept = set(sprites) - held_out
    assert set(cache.species.tolist()) == kept  # every training species, no validation or test species
    tokenize = tokenizer_from_config(config)
    wanted = sorted(tuple(row) for n in kept for row in tokenize(sorted(captions[n]))[0].astype(np.float32))
    assert sorted(tuple(row) for row in cache.text) == wanted  # each distinct caption once
    for image, number in zip(cache.image, cache.species):  # each paired with a sprite of its own species
        assert any(np.array_equal(image, s.reshape(-1)) for s in sprites[int(number)])

    for bad, message in ((f"data.extra_datasets={small_data['kaggle']}", "training dataset"),
                         ("data.extra_datasets=pokeapi-sprites96_nowhere", "--sprite_folder=sprites96_nowhere")):
        with pytest.raises((ValueError, DatasetNotFoundError), match=message):
            validate_config(load_config("configs/alignment.py:smoke", kaggle_overrides(small_data) + [bad]))


@pytest.fixture(scope="module")
def alignment_run(small_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("alignment")
    log = launch("configs/alignment.py:smoke", workdir, small_data)
    return workdir, log


def test_smoke_alignment_run_checkpoints_heads_and_reports_the_real_ceiling(alignment_run):
    from pikagen_jax.models.alignment import colour_feature_dim
    from pikagen_jax.training.alignment_scorer import image_feature_dim, load_alignment_scorer

    workdir, log = alignment_run
    step_dir = workdir / "checkpoints" / "4"
    assert (step_dir / "heads").is_dir() and (step_dir / "opt").is_dir()
    assert not (step_dir / "inception").exists()  # frozen networks are rebuilt, not stored
    report = json.loads((workdir / "results.json").read_text())
    for split, result in report["splits"].items():
        assert 0.0 <= result["r_precision_top1"] <= result["r_precision_top5"] <= 1.0, split
    scorer = load_alignment_scorer(workdir)
    emb = scorer.embed_captions(["A small blue turtle.", "A fiery lizard."])
    assert emb.shape == (2, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert "val_r_precision_top1" in log
    # the frozen features were extracted once into the workdir, and the heads' batches came from them
    with np.load(workdir / "feature_cache.npz") as cache:
        width = image_feature_dim(scorer.config)  # pool3, and the colour histogram when model.colour_bins > 0
        assert cache["image"].shape[1] == width == 2048 + colour_feature_dim(scorer.config.model.colour_bins)
        assert len(cache["image"]) == len(cache["text"]) == len(cache["species"])
    assert report["feature_pairs"] == len(np.load(workdir / "feature_cache.npz")["species"])


def test_cached_batches_resume_exactly_and_reshuffle_each_epoch():
    from pikagen_jax.alignment.features import FeatureCache, cached_batches

    cache = FeatureCache(np.arange(10, dtype=np.float32)[:, None], np.zeros((10, 1), np.float32),
                         np.arange(10, dtype=np.int32))
    iterator = cached_batches(cache, batch_size=5, seed=0)
    epochs = [np.concatenate([next(iterator)["species"] for _ in range(2)]) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10)) and list(epochs[0]) != list(epochs[1])
    state = iterator.get_state()
    ahead = [next(iterator)["image_features"][:, 0] for _ in range(3)]
    again = cached_batches(cache, batch_size=5, seed=0)
    again.set_state(state)
    for want in ahead:
        np.testing.assert_array_equal(next(again)["image_features"][:, 0], want)
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        cached_batches(cache, batch_size=11, seed=0)


def test_evaluate_reports_alignment_or_says_how_to_train_it(alignment_run, small_data, tmp_path, capsys):
    from pikagen_jax import evaluate
    from pikagen_jax.gan.train import train_and_evaluate

    gan = tmp_path / "gan"
    train_and_evaluate(load_config("configs/gan.py:smoke", kaggle_overrides(small_data)), gan)
    settings = evaluate.MetricSettings(kid_subsets=5, batch_size=4)
    report = evaluate.evaluate_run(gan, splits=["test"], settings=settings, write=False,
                                   alignment_workdir=alignment_run[0])
    alignment = report["results"]["test"]["alignment"]
    for key in ("r_precision_top1", "r_precision_top1_real", "r_precision_top1_shuffled", "colour_prompts",
                "colour_match", "colour_match_shuffled", "text_influence", "real_variance", "colour_word_accuracy"):
        assert key in alignment, key
    assert alignment["text_variance"] > 0 and alignment["noise_variance"] > 0
    table = evaluate.markdown_report(report)
    assert "R-precision top-1" in table and "colour match" in table and "text influence" in table
    assert "colour words followed" in table and alignment["colour_word_chance"] == 1 / 8  # PHRASE_COLOURS
    missing = evaluate.evaluate_run(gan, splits=["test"], settings=settings, write=False,
                                    alignment_workdir=tmp_path / "no_encoder")
    assert "fid" in missing["results"]["test"] and "r_precision_top1" not in missing["results"]["test"]["alignment"]
    err = capsys.readouterr().err
    assert "no R-precision" in err and "python launch.py --config=configs/alignment.py" in err
