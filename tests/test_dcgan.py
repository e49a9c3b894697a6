"""DCGAN / WGAN-GP of seed 004: module shapes, parameter parity with PyTorch's DCGAN, loss values,
the gradient penalty against hand and finite-difference computations, gradient flow."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pikagen_jax.losses import dcgan as losses
from pikagen_jax.models.dcgan import Discriminator, Generator
from pikagen_jax.models.l1_decoder import TorchConvTranspose
from tests.tolerances import assert_within, sum_tolerance


def param_count(module: nnx.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


def assert_all_grads_nonzero(grads: nnx.State) -> None:
    flat = nnx.to_flat_state(grads)
    assert len(flat) > 0
    dead = [path for path, value in flat if not np.any(np.abs(np.asarray(value[...])) > 0)]
    assert not dead, f"parameters without gradient: {dead}"


def abstract_call(factory, *inputs, **kwargs):
    """Output shape of factory()(*inputs) without compiling or running it."""
    return nnx.eval_shape(lambda: factory()(*inputs, **kwargs))


def test_generator_shapes_and_range():
    gen = Generator(16, image_size=64, base_channels=4, rngs=nnx.Rngs(0))
    images = nnx.jit(lambda g, z: g(z, train=True))(gen, jax.random.normal(jax.random.key(1), (3, 16)))
    assert images.shape == (3, 64, 64, 3) and images.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(images))) <= 1.0 and float(jnp.std(images)) > 0


def test_doubled_generator_has_twice_the_conv_layers():
    make = lambda extra: Generator(16, image_size=64, base_channels=4, extra_layers_per_stage=extra,
                                   rngs=nnx.Rngs(0))
    convs = lambda gen: [layer for layer in gen.layers if isinstance(layer, (nnx.Conv, TorchConvTranspose))]
    assert len(convs(nnx.eval_shape(lambda: make(0)))) == 5  # PyTorch's DCGAN generator
    assert len(convs(nnx.eval_shape(lambda: make(1)))) == 9  # the seed's "doubled" generator
    out = abstract_call(lambda: make(1), jnp.zeros((2, 16)), train=True)
    assert out.shape == (2, 64, 64, 3)


def test_discriminator_shapes():
    disc = Discriminator(image_size=64, base_channels=4, norm="batch", rngs=nnx.Rngs(0))
    scores = nnx.jit(lambda d, x: d(x, train=True))(disc, jnp.zeros((2, 64, 64, 3)))
    assert scores.shape == (2,) and scores.dtype == jnp.float32
    for norm in ("layer", "none"):
        for size in (32, 64):
            out = abstract_call(lambda: Discriminator(image_size=size, base_channels=4, norm=norm,
                                                      extra_layers_per_stage=1, rngs=nnx.Rngs(0)),
                                jnp.zeros((3, size, size, 3)))
            assert out.shape == (3,)


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="power of two"):
        Generator(8, image_size=60, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="norm"):
        Discriminator(norm="spectral", rngs=nnx.Rngs(0))
    disc = Discriminator(image_size=32, base_channels=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\]"):
        disc(jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match=r"z \[B, 8\]"):
        Generator(8, image_size=32, base_channels=4, rngs=nnx.Rngs(0))(jnp.zeros((2, 9)))


def test_parameter_counts_match_pytorch_dcgan_example():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    nz, ngf, ndf = 100, 64, 64
    torch_g = nn.Sequential(  # pytorch/examples dcgan/main.py
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())
    torch_d = nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())
    gen = nnx.eval_shape(lambda: Generator(nz, image_size=64, base_channels=ngf, rngs=nnx.Rngs(0)))
    disc = nnx.eval_shape(lambda: Discriminator(image_size=64, base_channels=ndf, rngs=nnx.Rngs(0)))
    assert param_count(gen) == sum(p.numel() for p in torch_g.parameters()) == 3_576_704
    # Ours keeps a bias on the first conv (no norm follows it) and on the logit head: 64 + 1 more.
    assert param_count(disc) == sum(p.numel() for p in torch_d.parameters()) + ndf + 1


def _load_batch_norm(ours, torch_bn) -> None:
    for name, value in (("scale", torch_bn.weight), ("bias", torch_bn.bias), ("mean", torch_bn.running_mean),
                        ("var", torch_bn.running_var)):
        getattr(ours.norm, name)[...] = jnp.asarray(value.detach().numpy())


def _absolute_network(model):
    """A copy of a torch Sequential (convs, eval BatchNorms, ReLU / LeakyReLU / Tanh) that maps |input| to a
    bound on every value's Σ|t_i|: |weights|, BatchNorms as |γ|/s·x + |β| + |γ μ|/s, activations dropped
    (each has |f(x)| <= |x|). An error made in one layer reaches the output through later layers scaled at
    most as this network scales it, so Σ_layers terms · eps · output is a first-order bound on the
    difference of two float32 evaluations (tests/tolerances.py)."""
    import copy

    import torch

    absolute = copy.deepcopy(model).eval()
    layers = []
    with torch.no_grad():
        for layer in absolute:
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                layer.weight.abs_()
                if layer.bias is not None:
                    layer.bias.abs_()
            elif isinstance(layer, torch.nn.BatchNorm2d):
                std = torch.sqrt(layer.running_var + layer.eps)
                layer.bias.copy_(layer.bias.abs() + (layer.weight * layer.running_mean).abs() / std)
                layer.weight.abs_()
                layer.running_mean.zero_()
            else:
                continue  # ReLU, LeakyReLU, Tanh
            layers.append(layer)
    return torch.nn.Sequential(*layers)


def test_networks_equal_pytorch_dcgan_with_the_same_weights():
    """Same weights, inference mode: G and D compute what PyTorch's DCGAN layers compute (this pins the
    matmul forms of the transposed and strided convolutions to ConvTranspose2d(4, 2, 1) / Conv2d(4, 2, 1))."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    nz, ngf, ndf = 8, 4, 4
    torch_g = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(),
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())
    torch_d = nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0))
    for module in list(torch_g) + list(torch_d):  # non-trivial running statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    torch_g.eval()
    torch_d.eval()
    gen = Generator(nz, image_size=64, base_channels=ngf, rngs=nnx.Rngs(0))
    disc = Discriminator(image_size=64, base_channels=ndf, rngs=nnx.Rngs(0))
    g_convs = [layer for layer in gen.layers if isinstance(layer, TorchConvTranspose)]
    g_norms = [layer for layer in gen.layers if not isinstance(layer, TorchConvTranspose)]
    for ours, theirs in zip(g_convs, [m for m in torch_g if isinstance(m, nn.ConvTranspose2d)], strict=True):
        ours.kernel[...] = jnp.asarray(theirs.weight.detach().numpy().transpose(2, 3, 0, 1))
    for ours, theirs in zip(g_norms, [m for m in torch_g if isinstance(m, nn.BatchNorm2d)], strict=True):
        _load_batch_norm(ours, theirs)
    d_convs = [layer for layer in disc.layers if hasattr(layer, "kernel")] + [disc.head]
    for ours, theirs in zip(d_convs, [m for m in torch_d if isinstance(m, nn.Conv2d)], strict=True):
        ours.kernel[...] = jnp.asarray(theirs.weight.detach().numpy().transpose(2, 3, 1, 0))
        if theirs.bias is not None:
            ours.bias[...] = jnp.asarray(theirs.bias.detach().numpy())
    d_norms = [layer for layer in disc.layers if getattr(layer, "kind", "") == "batch"]
    for ours, theirs in zip(d_norms, [m for m in torch_d if isinstance(m, nn.BatchNorm2d)], strict=True):
        _load_batch_norm(ours, theirs)
    z = np.random.default_rng(0).normal(size=(2, nz)).astype(np.float32)
    with torch.no_grad():
        expected = torch_g(torch.from_numpy(z)[:, :, None, None]).permute(0, 2, 3, 1).numpy()
    images = np.asarray(gen(jnp.asarray(z), train=False))
    # Sums per output, layer by layer: G's first transposed conv nz, then 2x2 taps x C_in (a stride-2 4x4
    # transposed conv); D's 4x4 convs 16 x C_in; plus 3 roundings per layer for BatchNorm and activation. Each
    # network's bound scales with its absolute copy's output.
    g_terms = nz + 4 * (ngf * 8 + ngf * 4 + ngf * 2 + ngf) + 3 * 5
    d_terms = 16 * (3 + ndf + ndf * 2 + ndf * 4 + ndf * 8) + 3 * 5
    with torch.no_grad():
        g_bound = _absolute_network(torch_g)(torch.from_numpy(np.abs(z))[:, :, None, None]).permute(0, 2, 3, 1)
        d_bound = _absolute_network(torch_d)(torch.from_numpy(np.abs(images)).permute(0, 3, 1, 2)).reshape(-1)
    assert_within(images, expected, sum_tolerance(g_terms, g_bound.numpy()), "generator vs torch")
    with torch.no_grad():
        expected_logits = torch_d(torch.from_numpy(images).permute(0, 3, 1, 2)).reshape(-1).numpy()
    assert_within(disc(jnp.asarray(images), train=False), expected_logits, sum_tolerance(d_terms, d_bound.numpy()),
                  "discriminator vs torch")


