"""Latent diffusion of seed 003: VAE and U-Net shapes, the cosine schedule, forward noising, samplers,
classifier-free guidance, the denoising loss, and the VAE loss (free bits, KL annealing, perceptual hook)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pikagen_jax import diffusion
from pikagen_jax.losses import vae as vae_losses
from pikagen_jax.models.unet import UNet
from pikagen_jax.models.vae import VAE, default_num_downsamples, latent_side, level_sides

TEXT_DIM = 12
TINY_UNET = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 context_dim=TEXT_DIM, num_heads=2, norm_groups=4)
KEEP = jnp.array([False, False])  # drop_context for a batch of 2 that keeps both texts
TINY_VAE = dict(latent_channels=8, base_channels=8, channel_mults=(1, 1, 2), num_res_blocks=1, norm_groups=4,
                num_heads=2)


def assert_all_grads_nonzero(grads: nnx.State) -> None:
    flat = nnx.to_flat_state(grads)
    assert len(flat) > 0
    dead = [path for path, value in flat if not np.any(np.abs(np.asarray(value[...])) > 0)]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.fixture(scope="module")
def unet() -> UNet:
    return UNet(8, **TINY_UNET, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def vae64() -> VAE:
    return VAE(64, **TINY_VAE, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def text():
    tokens = jax.random.normal(jax.random.key(5), (2, 5, TEXT_DIM))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.int32)
    return tokens, mask


@pytest.fixture(scope="module")
def unet_apply():
    return nnx.jit(lambda model, x, t, c, m, drop: model(x, t, c, m, drop_context=drop))


# ----------------------------------------------------------------------------------------------- VAE


def test_latent_arithmetic():
    assert level_sides(215, 3) == [215, 108, 54, 27]  # ceil-halvings: 215 -> 108 -> 54 -> 27
    assert latent_side(215, 3) == 27 and latent_side(64, 2) == 16 and latent_side(128, 2) == 32
    assert [default_num_downsamples(s) for s in (64, 128, 215, 256)] == [2, 2, 3, 3]


def test_vae_215px_gives_27x27x8_latent_and_215px_reconstruction():
    def run():
        vae = VAE(215, **{**TINY_VAE, "channel_mults": None}, context_dim=TEXT_DIM, rngs=nnx.Rngs(0))
        tokens, mask = jnp.zeros((1, 4, TEXT_DIM)), jnp.ones((1, 4))
        return vae(jnp.zeros((1, 215, 215, 3)), jax.random.key(0), tokens, mask)

    recon, mean, logvar = nnx.eval_shape(run)
    assert mean.shape == logvar.shape == (1, 27, 27, 8)
    assert recon.shape == (1, 215, 215, 3)


def test_vae_shapes_at_64px_and_gradients_reach_all_params(vae64):
    vae = vae64
    assert vae.latent_shape == (16, 16, 8)
    images = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3), minval=-1, maxval=1)
    features = lambda x: [x, jnp.mean(x, axis=(1, 2))]

    @nnx.jit
    def grads_of(vae):
        def loss_fn(vae):
            recon, mean, logvar = vae(images, jax.random.key(1))
            loss, parts = vae_losses.vae_loss(recon, images, mean, logvar, kl_weight=0.1, free_bits=0.0,
                                              features_fn=features)
            return loss, (parts, recon, mean, logvar)
        return nnx.value_and_grad(loss_fn, has_aux=True)(vae)

    (loss, (parts, recon, mean, logvar)), grads = grads_of(vae)
    assert recon.shape == (2, 64, 64, 3) and mean.shape == logvar.shape == (2, 16, 16, 8)
    assert float(jnp.max(jnp.abs(recon))) <= 1.0
    assert np.isfinite(float(loss)) and float(parts["perceptual"]) > 0
    assert_all_grads_nonzero(grads)
    with pytest.raises(ValueError, match="image_size"):
        vae.encode(jnp.zeros((2, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"\[B, 16, 16, 8\]"):
        vae.decode(jnp.zeros((2, 8, 8, 8)))


# ------------------------------------------------------------------------------------------ VAE loss


def test_kl_divergence_closed_form():
    kl = vae_losses.kl_divergence(jnp.array([0.0, 1.0, 0.0]), jnp.array([0.0, 0.0, math.log(4.0)]))
    np.testing.assert_allclose(kl, [0.0, 0.5, 0.5 * (4.0 - 1.0 - math.log(4.0))], rtol=1e-6)


def test_free_bits_clamps_per_dimension_kl_at_half_a_nat():
    # two latent dims: dim 0 has KL 0.125 (mean 0.5), dim 1 has KL 2 (mean 2), same in both samples
    mean = jnp.array([[0.5, 2.0], [-0.5, 2.0]])
    logvar = jnp.zeros_like(mean)
    clamped, raw = vae_losses.free_bits_kl(mean, logvar, free_bits=0.5)
    assert float(raw) == pytest.approx((0.125 + 2.0) / 2)
    assert float(clamped) == pytest.approx((0.5 + 2.0) / 2)  # dim 0 raised to the 0.5 floor
    grad = jax.grad(lambda m: vae_losses.free_bits_kl(m, logvar, 0.5)[0])(mean)
    np.testing.assert_allclose(grad[:, 0], 0.0)  # no pressure on the dim below the floor
    np.testing.assert_allclose(grad[:, 1], 2.0 / 2 / 2)  # d/dm mean_b(m^2 / 2) / n_dims
    with pytest.raises(ValueError, match="free_bits"):
        vae_losses.free_bits_kl(mean, logvar, -1.0)


def test_kl_annealing_schedule_values():
    values = [float(vae_losses.kl_weight_schedule(e, warmup_epochs=20, max_weight=0.1)) for e in (0, 5, 10, 20, 35)]
    np.testing.assert_allclose(values, [0.0, 0.025, 0.05, 0.1, 0.1], rtol=1e-6)
    jitted = jax.jit(lambda p: vae_losses.kl_weight_schedule(p))(jnp.float32(2.5))
    assert float(jitted) == pytest.approx(0.0125)


def test_vae_loss_terms():
    target = jnp.zeros((1, 2, 2, 3))
    recon = jnp.full((1, 2, 2, 3), 0.5)
    mean, logvar = jnp.ones((1, 1, 1, 2)), jnp.zeros((1, 1, 1, 2))  # KL 0.5 per dim
    features = lambda x: [2.0 * x]
    loss, parts = vae_losses.vae_loss(recon, target, mean, logvar, kl_weight=0.1, free_bits=0.5,
                                      features_fn=features, perceptual_weight=0.5)
    assert float(parts["l1"]) == pytest.approx(0.5)
    assert float(parts["perceptual"]) == pytest.approx(1.0)  # (2 * 0.5) ** 2
    assert float(loss) == pytest.approx(0.5 + 0.5 * 1.0 + 0.1 * 0.5)
    no_features, parts = vae_losses.vae_loss(recon, target, mean, logvar, kl_weight=0.1, features_fn=None)
    assert float(parts["perceptual"]) == 0.0 and float(no_features) == pytest.approx(0.5 + 0.05)
    # the perceptual gradient flows into the reconstruction only
    grad_target = jax.grad(lambda t: vae_losses.perceptual_loss(features, recon, t))(target)
    np.testing.assert_allclose(grad_target, 0.0)


# ---------------------------------------------------------------------------------------------- U-Net


def test_unet_shapes_at_64px_latents(unet, text, unet_apply):
    tokens, mask = text
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))  # VAE latent of a 64 px image
    eps = unet_apply(unet, x, jnp.array([3, 900]), tokens, mask, KEEP)
    assert eps.shape == x.shape and eps.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(eps)))
    odd = nnx.eval_shape(lambda: UNet(8, **TINY_UNET, rngs=nnx.Rngs(0))(jnp.zeros((1, 27, 27, 8)), 5,
                                                                       tokens[:1], mask[:1]))
    assert odd.shape == (1, 27, 27, 8)  # 27 -> 14 -> 27 (215 px latent)
    no_text = nnx.eval_shape(lambda: UNet(8, **TINY_UNET, rngs=nnx.Rngs(0))(jnp.zeros((3, 16, 16, 8)), 5))
    assert no_text.shape == (3, 16, 16, 8)
    unconditional = nnx.eval_shape(lambda: UNet(8, **{**TINY_UNET, "context_dim": None}, rngs=nnx.Rngs(0))(
        jnp.zeros((1, 16, 16, 8)), 5))
    assert unconditional.shape == (1, 16, 16, 8)
    with pytest.raises(ValueError, match=r"\[B, h, w, 8\]"):
        unet(jnp.zeros((1, 16, 16, 4)), 1, tokens[:1], mask[:1])
    with pytest.raises(ValueError, match=rf"\[B, T, {TEXT_DIM}\]"):
        unet(x, 1, jnp.zeros((2, 5, TEXT_DIM + 1)), mask)


def test_unet_ignores_masked_tokens_and_uses_text(unet, text, unet_apply):
    tokens, mask = text
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
    t = jnp.array([10, 10])
    base = unet_apply(unet, x, t, tokens, mask, KEEP)
    padded_changed = tokens.at[0, 3:].set(100.0)  # sample 0's padding positions
    np.testing.assert_allclose(unet_apply(unet, x, t, padded_changed, mask, KEEP), base, atol=1e-5)
    other_text = unet_apply(unet, x, t, tokens[::-1], mask[::-1], KEEP)
    assert float(jnp.max(jnp.abs(other_text - base))) > 1e-4


def test_drop_context_uses_null_embedding_per_row(unet, text, unet_apply):
    tokens, mask = text
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
    t = jnp.array([10, 700])
    cond = unet_apply(unet, x, t, tokens, mask, jnp.array([False, False]))
    mixed = unet_apply(unet, x, t, tokens, mask, jnp.array([True, False]))
    np.testing.assert_allclose(mixed[1], cond[1], atol=1e-5)
    assert float(jnp.max(jnp.abs(mixed[0] - cond[0]))) > 1e-4
    # a dropped row does not depend on the text it replaced
    other = unet_apply(unet, x, t, 3.0 * tokens[::-1], mask[::-1], jnp.array([True, False]))
    np.testing.assert_allclose(other[0], mixed[0], atol=1e-5)


def test_denoising_loss_gradients_reach_all_unet_params(unet, text):
    tokens, mask = text
    tokens, mask = jnp.concatenate([tokens, tokens]), jnp.concatenate([mask, mask])
    x0 = jax.random.normal(jax.random.key(0), (4, 16, 16, 8))
    schedule = diffusion.make_schedule("cosine", 1000)

    @nnx.jit
    def grads_of(model):
        loss_fn = lambda m: diffusion.denoising_loss(m, schedule, x0, tokens, mask, jax.random.key(2),
                                                     cond_drop_prob=0.5)
        return nnx.value_and_grad(loss_fn, has_aux=True)(model)

    (loss, parts), grads = grads_of(unet)
    assert np.isfinite(float(loss))
    assert 0 < float(parts["dropped_fraction"]) < 1  # this key drops some rows: the null token is used
    assert_all_grads_nonzero(grads)


# ----------------------------------------------------------------------------------- schedule, noising


def test_cosine_schedule_properties():
    schedule = diffusion.make_schedule("cosine", 1000)
    betas, alpha_bar = np.asarray(schedule.betas), np.asarray(schedule.alphas_cumprod)
    assert betas.shape == alpha_bar.shape == (1000,)
    assert np.all(betas > 0) and np.all(betas <= 0.999) and betas[-1] == pytest.approx(0.999)
    assert np.all(np.diff(alpha_bar) < 0)
    assert alpha_bar[0] > 0.9999 and alpha_bar[-1] < 1e-6
    # unclipped region follows f(t) / f(0), f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 250, 500, 900):
        assert alpha_bar[t] == pytest.approx(f(t + 1) / f(0), rel=1e-4)
    linear = diffusion.make_schedule("linear", 1000)
    assert float(linear.betas[0]) == pytest.approx(1e-4) and float(linear.betas[-1]) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="schedule"):
        diffusion.make_schedule("sigmoid")


def test_q_sample_statistics():
    schedule = diffusion.make_schedule("cosine", 1000)
    n = 20000
    x0 = jnp.full((n, 3), 0.7)
    for t_value in (10, 500, 900):
        t = jnp.full((n,), t_value)
        noise = jax.random.normal(jax.random.key(t_value), x0.shape)
        x_t = np.asarray(diffusion.q_sample(schedule, x0, t, noise))
        alpha_bar = float(schedule.alphas_cumprod[t_value])
        assert x_t.mean() == pytest.approx(math.sqrt(alpha_bar) * 0.7, abs=0.01)
        assert x_t.std() == pytest.approx(math.sqrt(1 - alpha_bar), rel=0.02)


def oracle_eps_fn(schedule, x0):
    """An epsilon predictor that returns the true noise of x_t for the known clean sample x0."""
    def eps_fn(x_t, t):
        alpha_bar = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1 - alpha_bar)
    return eps_fn


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_with_perfect_predictor_recover_x0(sampler):
    schedule = diffusion.make_schedule("cosine", 1000)
    x0 = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3), minval=-1, maxval=1)
    eps_fn = oracle_eps_fn(schedule, x0)
    if sampler == "ddim":
        run = jax.jit(lambda key: diffusion.ddim_sample(eps_fn, schedule, key, x0.shape, num_steps=50, eta=0.0))
    else:
        run = jax.jit(lambda key: diffusion.ddpm_sample(eps_fn, schedule, key, x0.shape))
    np.testing.assert_allclose(run(jax.random.key(1)), x0, atol=2e-3)


def test_ddim_with_eta_one_over_all_steps_is_ddpm():
    schedule = diffusion.make_schedule("cosine", 40)
    eps_fn = lambda x, t: 0.3 * x + 0.01 * t.astype(jnp.float32).reshape(-1, 1, 1, 1)
    key = jax.random.key(3)
    ddpm = diffusion.ddpm_sample(eps_fn, schedule, key, (2, 3, 3, 2))
    ddim = diffusion.ddim_sample(eps_fn, schedule, key, (2, 3, 3, 2), num_steps=40, eta=1.0)
    np.testing.assert_allclose(ddim, ddpm, rtol=1e-3, atol=1e-3)


def test_ddim_timesteps():
    steps = diffusion.ddim_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 0 and steps[-1] == 999 and np.all(np.diff(steps) > 0)
    with pytest.raises(ValueError, match="num_steps"):
        diffusion.ddim_timesteps(1000, 1001)


def test_clip_x0_bounds_the_sample():
    schedule = diffusion.make_schedule("cosine", 1000)
    eps_fn = oracle_eps_fn(schedule, jnp.full((1, 2, 2, 1), 10.0))  # wants x0 = 10, far out of range
    out = diffusion.ddim_sample(eps_fn, schedule, jax.random.key(0), (1, 2, 2, 1), num_steps=20, clip_x0=3.0)
    np.testing.assert_allclose(out, 3.0, atol=1e-4)


# ------------------------------------------------------------------------- guidance, loss, sampling API


def test_cfg_scale_one_is_conditional_and_zero_unconditional(unet, text, unet_apply):
    tokens, mask = text
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 8))
    t = jnp.array([400], jnp.int32)
    twice = lambda a: jnp.concatenate([a, a])
    cond = unet_apply(unet, twice(x), twice(t), twice(tokens[:1]), twice(mask[:1]), KEEP)[:1]
    uncond = unet_apply(unet, twice(x), twice(t), twice(tokens[:1]), twice(mask[:1]), ~KEEP)[:1]
    # the guided function batches [conditional, null-text] rows into one model call
    model = lambda x, t, c, m, drop_context: unet_apply(unet, x, t, c, m, drop_context)
    guided = lambda scale: diffusion.guided_eps_fn(model, tokens[:1], mask[:1], scale)(x, t)
    np.testing.assert_allclose(guided(1.0), cond, atol=1e-5)
    np.testing.assert_allclose(guided(0.0), uncond, atol=1e-5)
    np.testing.assert_allclose(guided(3.0), uncond + 3.0 * (cond - uncond), atol=1e-4)
    assert float(jnp.max(jnp.abs(cond - uncond))) > 1e-4


def test_denoising_loss_is_zero_for_an_oracle_and_huber_for_a_zero_model():
    schedule = diffusion.make_schedule("cosine", 1000)
    x0 = jax.random.uniform(jax.random.key(0), (64, 8, 8, 4), minval=-1, maxval=1)

    def oracle(x_t, t, context, mask, *, drop_context, deterministic):
        alpha_bar = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1 - alpha_bar)

    loss_of = jax.jit(lambda model: diffusion.denoising_loss(model, schedule, x0, None, None, jax.random.key(1)),
                      static_argnums=0)
    loss, parts = loss_of(oracle)
    assert float(loss) < 1e-4  # the model saw x_t = q_sample(x0, t, noise) and was scored against noise
    zero = lambda x_t, t, context, mask, **_: jnp.zeros_like(x_t)
    loss, parts = loss_of(zero)
    # E[huber_1(z)], z ~ N(0, 1): 0.5 E[z^2; |z| < 1] + E[|z| - 0.5; |z| >= 1]
    phi, tail = math.exp(-0.5) / math.sqrt(2 * math.pi), math.erfc(1 / math.sqrt(2))
    expected = 0.5 * ((1 - tail) - 2 * phi) + (2 * phi - 0.5 * tail)
    assert float(loss) == pytest.approx(expected, rel=0.03)
    assert float(parts["mse"]) == pytest.approx(1.0, rel=0.03)


def test_denoising_loss_drops_text_at_the_given_rate():
    n = 4000
    zero_model = lambda x_t, t, context, mask, *, drop_context, deterministic: jnp.zeros_like(x_t)
    _, parts = diffusion.denoising_loss(zero_model, diffusion.make_schedule("cosine", 10), jnp.zeros((n, 1, 1, 1)),
                                        jnp.zeros((n, 1, 4)), jnp.ones((n, 1)), jax.random.key(0),
                                        cond_drop_prob=0.25)
    assert float(parts["dropped_fraction"]) == pytest.approx(0.25, abs=0.03)
    with pytest.raises(ValueError, match="cond_drop_prob"):
        diffusion.denoising_loss(zero_model, diffusion.make_schedule("cosine", 10), jnp.zeros((1, 1, 1, 1)),
                                 None, None, jax.random.key(0), cond_drop_prob=1.5)


def test_sample_api_runs_jitted_with_guidance(unet, text):
    tokens, mask = text
    schedule = diffusion.make_schedule("cosine", 1000)
    run = nnx.jit(lambda m, key: diffusion.sample(m, schedule, key, (2, 16, 16, 8), tokens, mask,
                                                  num_steps=3, guidance_scale=2.0, clip_x0=3.0))
    latents = run(unet, jax.random.key(0))
    assert latents.shape == (2, 16, 16, 8) and bool(jnp.all(jnp.isfinite(latents)))
    with pytest.raises(ValueError, match="sampler"):
        diffusion.sample(unet, schedule, jax.random.key(0), (2, 16, 16, 8), tokens, mask, method="euler")
