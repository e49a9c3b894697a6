"""The paired colour losses: exact sliced Wasserstein-1 on real sprites, blind to where colours are, gradients to the
generated image only, and wired into the GAN's generator loss by `loss.colour_weight`; the mean-chroma loss
(`loss.chroma_weight`): hand values, blind to greys, turning with the hue."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy.stats import wasserstein_distance

from pikagen_jax.losses.colour import (
    CHROMA_PLANE,
    COLOUR_DIRECTIONS,
    colour_distribution_loss,
    mean_chroma,
    mean_chroma_loss,
)
from tests.conftest import KAGGLE


def _sprites(numbers=(1, 4, 7, 25), size=32) -> np.ndarray:
    from data_prep.records import load_sprite_rgb
    from pikagen_jax.data.augment import resize_to_float

    if not (KAGGLE / "sprites").is_dir():
        pytest.skip(f"real sprites not found at {KAGGLE}")
    from PIL import Image
    return np.stack([resize_to_float(Image.fromarray(load_sprite_rgb(KAGGLE / "sprites" / f"{n:03d}.png")), size)
                     for n in numbers])


def test_colour_loss_equals_scipy_wasserstein_on_real_sprites():
    sprites = _sprites()
    generated, real = sprites, np.roll(sprites, 1, axis=0)  # Bulbasaur vs Pikachu, Charmander vs Bulbasaur, ...
    loss, parts = colour_distribution_loss(jnp.asarray(generated), jnp.asarray(real))
    pixels = lambda x: x.reshape(-1, 3).astype(np.float64) @ COLOUR_DIRECTIONS.astype(np.float64)  # noqa: E731
    expected = np.mean([wasserstein_distance(pixels(g)[:, d], pixels(r)[:, d])
                        for g, r in zip(generated, real) for d in range(COLOUR_DIRECTIONS.shape[1])])
    # float32 projections of values in [-1, 1] (|x| <= sqrt(3)) and a mean of 4 * 7 * 1024 terms: rtol 1e-5
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(parts["g_colour"]) == float(loss) and expected > 0.05


def test_colour_loss_ignores_where_the_colours_are():
    sprites = _sprites()
    flat = sprites.reshape(len(sprites), -1, 3)
    shuffled = np.stack([f[np.random.default_rng(i).permutation(len(f))] for i, f in enumerate(flat)])
    loss, _ = colour_distribution_loss(jnp.asarray(shuffled.reshape(sprites.shape)), jnp.asarray(sprites))
    assert float(loss) == 0.0  # same pixels, other places: the sorted projections are equal
    flipped = sprites[:, :, ::-1]
    assert float(colour_distribution_loss(jnp.asarray(flipped), jnp.asarray(sprites))[0]) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        colour_distribution_loss(jnp.asarray(sprites[:, :16]), jnp.asarray(sprites))


def test_colour_loss_gradient_reaches_the_generated_image_only_and_fits_a_real_sprites_colours():
    target = jnp.asarray(_sprites((6,)))  # Charizard
    start = jnp.asarray(_sprites((7,)))  # Squirtle
    g_gen, g_real = jax.grad(lambda g, r: colour_distribution_loss(g, r)[0], argnums=(0, 1))(start, target)
    assert float(jnp.abs(g_gen).sum()) > 0 and float(jnp.abs(g_real).sum()) == 0.0
    optimizer = optax.adam(0.02)
    image, opt_state = start, optimizer.init(start)
    initial = float(colour_distribution_loss(image, target)[0])

    @jax.jit
    def adam_step(image, opt_state):
        grad = jax.grad(lambda x: colour_distribution_loss(x, target)[0])(image)
        updates, opt_state = optimizer.update(grad, opt_state)
        return optax.apply_updates(image, updates), opt_state

    for _ in range(150):
        image, opt_state = adam_step(image, opt_state)
    assert float(colour_distribution_loss(image, target)[0]) < 0.2 * initial


def test_gan_step_adds_the_weighted_colour_loss_to_the_generator_loss(small_data):
    from pikagen_jax.config_utils import load_config
    from pikagen_jax.gan.state import GanState
    from pikagen_jax.gan.steps import gan_step

    def step_metrics(colour_weight, chroma_weight):
        config = load_config("configs/gan.py:smoke", [f"data.data_dir={small_data['data_dir']}",
                                                      f"data.dataset={small_data['pokeapi']}",
                                                      f"loss.colour_weight={colour_weight}",
                                                      f"loss.chroma_weight={chroma_weight}"])
        state = GanState(config, rngs=nnx.Rngs(0))
        rng = np.random.default_rng(0)
        batch = {"image": rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32),
                 "token_ids": rng.integers(1000, 5000, (4, 16)).astype(np.int32),
                 "attention_mask": np.ones((4, 16), np.int32)}
        return jax.tree.map(float, nnx.jit(lambda s, b: gan_step(s, b, 0, config))(state, batch))

    off, on = step_metrics(0.0, 0.0), step_metrics(2.5, 1.5)
    assert "g_colour" not in off and "g_chroma" not in off and on["g_colour"] > 0 and on["g_chroma"] > 0
    # same seed, same D update: the adversarial part is equal and the colour parts are added with their weights
    np.testing.assert_allclose(on["g_adv"], off["g_adv"], rtol=1e-5)
    np.testing.assert_allclose(on["g_loss"], on["g_adv"] + 2.5 * on["g_colour"] + 1.5 * on["g_chroma"], rtol=1e-5)


def test_mean_chroma_equals_a_float64_hand_computation_and_ignores_greys_and_places():
    sprites = _sprites()
    expected = (sprites.reshape(len(sprites), -1, 3).astype(np.float64) @ CHROMA_PLANE.astype(np.float64)).mean(1)
    # float32 products of values in [-1, 1] with unit directions, means of 1024 pixels: atol 1e-6
    np.testing.assert_allclose(np.asarray(mean_chroma(jnp.asarray(sprites))), expected, atol=1e-6)
    assert np.all(np.linalg.norm(expected, axis=1) > 0.02)  # coloured sprites have a hue
    greys = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)).repeat(3, axis=-1).astype(np.float32)
    np.testing.assert_allclose(np.asarray(mean_chroma(jnp.asarray(greys))), 0.0, atol=1e-6)
    # a red square on 1/4 of a white image: mean chroma = 1/4 of (red - white) on the plane, pure red in [-1, 1]
    image = np.ones((1, 8, 8, 3), np.float32)
    image[0, :4, :4] = [1.0, -1.0, -1.0]
    red = (np.array([1.0, -1.0, -1.0]) - 1.0) @ CHROMA_PLANE.astype(np.float64)
    np.testing.assert_allclose(np.asarray(mean_chroma(jnp.asarray(image)))[0], red / 4, atol=1e-6)
    moved = np.roll(image, 3, axis=(1, 2))
    np.testing.assert_allclose(float(mean_chroma_loss(jnp.asarray(moved), jnp.asarray(image))[0]), 0.0, atol=1e-7)
    loss, parts = mean_chroma_loss(jnp.asarray(sprites), jnp.asarray(np.roll(sprites, 1, axis=0)))
    np.testing.assert_allclose(float(loss), np.abs(expected - np.roll(expected, 1, axis=0)).mean(), atol=1e-6)
    assert float(parts["g_chroma"]) == float(loss)
    with pytest.raises(ValueError, match="same shape"):
        mean_chroma_loss(jnp.asarray(sprites[:, :16]), jnp.asarray(sprites))


def test_mean_chroma_turns_with_the_hue_and_its_loss_pulls_a_sprite_to_anothers_hue():
    from pikagen_jax.losses.colour_mismatch import turn_hue

    # colours near mid-grey, so a turn about the grey axis never clips: the mean chroma vector turns with it
    pale = (0.3 * _sprites((4,))).astype(np.float32)  # Charmander, faded
    turned = turn_hue(jnp.asarray(pale), jnp.asarray([90.0]))
    before, after = np.asarray(mean_chroma(jnp.asarray(pale)))[0], np.asarray(mean_chroma(turned))[0]
    np.testing.assert_allclose(np.linalg.norm(after), np.linalg.norm(before), rtol=1e-4)
    assert abs(np.dot(before, after)) < 1e-4 * np.dot(before, before)  # a quarter turn
    target = jnp.asarray(_sprites((7,)))  # Squirtle's blue
    start = jnp.asarray(_sprites((4,)))  # Charmander's orange
    g_gen, g_real = jax.grad(lambda g, r: mean_chroma_loss(g, r)[0], argnums=(0, 1))(start, target)
    assert float(jnp.abs(g_gen).sum()) > 0 and float(jnp.abs(g_real).sum()) == 0.0
    image = start
    for _ in range(100):  # plain gradient descent on the pixels
        image = image - 10.0 * jax.grad(lambda x: mean_chroma_loss(x, target)[0])(image)
    assert float(mean_chroma_loss(image, target)[0]) < 0.1 * float(mean_chroma_loss(start, target)[0])
