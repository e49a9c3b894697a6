"""Seed 000/001 encoder–attention–decoder model: geometry, parity with PyTorch layers, masking, train/eval
behaviour, gradients, and the L1 / CLIP losses."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pikagen_jax.losses.l1_clip import (
    CLIP_MEAN,
    CLIP_STD,
    clip_image_preprocess,
    clip_loss,
    combined,
    cosine_similarity,
    l1_loss,
)
from pikagen_jax.models.l1_decoder import TorchConvTranspose, final_conv_padding, torch_conv_transpose_size
from pikagen_jax.models.l1_encoder import AttentionBlock, TransformerEncoderLayer, masked_mean_pool
from pikagen_jax.models.l1_model import L1Model, L1ModelConfig
from pikagen_jax.models.params import count_params
from tests.tolerances import assert_within, path_tolerance, sum_tolerance, transformer_path

torch = pytest.importorskip("torch")

# Tiny BERT vocabulary is 99; ids past the first padding position are 0 (right padding).
IDS = np.array([[1, 7, 12, 40, 2, 0, 0, 0], [1, 9, 2, 0, 0, 0, 0, 0]], dtype=np.int32)
MASK = (IDS > 0).astype(np.int32)
QUIET = dict(encoder_dropout=0.0, attention_dropout=0.0, decoder_dropout=0.0, bert_dropout=0.0)
# 8 -> 16 -> 32 -> 36 px: the seed's geometry with two stages; no dropout, BERT-output noise on.
SMALL = dataclasses.replace(L1ModelConfig.tiny(image_size=36), decoder_channels=(8, 4, 4), noise_std=0.5, **QUIET)


def _rngs(seed: int = 0, **streams: int) -> nnx.Rngs:
    """RBG keys: XLA's RngBitGenerator compiles in a fraction of threefry's time on CPU."""
    key = lambda s: jax.random.key(s, impl="rbg")
    return nnx.Rngs(key(seed), **{name: key(s) for name, s in streams.items()})


def _z(batch=2, dim=4, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, dim))


@nnx.jit
def _apply(model, ids, mask, z):
    return model(ids, mask, z)


def _run(model, ids=IDS, mask=MASK):
    return np.asarray(_apply(model, jnp.asarray(ids), jnp.asarray(mask), _z(ids.shape[0])))


@pytest.fixture(scope="module")
def small_model():
    return L1Model(SMALL, rngs=_rngs(0, noise=1))


# --- geometry -------------------------------------------------------------------------------------------

def test_final_conv_padding_reaches_215_from_128():
    padding, output_padding = final_conv_padding(128, 215, kernel=4)
    assert (padding, output_padding) == (22, 1)
    assert torch_conv_transpose_size(128, 4, 2, 22, 1) == 215
    assert torch_conv_transpose_size(128, 4, 2, 22, 0) == 214
    with pytest.raises(ValueError, match="add a stage"):
        final_conv_padding(64, 215, kernel=4)


@pytest.mark.parametrize("in_size,kernel,stride,padding,output_padding",
                         [(5, 4, 2, 1, 0), (24, 4, 2, 22, 1), (6, 3, 2, 1, 1), (7, 4, 2, 5, 1), (4, 4, 2, 0, 1),
                          (5, 5, 3, 1, 2)])
def test_conv_transpose_matches_torch(in_size, kernel, stride, padding, output_padding):
    layer = TorchConvTranspose(3, 2, kernel, stride, padding=padding, output_padding=output_padding,
                               rngs=nnx.Rngs(0))
    reference = torch.nn.ConvTranspose2d(3, 2, kernel, stride, padding=padding, output_padding=output_padding)
    layer.kernel[...] = jnp.asarray(reference.weight.detach().numpy().transpose(2, 3, 0, 1))
    layer.bias[...] = jnp.asarray(reference.bias.detach().numpy())
    x = np.random.RandomState(0).randn(2, in_size, in_size + 1, 3).astype(np.float32)
    x_torch = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    expected_t = reference(x_torch)
    expected = expected_t.detach().numpy().transpose(0, 2, 3, 1)
    out = np.asarray(layer(jnp.asarray(x)))
    assert out.shape == expected.shape
    assert out.shape[1] == layer.output_size(in_size)
    # gradients (input, kernel, bias) of a weighted sum equal PyTorch autograd's
    weights = np.random.RandomState(1).randn(*expected.shape).astype(np.float32)
    (expected_t * torch.tensor(weights.transpose(0, 3, 1, 2))).sum().backward()
    # Each value is a sum (tests/tolerances.py); its exact Σ|t_i| comes from the same layer run on |x| with
    # |kernel| and no bias, and the gradients of Σ |weights| * that: input gradient Σ|w||g| (kernel*kernel*2
    # terms at most), kernel gradient Σ|x||g| (over batch and output pixels), bias gradient Σ|g|.
    absolute = torch.nn.ConvTranspose2d(3, 2, kernel, stride, padding=padding, output_padding=output_padding,
                                        bias=False)
    with torch.no_grad():
        absolute.weight.copy_(reference.weight.abs())
    x_abs = torch.tensor(np.abs(x).transpose(0, 3, 1, 2), requires_grad=True)
    abs_out = absolute(x_abs)
    (abs_out * torch.tensor(np.abs(weights).transpose(0, 3, 1, 2))).sum().backward()
    nhwc = lambda t: t.detach().numpy().transpose(0, 2, 3, 1)  # noqa: E731
    pixels = expected.shape[0] * expected.shape[1] * expected.shape[2]
    assert_within(out, expected, sum_tolerance(kernel * kernel * 3 + 1, nhwc(abs_out) + np.abs(expected)), "output")

    def loss(layer, x):
        return jnp.sum(layer(x) * weights)

    grads, grad_x = nnx.grad(loss, argnums=(0, 1))(layer, jnp.asarray(x))
    assert_within(grad_x, nhwc(x_torch.grad), sum_tolerance(kernel * kernel * 2, nhwc(x_abs.grad)), "input gradient")
    assert_within(grads["kernel"][...], reference.weight.grad.numpy().transpose(2, 3, 0, 1),
                  sum_tolerance(pixels, absolute.weight.grad.numpy().transpose(2, 3, 0, 1)), "kernel gradient")
    assert_within(grads["bias"][...], reference.bias.grad.numpy(), sum_tolerance(pixels, np.abs(weights).sum((0, 1, 2))),
                  "bias gradient")


def test_seed_001_model_full_size_shape_and_schedule():
    config = L1ModelConfig()  # seed 001 final configuration, BERT-mini shape
    model = nnx.eval_shape(lambda: L1Model(config, rngs=nnx.Rngs(0)))
    graph, state = nnx.split(model)
    ids = jax.ShapeDtypeStruct((1, 32), jnp.int32)
    out = jax.eval_shape(lambda s, i, m: nnx.merge(graph, s)(i, m), state, ids, ids)
    assert out.shape == (1, 215, 215, 3) and out.dtype == jnp.float32
    assert model.encoder.width == 256 and len(model.encoder.layers) == 2
    assert model.encoder.layers[0].linear1.kernel.shape == (256, 1024)
    assert model.decoder.input_proj.kernel.shape == (256 + 100, 8 * 8 * 1024)
    conv_shapes = [stage.conv.kernel.shape for stage in model.decoder.stages]
    assert conv_shapes == [(4, 4, 1024, 512), (4, 4, 512, 256), (4, 4, 256, 128), (4, 4, 128, 64)]
    assert (model.decoder.to_rgb.padding, model.decoder.to_rgb.output_padding) == (22, 1)
    assert 40e6 < count_params(model) < 60e6


# --- encoder / attention parity ---------------------------------------------------------------------------

def test_encoder_layer_matches_torch_post_ln_relu():
    width, heads, ff = 8, 2, 16
    layer = TransformerEncoderLayer(width, heads, ff, dropout=0.0, rngs=nnx.Rngs(0))
    torch.manual_seed(0)
    reference = torch.nn.TransformerEncoderLayer(width, heads, ff, dropout=0.0, batch_first=True).eval()
    as_np = lambda t: jnp.asarray(t.detach().numpy())
    w_q, w_k, w_v = reference.self_attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = reference.self_attn.in_proj_bias.chunk(3)
    attn = layer.self_attention
    for dense, w, b in ((attn.query, w_q, b_q), (attn.key, w_k, b_k), (attn.value, w_v, b_v),
                        (attn.out, reference.self_attn.out_proj.weight, reference.self_attn.out_proj.bias),
                        (layer.linear1, reference.linear1.weight, reference.linear1.bias),
                        (layer.linear2, reference.linear2.weight, reference.linear2.bias)):
        dense.kernel[...] = as_np(w).T
        dense.bias[...] = as_np(b)
    for norm, ref in ((layer.norm1, reference.norm1), (layer.norm2, reference.norm2)):
        norm.scale[...] = as_np(ref.weight) + 0.1  # non-trivial affine
        ref.weight.data += 0.1
        norm.bias[...] = as_np(ref.bias)
    x = np.random.RandomState(1).randn(2, 8, width).astype(np.float32)
    # Parameters require grad, so torch takes its reference (non fast-path) route.
    expected = reference(torch.tensor(x), src_key_padding_mask=torch.tensor(MASK == 0)).detach().numpy()
    out = np.asarray(layer(jnp.asarray(x), jnp.asarray(MASK), deterministic=True))
    # One post-LN layer of 8 (FF 16, 2 heads of 4) over 8 tokens, LayerNorm'd outputs (scale 1.1 = the affine)
    tol = path_tolerance(transformer_path(width=8, intermediate=16, head_dim=4, tokens=8, layers=1), 1.1)
    assert_within(out, expected, tol, "encoder layer vs torch")


def test_masked_mean_pool_matches_numpy():
    tokens = np.random.RandomState(2).randn(2, 8, 5).astype(np.float32)
    expected = np.stack([tokens[b][MASK[b] > 0].mean(0) for b in range(2)])
    np.testing.assert_allclose(np.asarray(masked_mean_pool(jnp.asarray(tokens), jnp.asarray(MASK))), expected,
                               rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(masked_mean_pool(jnp.asarray(tokens), jnp.zeros((2, 8)))) == 0)


def test_attention_block_matches_numpy_reference():
    token_dim, width, out_dim, heads = 6, 8, 3, 2
    block = AttentionBlock(token_dim, width, out_dim, num_heads=heads, rngs=nnx.Rngs(3))
    tokens = np.random.RandomState(4).randn(2, 8, token_dim).astype(np.float32)
    out = np.asarray(block(jnp.asarray(tokens), jnp.asarray(MASK), deterministic=True))

    p = lambda dense: (np.asarray(dense.kernel[...]), np.asarray(dense.bias[...]))
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (p(block.attention.query), p(block.attention.key),
                                              p(block.attention.value), p(block.attention.out))
    expected = []
    for b in range(2):
        real = tokens[b][MASK[b] > 0]
        q = (real.mean(0) @ wq + bq).reshape(heads, -1)
        k = (real @ wk + bk).reshape(len(real), heads, -1)
        v = (real @ wv + bv).reshape(len(real), heads, -1)
        logits = np.einsum("hd,khd->hk", q, k) / np.sqrt(width // heads)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        expected.append(np.einsum("hk,khd->hd", weights, v).reshape(-1) @ wo + bo)
    np.testing.assert_allclose(out, np.stack(expected), rtol=1e-5, atol=1e-5)


# --- the whole model --------------------------------------------------------------------------------------
# --- the whole model --------------------------------------------------------------------------------------

def test_forward_215_shape_and_range():
    model = L1Model(L1ModelConfig.tiny(), rngs=_rngs(0))  # seed geometry, 4 stages, narrow widths
    model.eval()
    out = _run(model, IDS[:1], MASK[:1])
    assert out.shape == (1, 215, 215, 3) and out.dtype == np.float32
    assert np.all(np.abs(out) < 1.0) and out.std() > 1e-3


def test_padding_tokens_do_not_change_output(small_model):
    small_model.eval()
    other_ids = np.where(MASK > 0, IDS, np.random.RandomState(5).randint(3, 99, IDS.shape)).astype(np.int32)
    assert not np.array_equal(other_ids, IDS)
    out = _run(small_model)
    np.testing.assert_allclose(_run(small_model, other_ids), out, atol=1e-6)
    changed_ids = IDS.copy()
    changed_ids[0, 1] = 50  # a real token: the output must move
    assert np.abs(_run(small_model, changed_ids) - out).max() > 1e-4


def test_noise_only_in_training():
    # SMALL has no dropout: with equal params (equal eval outputs), only the 'noise' stream differs.
    model_a, model_b, model_a2 = (L1Model(SMALL, rngs=_rngs(0, noise=seed)) for seed in (1, 2, 1))
    for model in (model_a, model_b):
        model.eval()
    eval_a = _run(model_a)
    np.testing.assert_array_equal(_run(model_a), eval_a)
    np.testing.assert_array_equal(_run(model_b), eval_a)  # same params, noise off in eval

    for model in (model_a, model_b, model_a2):
        model.train()
    train_a, train_b, train_a2 = (_run(m) for m in (model_a, model_b, model_a2))
    assert np.abs(train_a - train_b).max() > 1e-3  # different noise streams
    np.testing.assert_array_equal(train_a, train_a2)  # same stream -> reproducible


def test_train_eval_switches_batch_norm_statistics(small_model):
    stats = lambda: np.asarray(small_model.decoder.stages[0].norm.mean[...]).copy()
    small_model.eval()
    before = stats()
    _run(small_model)
    np.testing.assert_array_equal(stats(), before)
    small_model.train()
    _run(small_model)
    assert np.abs(stats() - before).max() > 0
    small_model.eval()


def test_gradients_reach_every_part(small_model):
    small_model.train()
    target = jax.random.uniform(jax.random.key(1), (2, 36, 36, 3), minval=-1, maxval=1)
    loss = lambda m: l1_loss(m(jnp.asarray(IDS), jnp.asarray(MASK), _z()), target)
    grads = nnx.jit(nnx.grad(loss))(small_model)
    small_model.eval()
    squares = [(".".join(map(str, path)), float(jnp.sum(jnp.square(value[...]))))
               for path, value in nnx.to_flat_state(grads)]
    groups = ["encoder.bert.embeddings", "encoder.bert.layers", "encoder.layers.0", "attention.attention.query",
              "attention.attention.value", "decoder.input_proj", "decoder.stages.0.conv", "decoder.stages.1.norm",
              "decoder.stages.0.attention.attention.query", "decoder.stages.1.attention.attention.key",
              "decoder.to_rgb"]
    for group in groups:
        assert sum(sq for name, sq in squares if name.startswith(group)) > 0, f"no gradient reaches {group}"


def test_bad_inputs_raise_clear_errors(small_model):
    with pytest.raises(ValueError, match="z must be"):
        small_model(jnp.asarray(IDS), jnp.asarray(MASK), jnp.zeros((2, 7)))
    with pytest.raises(ValueError, match="attention_mask shape"):
        small_model(jnp.asarray(IDS), jnp.asarray(MASK[:, :4]))
    with pytest.raises(ValueError, match="unknown L1 model config keys"):
        L1ModelConfig.from_dict({"encoder_layer": 2})
    assert L1ModelConfig.from_dict({"decoder_channels": [16, 8]}).decoder_channels == (16, 8)
    with pytest.raises(ValueError, match="add a stage"):
        L1Model(dataclasses.replace(SMALL, image_size=80), rngs=_rngs(0))  # two stages reach 66 px at most


# --- losses -----------------------------------------------------------------------------------------------

def test_l1_and_clip_losses_on_hand_values():
    pred = jnp.array([[0.5, -1.0], [0.0, 1.0]])
    target = jnp.array([[0.0, -0.5], [1.0, 1.0]])
    assert float(l1_loss(pred, target)) == pytest.approx((0.5 + 0.5 + 1.0 + 0.0) / 4)
    image = jnp.array([[1.0, 0.0], [3.0, 4.0]])
    text = jnp.array([[2.0, 0.0], [-4.0, 3.0]])  # cos = 1 and 0
    np.testing.assert_allclose(np.asarray(cosine_similarity(image, text)), [1.0, 0.0], atol=1e-7)
    assert float(clip_loss(image, text)) == pytest.approx(0.5)
    assert float(combined(pred, target, image, text, lam=0.1)) == pytest.approx(0.5 + 0.05)
    with pytest.raises(ValueError, match="equal shapes"):
        l1_loss(pred, target[:1])


def test_clip_preprocess_normalisation_and_resize():
    white = jnp.ones((1, 224, 224, 3))
    np.testing.assert_allclose(np.asarray(clip_image_preprocess(white))[0, 0, 0],
                               (1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD), rtol=1e-6)
    out = clip_image_preprocess(jnp.zeros((2, 215, 180, 3)))
    assert out.shape == (2, 224, 224, 3)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to((0.5 - np.array(CLIP_MEAN)) / np.array(CLIP_STD),
                                                                (2, 224, 224, 3)), atol=1e-5)
    with pytest.raises(ValueError, match="NHWC"):
        clip_image_preprocess(jnp.zeros((1, 3, 224, 224)))


def test_clip_preprocess_matches_hugging_face_processor():
    transformers = pytest.importorskip("transformers")
    yy, xx = np.meshgrid(np.linspace(0, 1, 215), np.linspace(0, 1, 180), indexing="ij")
    image = np.stack([127.5 + 100 * np.sin(6 * yy), 127.5 + 100 * np.cos(5 * xx), 255 * yy * xx], -1)
    image = image[None].round().astype(np.uint8)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 224},
                                                crop_size={"height": 224, "width": 224})
    expected = processor(images=list(image), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    out = np.asarray(clip_image_preprocess(jnp.asarray(image / 127.5 - 1.0, jnp.float32)))
    # The processor rounds to 8 bits after resizing: one level is 1/255/0.26 ≈ 0.015 after normalisation.
    assert np.abs(out - expected).max() < 0.02 and np.abs(out - expected).mean() < 0.005


# --- output prior (our improvement over the seed's tanh output) -------------------------------------------

def test_output_prior_starts_at_the_prior_and_learns_a_clipped_residual():
    config = dataclasses.replace(SMALL, output_prior="train_median", noise_std=0.0)
    model = L1Model(config, rngs=_rngs(0))
    prior = jax.random.uniform(jax.random.key(3), (36, 36, 3), minval=-1, maxval=1).at[:4].set(1.0)
    model.decoder.set_output_prior(prior)
    assert not any("output_prior" in ".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    model.eval()
    np.testing.assert_allclose(_run(model), np.broadcast_to(prior, (2, 36, 36, 3)), atol=1e-6)  # zero-init residual

    model.train()
    target = jnp.broadcast_to(jnp.clip(prior - 0.4, -1, 1), (2, 36, 36, 3))  # a residual the decoder can learn
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: l1_loss(m(jnp.asarray(IDS), jnp.asarray(MASK), _z()), target))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    out = _run(model)
    assert out.min() >= -1.0 and out.max() <= 1.0  # the forward pass clips to the image range
    np.testing.assert_array_equal(np.asarray(model.decoder.output_prior[...]), np.asarray(prior))  # not trained
    with pytest.raises(ValueError, match="output_prior"):
        L1Model(SMALL, rngs=_rngs(0)).decoder.set_output_prior(prior)
    with pytest.raises(ValueError, match="output_prior must be one of"):
        dataclasses.replace(SMALL, output_prior="mean")