def test_batch_norm_statistics_update_only_in_training():
    gen = Generator(8, image_size=16, base_channels=4, rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(gen, nnx.BatchStat))
    gen(jax.random.normal(jax.random.key(0), (4, 8)), train=False)
    same = jax.tree.map(np.asarray, nnx.state(gen, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, same)
    gen(jax.random.normal(jax.random.key(0), (4, 8)), train=True)
    after = jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(gen, nnx.BatchStat)))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), after))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bce_losses_on_hand_picked_logits():
    real = jnp.array([0.0, 2.0])
    fake = jnp.array([0.0, -1.0])
    # -log sigmoid(r) for reals, -log(1 - sigmoid(f)) for fakes
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    expected_d = (-math.log(sigmoid(0)) - math.log(sigmoid(2))) / 2 + (
        -math.log(1 - sigmoid(0)) - math.log(1 - sigmoid(-1))) / 2
    assert float(losses.bce_discriminator_loss(real, fake)) == pytest.approx(expected_d, rel=1e-6)
    assert expected_d == pytest.approx(0.913242, abs=1e-6)
    expected_g = (math.log(2) + softplus(1.0)) / 2  # -log sigmoid(f), non-saturating
    assert float(losses.bce_generator_loss(fake)) == pytest.approx(expected_g, rel=1e-6)
    # stable at saturated logits: no inf / nan
    assert float(losses.bce_discriminator_loss(jnp.array([100.0]), jnp.array([-100.0]))) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.bce_generator_loss(jnp.array([-100.0]))) == pytest.approx(100.0, rel=1e-6)


