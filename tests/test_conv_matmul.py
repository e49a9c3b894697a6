"""The im2col and space-to-depth convolutions equal XLA's convolution, in value and in first/second-order gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pikagen_jax.models.conv_matmul import (conv2d, conv2d_matmul, conv2d_space_to_depth, conv2d_stride1,
                                            explicit_padding)
from pikagen_jax.models.gan import Discriminator


def _lax(x, w, strides, padding):
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


CASES = [  # (spatial, kernel, strides, padding)
    (16, 4, (2, 2), 1), (15, 4, (2, 2), 1), (16, 3, (1, 1), 1), (9, 3, (2, 2), "SAME"), (10, 4, (2, 2), "SAME"),
    (8, 4, (1, 1), "VALID"), (11, 3, (3, 2), ((0, 2), (1, 0))), (7, 1, (1, 1), 0),
]


@pytest.mark.parametrize("form", [conv2d_matmul, conv2d_space_to_depth])
@pytest.mark.parametrize("size,kernel,strides,padding", CASES)
def test_conv2d_forms_equal_lax_conv(form, size, kernel, strides, padding):
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 5))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 5, 7))
    want = _lax(x, w, strides, padding)
    got = form(x, w, strides, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_second_order_gradients_match():
    """MA-GP differentiates the discriminator's input gradient: both forms must agree there too."""
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 4))
    w = jax.random.normal(jax.random.key(1), (4, 4, 4, 6)) * 0.3

    def penalty(impl):
        def fn(w, x):
            grad_x = jax.grad(lambda x: jnp.sum(jnp.tanh(conv2d(x, w, (2, 2), 1, impl=impl))))(x)
            return jnp.sum(grad_x ** 2)
        return jax.grad(fn, argnums=(0, 1))(w, x)

    want = penalty("xla")
    for impl in ("matmul", "space_to_depth"):
        for got, expected in zip(penalty(impl), want):
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel,padding", [(3, ((1, 1), (1, 1))), (2, ((0, 1), (1, 0))), (4, ((0, 0), (2, 3)))])
def test_conv2d_stride1_gradients_of_every_order_match_lax(kernel, padding):
    """The custom-VJP stride-1 conv: value, first- and second-order gradients equal lax.conv's."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 4)) * 0.3

    def penalty(conv):
        def fn(w, x):
            grad_x, grad_w = jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w))), argnums=(0, 1))(x, w)
            return jnp.sum(grad_x ** 2) + jnp.sum(jnp.sin(grad_w))
        return fn(w, x), jax.grad(fn, argnums=(0, 1))(w, x)

    ours = penalty(lambda x, w: conv2d_stride1(x, w, padding))
    reference = penalty(lambda x, w: _lax(x, w, (1, 1), padding))
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(conv2d_stride1(x, w, padding), _lax(x, w, (1, 1), padding), atol=1e-5)


def test_same_padding_follows_xla():
    assert explicit_padding("SAME", (4, 4), (2, 2), (9, 10)) == ((1, 2), (1, 1))
    assert explicit_padding("VALID", (3, 3), (1, 1), (5, 5)) == ((0, 0), (0, 0))
    with pytest.raises(ValueError, match="padding"):
        explicit_padding("FULL", (3, 3), (1, 1), (5, 5))
    with pytest.raises(ValueError, match="conv impl"):
        conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="cudnn")


def test_discriminator_conv_impls_agree():
    sentence = jax.random.normal(jax.random.key(2), (3, 16))
    images = jax.random.uniform(jax.random.key(3), (3, 16, 16, 3), minval=-1, maxval=1)
    outs = []
    for impl in ("xla", "auto", "matmul", "space_to_depth"):
        disc = Discriminator(16, sentence_dim=16, base_channels=8, max_channels=16, conv_impl=impl,
                             rngs=nnx.Rngs(0))
        outs.append(disc(images, sentence, update_stats=False))
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], atol=1e-5, rtol=1e-5)
