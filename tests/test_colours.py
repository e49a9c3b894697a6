"""The colour phrase a training caption can carry: which colours it names, how often it is added, and that the
training loader puts it in front of the caption of the sprite it describes."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from pikagen_jax.data.colours import PHRASE_TEMPLATES, colour_phrase, main_colours, rotate_hue
from pikagen_jax.data.pipeline import CaptionPolicy, data_config, make_train_loader, tokenizer_from_config

RGB = {"blue": (0.15, 0.3, 0.9), "orange": (0.95, 0.55, 0.1), "gray": (0.5, 0.5, 0.5), "green": (0.2, 0.7, 0.2)}


def _sprite(stripes: dict[str, int], size: int = 20) -> np.ndarray:
    """A white sprite with horizontal stripes of the given colours and heights (rows), in [-1, 1]."""
    image = np.ones((size, size, 3))
    row = 0
    for name, rows in stripes.items():
        image[row:row + rows, 2:size - 2] = RGB[name]
        row += rows
    return image * 2.0 - 1.0


def test_main_colours_name_the_largest_chromatic_shares_else_the_top_one():
    assert main_colours(_sprite({"blue": 10, "orange": 4, "gray": 2})) == ["blue", "orange"]  # 62 %, 25 %
    assert main_colours(_sprite({"gray": 10, "green": 6})) == ["green"]  # gray is not named beside a colour
    assert main_colours(_sprite({"blue": 10, "orange": 1, "green": 1})) == ["blue"]  # 8 % each: below the share
    assert main_colours(_sprite({"gray": 12})) == ["gray"]
    assert main_colours(np.ones((8, 8, 3))) == ["white"]  # no foreground


def test_colour_phrase_uses_every_template_and_names_the_colours():
    rng = np.random.default_rng(0)
    two = {colour_phrase(_sprite({"blue": 10, "orange": 5}), rng) for _ in range(60)}
    assert two == {template.format("blue", "orange") for template in PHRASE_TEMPLATES[2]}
    one = {colour_phrase(_sprite({"green": 10}), rng) for _ in range(60)}
    assert one == {template.format("green") for template in PHRASE_TEMPLATES[1]}


def test_caption_policy_adds_the_phrase_in_front_with_its_probability():
    sprite = _sprite({"blue": 12})
    never = CaptionPolicy(1.0, 0.0, 0.0)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    caption, pixels = never.with_colour_phrase("A turtle.", sprite, rng)
    assert caption == "A turtle." and pixels is sprite
    assert rng.bit_generator.state == state  # off: no random draw, so older runs' streams are unchanged
    always = CaptionPolicy(1.0, 0.0, 0.0, colour_phrase=1.0)
    caption, pixels = always.with_colour_phrase("A turtle.", sprite, rng)
    assert pixels is sprite and caption.endswith(" A turtle.") and "blue" in caption.removesuffix(" A turtle.")
    half = CaptionPolicy(1.0, 0.0, 0.0, colour_phrase=0.5)
    share = np.mean([half.with_colour_phrase("x", sprite, rng)[0] != "x" for _ in range(2000)])
    assert abs(share - 0.5) < 0.04  # binomial std 0.011
    with pytest.raises(ValueError, match="colour_phrase is a probability"):
        CaptionPolicy(1.0, 0.0, 0.0, colour_phrase=1.5)
    with pytest.raises(ValueError, match="set data.captions.colour_phrase > 0"):
        CaptionPolicy(1.0, 0.0, 0.0, recolour=0.5)


def test_rotate_hue_turns_colours_and_keeps_white_gray_black_and_shading():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1.0, 1.0, (16, 16, 3))
    np.testing.assert_allclose(rotate_hue(image, 0.0), image, atol=1e-6)  # float32 rounding of values in [-1, 1]
    np.testing.assert_allclose(rotate_hue(image, 360.0), image, atol=1e-6)
    np.testing.assert_allclose(rotate_hue(rotate_hue(image, 100.0), 260.0), image, atol=1e-5)
    primaries = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) * 2.0 - 1.0
    np.testing.assert_allclose(rotate_hue(primaries, 120.0), primaries[[1, 2, 0]], atol=1e-6)  # red -> green ...
    greys = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    np.testing.assert_allclose(rotate_hue(greys, 77.0), greys, atol=1e-6)
    rgb = (rotate_hue(image, 50.0).astype(np.float64) + 1.0) / 2.0  # saturation and value are kept
    before = (image + 1.0) / 2.0
    np.testing.assert_allclose(rgb.max(-1), before.max(-1), atol=1e-6)
    np.testing.assert_allclose(rgb.max(-1) - rgb.min(-1), before.max(-1) - before.min(-1), atol=1e-6)


def test_recoloured_sprite_is_named_by_its_new_colours():
    blue = _sprite({"blue": 12})
    policy = CaptionPolicy(1.0, 0.0, 0.0, colour_phrase=1.0, recolour=1.0)
    rng = np.random.default_rng(1)
    named = set()
    for _ in range(40):
        caption, pixels = policy.with_colour_phrase("A turtle.", blue, rng)
        assert not np.allclose(pixels, blue)
        assert np.all(pixels[:, :2] == 1.0)  # the white left columns (background) stay white
        names = main_colours(pixels)
        assert caption.removesuffix(" A turtle.") in {t.format(*names) for t in PHRASE_TEMPLATES[len(names)]}
        named.update(names)
    assert len(named) >= 5  # uniform angles reach most of the 7 hue names


def test_train_loader_puts_the_sprites_own_colours_in_front_of_its_caption(small_data):
    config = data_config()
    config.data.update(data_dir=str(small_data["data_dir"]), dataset=small_data["kaggle"], image_size=64,
                       worker_count=0)
    config.data.captions.update(colour_phrase=1.0, recolour=0.5)
    config.text.max_length = 24  # shorter than most captions: the phrase in front survives the truncation
    config.seed = 0
    config.train = ml_collections.ConfigDict({"batch_size": 4})
    batch = next(iter(make_train_loader(config)))
    tokenizer = tokenizer_from_config(config)
    plain = lambda text: "".join(text.lower().replace("é", "e").split())  # noqa: E731  (as the uncased tokenizer)
    for image, ids in zip(batch["image"], batch["token_ids"]):
        text, names = plain(tokenizer.decode(ids)), main_colours(image)
        assert any(text.startswith(plain(template.format(*names))) for template in PHRASE_TEMPLATES[len(names)]), \
            (text, names)