def test_wasserstein_losses():
    real, fake = jnp.array([3.0, 1.0]), jnp.array([-1.0, 0.0])
    assert float(losses.wgan_critic_loss(real, fake)) == pytest.approx(-0.5 - 2.0)
    assert float(losses.wgan_generator_loss(fake)) == pytest.approx(0.5)


def test_gradient_penalty_of_linear_critic_is_hand_value():
    w = jax.random.normal(jax.random.key(0), (4, 4, 3)) * 0.3
    critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3)) + 0.7
    real = jax.random.normal(jax.random.key(1), (5, 4, 4, 3))
    fake = jax.random.normal(jax.random.key(2), (5, 4, 4, 3))
    penalty = losses.gradient_penalty(critic, real, fake, jax.random.key(3), weight=10.0)
    expected = 10.0 * (float(np.linalg.norm(np.asarray(w))) - 1.0) ** 2  # grad = w at every interpolate
    assert float(penalty) == pytest.approx(expected, rel=1e-5)


def test_gradient_penalty_matches_finite_differences():
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(6, 5)) * 0.8
    w2 = rng.normal(size=(5,))

    def critic_np(x):  # [B, 6] float64
        return np.tanh(x @ w1) @ w2

    critic = lambda x: jnp.tanh(x @ jnp.asarray(w1, jnp.float32)) @ jnp.asarray(w2, jnp.float32)
    real = rng.normal(size=(3, 6)).astype(np.float32)
    fake = rng.normal(size=(3, 6)).astype(np.float32)
    key = jax.random.key(7)
    penalty = losses.gradient_penalty(critic, jnp.asarray(real), jnp.asarray(fake), key, weight=10.0)

    x_hat = np.asarray(losses.interpolate(jnp.asarray(real), jnp.asarray(fake), key), np.float64)
    eps = np.asarray(jax.random.uniform(key, (3, 1)))  # the interpolation is eps real + (1 - eps) fake
    np.testing.assert_allclose(x_hat, eps * real + (1 - eps) * fake, rtol=1e-5, atol=1e-6)
    h = 1e-6
    grads = np.zeros_like(x_hat)
    for j in range(6):
        step = np.zeros(6)
        step[j] = h
        grads[:, j] = (critic_np(x_hat + step) - critic_np(x_hat - step)) / (2 * h)
    expected = 10.0 * np.mean((np.linalg.norm(grads, axis=1) - 1.0) ** 2)
    assert float(penalty) == pytest.approx(expected, rel=1e-4)


def test_bce_gradients_reach_all_generator_and_discriminator_params():
    gen = Generator(8, image_size=16, base_channels=4, extra_layers_per_stage=1, rngs=nnx.Rngs(0))
    disc = Discriminator(image_size=16, base_channels=4, extra_layers_per_stage=1, rngs=nnx.Rngs(1))
    z = jax.random.normal(jax.random.key(0), (4, 8))
    real = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3), minval=-1, maxval=1)

    def d_loss(disc, gen):
        fake = jax.lax.stop_gradient(gen(z, train=True))
        return losses.bce_discriminator_loss(disc(real, train=True), disc(fake, train=True))

    def g_loss(gen, disc):
        return losses.bce_generator_loss(disc(gen(z, train=True), train=True))

    _, d_grads = nnx.jit(nnx.value_and_grad(d_loss))(disc, gen)
    assert_all_grads_nonzero(d_grads)
    _, g_grads = nnx.jit(nnx.value_and_grad(g_loss))(gen, disc)
    assert_all_grads_nonzero(g_grads)


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_wgan_gp_critic_step_is_finite_and_reaches_all_params(norm):
    critic = Discriminator(image_size=16, base_channels=4, norm=norm, rngs=nnx.Rngs(0))
    real = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3), minval=-1, maxval=1)
    fake = jax.random.uniform(jax.random.key(2), (4, 16, 16, 3), minval=-1, maxval=1)

    @nnx.jit
    def step(critic):
        def loss_fn(critic):
            return losses.wgan_gp_critic_loss(lambda x: critic(x, train=True), real, fake, jax.random.key(3),
                                              drift_weight=1e-3)
        return nnx.value_and_grad(loss_fn, has_aux=True)(critic)

    (loss, parts), grads = step(critic)
    assert np.isfinite(float(loss)) and float(parts["gradient_penalty"]) >= 0
    assert_all_grads_nonzero(grads)
