"""Hinge losses and MA-GP of the seed-002 cGAN: hand values, analytic and finite-difference gradients, NaN safety,
and a discriminator step through spectral norm under `nnx.value_and_grad`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pikagen_jax.losses.gan import d_hinge_loss, g_hinge_loss, ma_gp, mismatched_sentences
from pikagen_jax.models.gan import Discriminator, Generator


@pytest.fixture(autouse=True)
def fast_cpu_prng():
    """The non-partitionable threefry compiles several times faster on CPU; only the random streams change."""
    with jax.threefry_partitionable(False):
        yield


def test_d_hinge_loss_hand_values():
    real = jnp.array([2.0, 0.5, -1.0])  # relu(1 - x): 0, 0.5, 2      -> mean 2.5/3
    fake = jnp.array([-2.0, 0.0, 1.0])  # relu(1 + x): 0, 1, 2        -> mean 1
    mismatch = jnp.array([-0.5, -3.0, 3.0])  # relu(1 + x): 0.5, 0, 4 -> mean 1.5
    loss, parts = d_hinge_loss(real, fake, mismatch)
    assert float(parts["d_real"]) == pytest.approx(2.5 / 3)
    assert float(parts["d_fake"]) == pytest.approx(1.0)
    assert float(parts["d_mismatch"]) == pytest.approx(1.5)
    assert float(loss) == pytest.approx(2.5 / 3 + 0.5 * 1.0 + 0.5 * 1.5)
    assert float(parts["d_hinge"]) == float(loss)
    perfect, _ = d_hinge_loss(jnp.full((3,), 1.0), jnp.full((3,), -1.0), jnp.full((3,), -5.0))
    assert float(perfect) == 0.0


def test_g_hinge_loss_and_dtype():
    loss, parts = g_hinge_loss(jnp.array([1.0, -3.0, 0.5], dtype=jnp.bfloat16))
    assert loss.dtype == jnp.float32 and float(loss) == pytest.approx(0.5)
    assert float(parts["g_adv"]) == pytest.approx(0.5)


def test_mismatched_sentences_rolls_the_batch():
    sentence = jnp.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(mismatched_sentences(sentence), sentence[jnp.array([3, 0, 1, 2])])
    with pytest.raises(ValueError, match="at least 2"):
        mismatched_sentences(sentence[:1])


# --------------------------------------------------------------------------------------------------- MA-GP


def test_ma_gp_linear_discriminator_hand_computation():
    """D(x, s) = <a, x_b> + <c, s_b>: the gradient is (a, c) for every example."""
    a = jax.random.normal(jax.random.key(0), (4, 4, 3))
    c = jax.random.normal(jax.random.key(1), (5,))
    images, sentence = jnp.ones((3, 4, 4, 3)), jnp.ones((3, 5))
    d_apply = lambda x, s: jnp.einsum("bhwc,hwc->b", x, a) + s @ c  # noqa: E731
    penalty, parts = ma_gp(d_apply, images, sentence, weight=1.5, power=6)
    norm = np.sqrt(np.sum(np.square(a)) + np.sum(np.square(c)))
    assert float(penalty) == pytest.approx(1.5 * norm**6, rel=1e-5)
    assert float(parts["ma_gp"]) == float(penalty)
    assert float(parts["ma_gp_grad_norm"]) == pytest.approx(norm, rel=1e-5)
    # Other powers follow the same formula.
    assert float(ma_gp(d_apply, images, sentence, weight=2.0, power=2)[0]) == pytest.approx(2 * norm**2, rel=1e-5)
    assert float(ma_gp(d_apply, images, sentence, weight=1.0, power=3)[0]) == pytest.approx(norm**3, rel=1e-5)
    # Without the text term only the image gradient a counts.
    image_only = ma_gp(d_apply, images, sentence, weight=1.5, power=6, include_text=False)[0]
    assert float(image_only) == pytest.approx(1.5 * float(np.sum(np.square(a))) ** 3, rel=1e-5)


def test_ma_gp_per_example_gradients():
    """D(x, s) = Σ x² + Σ s³ per example: gradient (2x, 3s²), a different norm for each example."""
    images = jax.random.normal(jax.random.key(0), (3, 2, 2, 3))
    sentence = jax.random.normal(jax.random.key(1), (3, 4))
    d_apply = lambda x, s: jnp.sum(x**2, axis=(1, 2, 3)) + jnp.sum(s**3, axis=1)  # noqa: E731
    penalty, _ = ma_gp(d_apply, images, sentence, weight=1.5, power=6)
    x, s = np.asarray(images, np.float64), np.asarray(sentence, np.float64)
    norms = np.sqrt(np.sum((2 * x) ** 2, axis=(1, 2, 3)) + np.sum((3 * s**2) ** 2, axis=1))
    assert float(penalty) == pytest.approx(1.5 * np.mean(norms**6), rel=1e-5)


def test_ma_gp_is_finite_when_the_gradient_is_zero():
    images, sentence = jnp.ones((2, 4, 4, 3)), jnp.ones((2, 5))

    def penalty(w, power):  # D(x, s) = w · Σx + w0: zero input gradient at w = 0
        params = {"w": w, "w0": jnp.float32(0.3)}
        d_apply = lambda x, s: params["w"] * jnp.sum(x, axis=(1, 2, 3)) + params["w0"]  # noqa: E731
        return ma_gp(d_apply, images, sentence, power=power)[0]

    for power in (6.0, 3.0, 1.0):
        value, grad = jax.value_and_grad(penalty)(jnp.float32(0.0), power)
        assert np.isfinite(float(value)) and np.isfinite(float(grad)), power
        assert float(value) == pytest.approx(0.0, abs=1e-5)
    # A discriminator that ignores its inputs entirely.
    ignore = lambda w: ma_gp(lambda x, s: jnp.broadcast_to(w, (2,)), images, sentence)[0]  # noqa: E731
    value, grad = jax.value_and_grad(ignore)(jnp.float32(1.0))
    assert float(value) == 0.0 and float(grad) == 0.0


def test_ma_gp_rejects_bad_d_output():
    with pytest.raises(ValueError, match="one logit per example"):
        ma_gp(lambda x, s: jnp.sum(x, axis=(1, 2)), jnp.ones((2, 4, 4, 3)), jnp.ones((2, 5)))


def test_ma_gp_matches_central_finite_differences_on_conv_discriminator():
    """The spectral-norm conv discriminator (frozen u) vs float64 central differences of the same network."""
    disc = Discriminator(8, sentence_dim=4, base_channels=4, max_channels=8, rngs=nnx.Rngs(0))
    disc.eval()
    images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1, maxval=1)
    sentence = jax.random.normal(jax.random.key(2), (2, 4))
    d_apply = lambda x, s: disc(x, s, compute_dtype=jnp.float32)  # noqa: E731
    penalty, parts = ma_gp(d_apply, images, sentence, weight=1.5, power=6)

    n_image = 8 * 8 * 3
    h = 1e-5
    with jax.enable_x64(True):
        d64 = jax.jit(lambda x, s: disc(x, s, compute_dtype=jnp.float64))
        flat = np.concatenate([np.asarray(images, np.float64).reshape(2, -1),
                               np.asarray(sentence, np.float64)], axis=1)
        norms = []
        for b in range(2):
            steps = np.eye(flat.shape[1]) * h
            plus, minus = flat[b] + steps, flat[b] - steps
            evaluate = lambda v: np.asarray(d64(jnp.asarray(v[:, :n_image].reshape(-1, 8, 8, 3)),  # noqa: E731
                                                jnp.asarray(v[:, n_image:])))
            grad = (evaluate(plus) - evaluate(minus)) / (2 * h)
            norms.append(np.linalg.norm(grad))
    norms = np.array(norms)
    assert norms.min() > 1e-3  # a non-trivial gradient
    assert float(parts["ma_gp_grad_norm"]) == pytest.approx(norms.mean(), rel=1e-4)
    assert float(penalty) == pytest.approx(1.5 * np.mean(norms**6), rel=1e-3)


# ------------------------------------------------------------- a discriminator step through spectral norm


def test_discriminator_loss_gradients_through_spectral_norm():
    """Full D objective under nnx.jit + nnx.value_and_grad with D and G passed as arguments: finite, non-zero
    gradients for every D parameter, spectral-norm state updated, MA-GP differentiated (second order)."""
    gen = Generator(8, z_dim=8, base_channels=32, max_channels=32, num_groups=8, rngs=nnx.Rngs(0))
    disc = Discriminator(8, base_channels=8, max_channels=16, dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
    real = jax.random.uniform(jax.random.key(2), (3, 8, 8, 3), minval=-1, maxval=1)
    sentence = jax.random.normal(jax.random.key(3), (3, 256))
    tokens = jax.random.normal(jax.random.key(4), (3, 4, 256))
    mask = jnp.ones((3, 4))
    z = jax.random.normal(jax.random.key(5), (3, 8))

    def d_loss(disc, gen):
        fake = jax.lax.stop_gradient(gen(z, sentence, tokens, mask))
        hinge, parts = d_hinge_loss(disc(real, sentence), disc(fake, sentence),
                                    disc(real, mismatched_sentences(sentence)))
        gp, gp_parts = ma_gp(lambda x, s: disc(x, s, update_stats=False, compute_dtype=jnp.float32),
                             real, sentence)
        return hinge + gp, {**parts, **gp_parts}

    @nnx.jit
    def step(disc, gen):
        return nnx.value_and_grad(d_loss, has_aux=True)(disc, gen)

    u_before = np.asarray(disc.stem.u[...])
    (loss, parts), grads = step(disc, gen)
    assert np.isfinite(float(loss)) and float(parts["ma_gp"]) > 0
    assert not np.allclose(disc.stem.u[...], u_before)  # three training calls updated the power iteration
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(grads, nnx.Param))[0]
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for _, leaf in leaves)
    zero = [jax.tree_util.keystr(path) for path, leaf in leaves if not float(jnp.linalg.norm(leaf)) > 0]
    assert not zero, f"parameters without gradient: {zero}"

    # The MA-GP term alone has a gradient of its own (second-order through the discriminator).
    gp_only = nnx.jit(nnx.grad(lambda d: ma_gp(lambda x, s: d(x, s, update_stats=False, compute_dtype=jnp.float32),
                                       real, sentence)[0]))(disc)
    assert float(jnp.linalg.norm(gp_only.head_out.kernel[...])) > 0
