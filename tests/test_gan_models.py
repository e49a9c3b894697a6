"""Spectral normalisation, generator and discriminator of the seed-002 cGAN: shapes, bounds, gradients, dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pikagen_jax.models.folded_attention import folded_attention, folded_attention_autodiff
from pikagen_jax.models.gan import (CrossAttention, Discriminator, Generator, GeneratorResBlock, TextAffine,
                                    _attention_heads_first, channels_at)
from pikagen_jax.models.spectral_norm import (SpectralNormConv, SpectralNormLinear, SpectralState,
                                              frozen_spectral_norm, spectral_normalize)
from tests.tolerances import assert_within, path_tolerance

B, T, SENT, TOK = 2, 5, 256, 256
TINY = dict(base_channels=32, max_channels=64, num_groups=8)  # 8 groups: >1 channel per group at width 32


@nnx.jit
def generate(gen, z, sentence, tokens, mask):
    return gen(z, sentence, tokens, mask)


@nnx.jit
def discriminate(disc, images, sentence):
    return disc(images, sentence)


@pytest.fixture(autouse=True)
def fast_cpu_prng():
    """The non-partitionable threefry compiles several times faster on CPU; only the random streams change."""
    with jax.threefry_partitionable(False):
        yield


def text_inputs(seed: int = 0, batch: int = B, length: int = T):
    k1, k2 = jax.random.split(jax.random.key(seed))
    mask = jnp.ones((batch, length)).at[:, -2:].set(0)  # last two tokens are padding
    return jax.random.normal(k1, (batch, SENT)), jax.random.normal(k2, (batch, length, TOK)), mask


def top_singular_value(kernel) -> float:
    kernel = np.asarray(kernel, np.float64)
    return float(np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0])


# ------------------------------------------------------------------------------------------ spectral norm


@pytest.mark.parametrize("make", [
    lambda: SpectralNormConv(5, 7, 3, padding=1, rngs=nnx.Rngs(0)),
    lambda: SpectralNormLinear(9, 6, rngs=nnx.Rngs(1)),
])
def test_spectral_norm_converges_to_unit_top_singular_value(make):
    layer = make()
    layer.kernel[...] = 3.0 * layer.kernel[...]
    assert top_singular_value(layer.kernel[...]) > 2.5  # the raw kernel is far from normalised

    for _ in range(100):  # one power iteration per training call
        layer.normalized_kernel(update_stats=True)
    assert abs(float(layer.sigma()) - top_singular_value(layer.kernel[...])) < 1e-3
    assert abs(top_singular_value(layer.normalized_kernel(update_stats=False)) - 1.0) < 1e-3


def test_spectral_state_is_updated_in_train_mode_only():
    layer = SpectralNormConv(3, 4, 3, rngs=nnx.Rngs(0))
    assert isinstance(layer.u, SpectralState) and isinstance(layer.u, nnx.BatchStat)
    assert "u" not in nnx.state(layer, nnx.Param)
    x = jax.random.normal(jax.random.key(1), (1, 6, 6, 3))
    u0 = np.asarray(layer.u[...])
    layer.eval()
    y1, y2 = layer(x), layer(x)
    np.testing.assert_array_equal(layer.u[...], u0)
    np.testing.assert_array_equal(y1, y2)
    layer(x, update_stats=True)  # per-call override
    u1 = np.asarray(layer.u[...])
    assert not np.allclose(u1, u0)
    layer.train()
    layer(x)
    assert not np.allclose(layer.u[...], u1)
    assert abs(np.linalg.norm(layer.u[...]) - 1.0) < 1e-5


def test_spectral_norm_conv_matches_torch():
    torch = pytest.importorskip("torch")
    layer = SpectralNormConv(4, 6, 3, strides=2, padding=1, rngs=nnx.Rngs(2))
    x = np.array(jax.random.normal(jax.random.key(3), (2, 8, 8, 4)))
    ref = torch.nn.utils.spectral_norm(torch.nn.Conv2d(4, 6, 3, stride=2, padding=1))
    with torch.no_grad():
        ref.weight_orig.copy_(torch.from_numpy(np.asarray(layer.kernel[...]).transpose(3, 2, 0, 1).copy()))
        ref.bias.copy_(torch.from_numpy(np.array(layer.bias[...])))
        ref.weight_u.copy_(torch.from_numpy(np.array(layer.u[...])))
    # Per call: a power iteration on W [6, 36] (W^T u 6 terms, |v| 36, W v 36, |u| 6, sigma = u.Wv 42), whose
    # error (accumulated over the 3 calls) scales W / sigma, then the 36-term conv (tests/tolerances.py); the
    # conv's own Σ|t| is the conv of |x| with |W / sigma| (+ |bias|).
    sigma_path = [126] * 3
    for _ in range(3):  # three training calls: one power iteration each
        ours = layer(jnp.asarray(x))
        with torch.no_grad():
            nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
            theirs = ref(nchw).numpy().transpose(0, 2, 3, 1)
            abs_sum = torch.nn.functional.conv2d(nchw.abs(), ref.weight.abs(), ref.bias.abs(), stride=2, padding=1)
        assert_within(ours, theirs, path_tolerance(sigma_path + [36], abs_sum.numpy().transpose(0, 2, 3, 1)),
                      "spectral-norm conv vs torch")
    assert_within(layer.u[...], ref.weight_u.numpy(), path_tolerance(sigma_path), "u")  # unit vector


def test_spectral_normalize_rejects_zero_iterations():
    with pytest.raises(ValueError, match="n_power_iterations"):
        spectral_normalize(jnp.ones((3, 2)), jnp.ones((2,)), n_power_iterations=0)


# -------------------------------------------------------------------------------------------- generator


def test_frozen_spectral_norm_runs_one_power_iteration_and_reuses_the_kernel():
    disc = Discriminator(16, sentence_dim=8, **{k: TINY[k] for k in ("base_channels", "max_channels")},
                         rngs=nnx.Rngs(0))
    u0 = np.asarray(disc.stem.u[...])
    stats0 = jax.tree.map(jnp.copy, nnx.state(disc, SpectralState))
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
    sentence = jax.random.normal(jax.random.key(2), (2, 8))
    with frozen_spectral_norm(disc, update_stats=True):
        u1 = np.asarray(disc.stem.u[...])
        first = disc(images, sentence)  # training mode, but the stored u must not move again
        second = disc(images, sentence)
        np.testing.assert_array_equal(np.asarray(disc.stem.u[...]), u1)
    assert not np.allclose(u0, u1)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    nnx.update(disc, stats0)
    expected = disc(images, sentence)  # one ordinary training-mode call: one iteration from u0
    np.testing.assert_allclose(np.asarray(first), np.asarray(expected), rtol=1e-6, atol=1e-6)
    assert not np.allclose(np.asarray(disc(images, sentence)), np.asarray(first))  # block closed: iterates again


def test_heads_first_attention_equals_dot_product_attention_with_gradients():
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, 7, 3, 5))
    k, v = jax.random.normal(keys[1], (2, 4, 3, 5)), jax.random.normal(keys[2], (2, 4, 3, 5))
    keep = jnp.asarray([[1, 1, 0, 1], [0, 0, 0, 0]]) > 0  # the second example has no kept token at all
    weights = jax.random.normal(keys[3], (2, 7, 3, 5))

    def loss(attend):
        return lambda q, k, v: jnp.sum(attend(q, k, v) * weights)

    ours = lambda q, k, v: _attention_heads_first(q, k, v, keep, 0.3)  # noqa: E731
    reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=keep[:, None, None, :], scale=0.3)  # noqa: E731
    np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), atol=1e-6)
    for g_ours, g_ref in zip(jax.grad(loss(ours), (0, 1, 2))(q, k, v), jax.grad(loss(reference), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g_ours, g_ref, atol=1e-5)
    assert float(jnp.abs(ours(q, k, v)[0, :, :, :] - ours(q, k.at[0, 2].add(5.0), v)[0]).max()) == 0.0  # masked key


@pytest.mark.parametrize("learnable", [False, True])
def test_folded_cross_attention_equals_textbook_order_with_gradients(learnable):
    """The folded order (projections moved onto the text side) computes the same function and gradients."""
    channels, length = 6, 4
    keys = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(keys[0], (2, 3, 5, channels))
    tokens = jax.random.normal(keys[1], (2, length, 8))
    mask = jnp.asarray([[1, 1, 0, 1], [0, 0, 0, 0]])  # the second example has no kept token at all
    weights = jax.random.normal(keys[2], x.shape)
    module = CrossAttention(channels, 8, num_heads=3, head_dim=5, learnable_qk_scale=learnable,
                            learnable_gate=learnable, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    if learnable:  # move the gate off zero so the attention output reaches the loss
        module.gate[...] = jnp.asarray(0.7)
    graph, params = nnx.split(module)

    def loss(folded):
        def run(params, x, tokens):
            attention = nnx.merge(graph, params)
            attention.folded = folded
            return jnp.sum(attention(x, tokens, mask) * weights)
        return jax.value_and_grad(run, argnums=(0, 1, 2))

    (value_f, grads_f), (value_t, grads_t) = loss(True)(params, x, tokens), loss(False)(params, x, tokens)
    np.testing.assert_allclose(value_f, value_t, rtol=1e-5)
    leaves_f, leaves_t = jax.tree.leaves(grads_f), jax.tree.leaves(grads_t)
    assert len(leaves_f) == len(leaves_t) == (9 if learnable else 7)  # 5 weights (+scale, gate), x, tokens
    for g_f, g_t in zip(leaves_f, leaves_t):
        assert float(jnp.abs(g_t).max()) > 0
        np.testing.assert_allclose(g_f, g_t, rtol=1e-4, atol=1e-5)


def test_cross_attention_folds_only_where_it_saves_work():
    module = nnx.eval_shape(lambda: CrossAttention(32, 256, num_heads=4, head_dim=64, dtype=jnp.float32,
                                                   param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
    assert module._fold(32, 64) and module._fold(128, 64) and not module._fold(256, 64)
    module.folded = False
    assert not module._fold(32, 64)


def test_channel_schedules_match_seed_tables():
    gen = nnx.eval_shape(lambda: Generator(128, rngs=nnx.Rngs(0)))
    disc = nnx.eval_shape(lambda: Discriminator(128, rngs=nnx.Rngs(0)))
    assert gen.channels == (256, 256, 256, 128, 64, 32)
    assert disc.channels == (32, 64, 128, 256, 256, 256)
    assert gen.project.kernel.shape == (128 + 256, 4 * 4 * 256)  # z (128) ⊕ sentence (256) -> 4×4×256
    assert channels_at(4, 64, 32, 256) == 256 and channels_at(64, 64, 32, 256) == 32


@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
def test_generator_output_shape_and_range(upsample):
    gen = Generator(64, z_dim=16, upsample=upsample, rngs=nnx.Rngs(0), **TINY)
    sentence, tokens, mask = text_inputs()
    images = generate(gen, jax.random.normal(jax.random.key(1), (B, 16)), sentence, tokens, mask)
    assert images.shape == (B, 64, 64, 3) and images.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(images))) <= 1.0 and bool(jnp.all(jnp.isfinite(images)))
    assert float(jnp.std(images)) > 1e-3  # not a constant image


@pytest.mark.parametrize("image_size", [128, 256])
@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
def test_generator_shapes_at_seed_widths(image_size, upsample):
    """Abstract evaluation (no compute): the full-width network builds and traces at 128 and 256 px."""
    sentence, tokens, mask = text_inputs()
    build_and_run = lambda: Generator(image_size, upsample=upsample, rngs=nnx.Rngs(0))(  # noqa: E731
        jnp.zeros((B, 128)), sentence, tokens, mask)
    out = jax.eval_shape(build_and_run)
    assert out.shape == (B, image_size, image_size, 3) and out.dtype == jnp.float32


def test_generator_ignores_padding_tokens_and_uses_real_ones():
    gen = Generator(16, z_dim=8, rngs=nnx.Rngs(0), **TINY)
    z = jax.random.normal(jax.random.key(1), (B, 8))
    sentence, tokens, mask = text_inputs()
    base = generate(gen, z, sentence, tokens, mask)
    padded_changed = tokens.at[:, -1].add(5.0)
    np.testing.assert_allclose(generate(gen, z, sentence, padded_changed, mask), base, atol=1e-6)
    real_changed = tokens.at[:, 0].add(5.0)
    assert float(jnp.max(jnp.abs(generate(gen, z, sentence, real_changed, mask) - base))) > 1e-4


def param_grad_norms(grads) -> dict[str, float]:
    return {jax.tree_util.keystr(path): float(jnp.linalg.norm(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]}


def test_generator_gradients_reach_every_parameter():
    gen = Generator(16, z_dim=8, learnable_qk_scale=True, rngs=nnx.Rngs(0), **TINY)
    z = jax.random.normal(jax.random.key(1), (B, 8))
    sentence, tokens, mask = text_inputs()
    target = jax.random.normal(jax.random.key(2), (B, 16, 16, 3))
    grads = nnx.jit(nnx.grad(lambda g: jnp.sum(g(z, sentence, tokens, mask) * target)))(gen)
    norms = param_grad_norms(nnx.state(grads, nnx.Param))
    assert len(norms) > 20
    zero = [name for name, value in norms.items() if not value > 0]
    assert not zero, f"parameters without gradient: {zero}"


def test_generator_learnable_gate_starts_closed():
    gen = Generator(8, z_dim=8, learnable_gate=True, rngs=nnx.Rngs(0), **TINY)
    z = jax.random.normal(jax.random.key(1), (B, 8))
    sentence, tokens, mask = text_inputs()
    grads = nnx.jit(nnx.grad(lambda g: jnp.sum(g(z, sentence, tokens, mask))))(gen)
    attention = gen.stages[0].attention
    assert float(attention.gate[...]) == 0.0
    assert abs(float(grads.stages[0].attention.gate[...])) > 0  # the gate itself learns
    changed = tokens.at[:, 0].add(5.0)  # closed gate: tokens have no effect yet
    np.testing.assert_allclose(generate(gen, z, sentence, changed, mask), generate(gen, z, sentence, tokens, mask),
                               atol=1e-6)


def test_text_affine_block_starts_as_the_plain_block_then_follows_the_sentence():
    """Zero-initialised γ, β: a block with text affine layers computes what the same block without them does
    (same convolution and norm weights: the affine layers are built last), until its last layer moves."""
    x = jax.random.normal(jax.random.key(1), (B, 8, 8, 16))
    sentence, _, _ = text_inputs()
    plain = GeneratorResBlock(16, 16, num_groups=8, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    block = GeneratorResBlock(16, 16, num_groups=8, sentence_dim=SENT, dtype=jnp.float32, param_dtype=jnp.float32,
                              rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(block(x, sentence)), np.asarray(plain(x)))
    # the zero last layer still gets a gradient, so γ(s), β(s) start to learn at the first step
    grads = nnx.grad(lambda b: jnp.sum(b(x, sentence) * x))(block)
    assert float(jnp.abs(grads.affine1.out.kernel[...]).sum()) > 0
    block.affine1.out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(2), block.affine1.out.kernel.shape)
    other = sentence[::-1]
    assert float(jnp.max(jnp.abs(block(x, sentence) - block(x, other)))) > 1e-3
    with pytest.raises(ValueError, match="pass the sentence embedding"):
        block(x)


def test_text_affine_is_the_dfgan_per_channel_modulation():
    affine = TextAffine(SENT, 4, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    affine.out.kernel[...] = jax.random.normal(jax.random.key(3), affine.out.kernel.shape)
    sentence, _, _ = text_inputs()
    x = jax.random.normal(jax.random.key(4), (B, 3, 3, 4))
    w1, b1, w2, b2 = (np.asarray(p[...]) for p in (affine.hidden.kernel, affine.hidden.bias, affine.out.kernel,
                                                     affine.out.bias))
    gamma_beta = np.maximum(np.asarray(sentence) @ w1 + b1, 0) @ w2 + b2
    gamma, beta = gamma_beta[:, :4], gamma_beta[:, 4:]
    expected = np.asarray(x) * (1 + gamma[:, None, None]) + beta[:, None, None]
    # float32 dots of length 256 and 4 with O(1) terms: 1e-4 relative covers their rounding
    np.testing.assert_allclose(np.asarray(affine(x, sentence)), expected, rtol=1e-4, atol=1e-4)


def test_generator_with_text_affine_feeds_the_sentence_to_every_stage():
    gen = Generator(16, z_dim=8, text_affine=True, rngs=nnx.Rngs(0), **TINY)
    assert all(stage.block.affine1 is not None and stage.block.affine2 is not None for stage in gen.stages)
    z = jax.random.normal(jax.random.key(1), (B, 8))
    sentence, tokens, mask = text_inputs()
    grads = nnx.jit(nnx.grad(lambda g: jnp.sum(g(z, sentence, tokens, mask) ** 2)))(gen)
    for index in range(len(gen.stages)):
        assert float(jnp.abs(grads.stages[index].block.affine2.out.kernel[...]).sum()) > 0
    maps = gen.attention_maps(z, sentence, tokens, mask)
    assert maps.shape == (B, 16, 16, T)
    assert Generator(16, z_dim=8, rngs=nnx.Rngs(0), **TINY).stages[0].block.affine1 is None  # off by default


# ---------------------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("downsample", ["strided", "avgpool"])
def test_discriminator_output_shape(downsample):
    disc = Discriminator(64, base_channels=8, max_channels=32, downsample=downsample, rngs=nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(1), (B, 64, 64, 3), minval=-1, maxval=1)
    sentence, _, _ = text_inputs()
    logits = discriminate(disc, images, sentence)
    assert logits.shape == (B,) and logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert len(disc.blocks) == 4
    assert float(jnp.abs(logits[0] - logits[1])) > 0  # examples are scored independently


@pytest.mark.parametrize("image_size", [128, 256])
@pytest.mark.parametrize("downsample", ["strided", "avgpool"])
def test_discriminator_shapes_at_seed_widths(image_size, downsample):
    """Abstract evaluation (no compute): the full-width network builds and traces at 128 and 256 px."""
    sentence, _, _ = text_inputs()
    build_and_run = lambda: Discriminator(image_size, downsample=downsample, rngs=nnx.Rngs(0))(  # noqa: E731
        jnp.zeros((B, image_size, image_size, 3)), sentence)
    out = jax.eval_shape(build_and_run)
    assert out.shape == (B,) and out.dtype == jnp.float32


def test_discriminator_spectral_norm_on_every_conv_and_gradients_everywhere():
    disc = Discriminator(16, base_channels=8, max_channels=16, rngs=nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(1), (B, 16, 16, 3), minval=-1, maxval=1)
    sentence, _, _ = text_inputs()
    kernels = [path for path, _ in nnx.iter_graph(disc) if path and path[-1] == "kernel"]
    states = [path for path, node in nnx.iter_graph(disc) if isinstance(node, SpectralState)]
    assert len(kernels) == len(states) == 3 + 2 * 4  # stem + head (2) + 2 blocks of 4 SN convs
    grads = nnx.jit(nnx.grad(lambda d: jnp.sum(d(images, sentence) * jnp.array([1.0, -2.0]))))(disc)
    norms = param_grad_norms(nnx.state(grads, nnx.Param))
    zero = [name for name, value in norms.items() if not value > 0]
    assert not zero, f"parameters without gradient: {zero}"
    # The sentence matters (MA-GP differentiates w.r.t. it).
    grad_sentence = jax.jit(jax.grad(lambda s: jnp.sum(disc(images, s, update_stats=False))))(sentence)
    assert float(jnp.linalg.norm(grad_sentence)) > 0


def test_discriminator_text_projection_starts_at_zero_then_adds_the_inner_product():
    """model.d_text_projection: logit = concat head + <sum_hw LReLU(features), sentence @ W>, W zero at init."""
    plain = Discriminator(8, base_channels=8, max_channels=16, rngs=nnx.Rngs(0))
    projected = Discriminator(8, base_channels=8, max_channels=16, text_projection=True, rngs=nnx.Rngs(0))
    assert plain.text_embed is None and projected.text_embed is not None
    plain.eval(), projected.eval()
    images = jax.random.uniform(jax.random.key(1), (B, 8, 8, 3), minval=-1, maxval=1)
    sentence, _, _ = text_inputs()
    head = np.asarray(discriminate(plain, images, sentence))
    np.testing.assert_array_equal(discriminate(projected, images, sentence), head)  # + exactly 0 at init

    w = jax.random.normal(jax.random.key(2), (SENT, 16)) / 16
    projected.text_embed.kernel[...] = w
    features = np.asarray(nnx.jit(lambda d, x: d.features(x))(projected, images), np.float64)
    pooled = np.where(features > 0, features, 0.2 * features).sum(axis=(1, 2))  # [B, 16]
    embedded = np.asarray(sentence, np.float64) @ np.asarray(w, np.float64)  # [B, 16]
    expected = head + np.sum(pooled * embedded, axis=-1)
    # float32: the head (its own path) plus a 256-term and a 16-term sum of terms of order |pooled|·|embedded|
    tolerance = path_tolerance([3 * 3 * 16 + 16, 4 * 4 * 16], scale=float(np.abs(head).max()) + 1.0) + \
        path_tolerance([SENT, 16], scale=float(np.sum(np.abs(pooled) * np.abs(embedded), axis=-1).max()))
    assert_within(np.asarray(discriminate(projected, images, sentence)), expected, tolerance)

    # From zero, D's loss reaches W (grad = Σ_b dL/dlogit_b · pooled_b ⊗ sentence_b), and the logit depends on the
    # sentence through it as well
    grads = nnx.jit(nnx.grad(lambda d: jnp.sum(d(images, sentence) * jnp.array([1.0, -2.0]))))(
        Discriminator(8, base_channels=8, max_channels=16, text_projection=True, rngs=nnx.Rngs(0)))
    assert float(jnp.linalg.norm(grads.text_embed.kernel[...])) > 0


def test_bfloat16_forward_returns_float32():
    gen = Generator(8, z_dim=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0), **TINY)
    gen32 = Generator(8, z_dim=8, rngs=nnx.Rngs(0), **TINY)
    disc = Discriminator(8, base_channels=8, max_channels=16, dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
    disc32 = Discriminator(8, base_channels=8, max_channels=16, rngs=nnx.Rngs(1))
    disc.eval(), disc32.eval()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(gen, nnx.Param)))
    z = jax.random.normal(jax.random.key(1), (B, 8))
    sentence, tokens, mask = text_inputs()
    images = generate(gen, z, sentence, tokens, mask)
    assert images.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(images)))
    np.testing.assert_allclose(images, generate(gen32, z, sentence, tokens, mask), atol=0.1)
    logits = discriminate(disc, images, sentence)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    reference = discriminate(disc32, images, sentence)
    np.testing.assert_allclose(logits, reference, atol=0.05)
    # Per-call float32 override (used by MA-GP) reproduces the float32 model.
    as_float32 = nnx.jit(lambda d, x, s: d(x, s, compute_dtype=jnp.float32))(disc, images, sentence)
    np.testing.assert_allclose(as_float32, reference, rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    build = lambda make: jax.eval_shape(lambda: nnx.state(make()))  # noqa: E731  (abstract: no compute)
    with pytest.raises(ValueError, match="power of two"):
        build(lambda: Generator(100, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="power of two"):
        build(lambda: Discriminator(4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="upsample"):
        build(lambda: Generator(8, upsample="nearest", rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="downsample"):
        build(lambda: Discriminator(8, downsample="maxpool", rngs=nnx.Rngs(0)))
    sentence, tokens, mask = text_inputs()
    with pytest.raises(ValueError, match="images must have shape"):
        jax.eval_shape(lambda: Discriminator(8, rngs=nnx.Rngs(0))(jnp.zeros((B, 16, 16, 3)), sentence))
    with pytest.raises(ValueError, match="sentence must have shape"):
        jax.eval_shape(lambda: Discriminator(8, rngs=nnx.Rngs(0))(jnp.zeros((B, 8, 8, 3)), sentence[:, :7]))
    with pytest.raises(ValueError, match="mask must have shape"):
        jax.eval_shape(lambda: Generator(8, rngs=nnx.Rngs(0))(jnp.zeros((B, 128)), sentence, tokens, mask[:, :3]))


# blocks of: all 5 examples; 2 examples (and a remainder of 1); one example; half an example; a fifth of one
@pytest.mark.parametrize("block_pixels", [4096, 20, 10, 5, 3])
def test_blocked_folded_attention_equals_autodiff_with_gradients(block_pixels):
    heads, tokens, channels, dim = 2, 4, 3, 5
    batch, length = 5, 10
    keys = jax.random.split(jax.random.key(7), 5)
    pixels = jax.random.normal(keys[0], (batch, length, channels))
    pixels = pixels.at[1, 3].set(0.0)  # a pixel whose query is 0: the norm's eps clamp, zero gradient through it
    query_keys = jax.random.normal(keys[1], (batch, channels, heads * tokens))
    w_q = jax.random.normal(keys[2], (channels, heads * dim))
    values_out = jax.random.normal(keys[3], (batch, heads * tokens, channels))
    keep = jnp.asarray([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]]) > 0
    probe = jax.random.normal(keys[4], (batch, length, channels))

    def loss(attend):
        return lambda *args: jnp.sum(attend(*args) * probe)

    ours = lambda x, qk, wq, vo, s: folded_attention(x, qk, wq, vo, keep, s, num_heads=heads,  # noqa: E731
                                                     block_pixels=block_pixels)
    plain = lambda x, qk, wq, vo, s: folded_attention_autodiff(x, qk, wq, vo, keep, s, num_heads=heads)  # noqa: E731
    args = (pixels, query_keys, w_q, values_out, jnp.asarray(0.8))
    np.testing.assert_allclose(ours(*args), plain(*args), rtol=1e-5, atol=1e-6)
    grads_ours = jax.grad(loss(ours), argnums=tuple(range(5)))(*args)
    grads_plain = jax.grad(loss(plain), argnums=tuple(range(5)))(*args)
    for g_ours, g_plain in zip(grads_ours, grads_plain):
        assert float(jnp.abs(g_plain).max()) > 0
        np.testing.assert_allclose(g_ours, g_plain, rtol=1e-4, atol=1e-5)
    # with a jitted fixed (float) scale, the same values: the scale is a traced scalar inside either way
    np.testing.assert_allclose(jax.jit(lambda *a: ours(*a, 0.8))(*args[:4]), plain(*args[:4], 0.8), rtol=1e-5, atol=1e-6)


def test_blocked_folded_attention_rejects_mismatched_heads():
    with pytest.raises(ValueError, match="3 heads"):
        folded_attention(jnp.zeros((1, 4, 2)), jnp.zeros((1, 2, 8)), jnp.zeros((2, 6)), jnp.zeros((1, 8, 2)),
                         jnp.ones((1, 4), bool), 1.0, num_heads=3)


def test_blocked_folded_attention_in_bfloat16_keeps_dtypes_and_values():
    keys = jax.random.split(jax.random.key(8), 4)
    args32 = (jax.random.normal(keys[0], (2, 12, 4)), jax.random.normal(keys[1], (2, 4, 6)),
              jax.random.normal(keys[2], (4, 6)), jax.random.normal(keys[3], (2, 6, 4)))
    args16 = tuple(a.astype(jnp.bfloat16) for a in args32)
    keep = jnp.asarray([[1, 1, 0], [1, 0, 0]]) > 0
    run = lambda *a: folded_attention(*a, keep, 0.5, num_heads=2, block_pixels=6)  # noqa: E731
    out16 = run(*args16)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), run(*args32), rtol=0.05, atol=0.05)
    grads = jax.grad(lambda *a: jnp.sum(run(*a).astype(jnp.float32)), argnums=(0, 1, 2, 3))(*args16)
    assert all(g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g))) for g in grads)
