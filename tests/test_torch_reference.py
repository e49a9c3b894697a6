"""The PyTorch references used by bench/bench_vs_torch.py mirror our models: equal parameter counts per
module (seed-002 cGAN at 128 px, BERT-mini text encoder, seed-001 L1 model) and equal outputs of the GAN
networks when our weights are copied into them (tiny widths)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bench.torch_reference import gan as tgan  # noqa: E402
from bench.torch_reference import l1 as tl1  # noqa: E402
from pikagen_jax.models.bert import BertConfig, BertModel  # noqa: E402
from pikagen_jax.models.gan import Discriminator, Generator  # noqa: E402
from pikagen_jax.models.l1_model import L1Model, L1ModelConfig  # noqa: E402
from pikagen_jax.models.params import count_params  # noqa: E402
from pikagen_jax.models.text_encoder import TextEncoder  # noqa: E402
from tests.tolerances import assert_within, max_abs, path_tolerance  # noqa: E402


def abstract(make):
    """Our module as ShapeDtypeStructs (no weights allocated)."""
    return nnx.eval_shape(make)


def on_meta(make):
    """A torch module on the meta device (no weights allocated)."""
    with torch.device("meta"):
        return make()


def count(module, filter_=nnx.Param) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, filter_)))


# -------------------------------------------------------------------------------- parameter counts: GAN


@pytest.mark.parametrize("image_size", [64, 128])
def test_gan_networks_have_equal_parameter_counts(image_size):
    gen = abstract(lambda: Generator(image_size, z_dim=100, rngs=nnx.Rngs(0)))
    disc = abstract(lambda: Discriminator(image_size, rngs=nnx.Rngs(0)))
    t_gen = on_meta(lambda: tgan.TorchGenerator(image_size, z_dim=100))
    t_disc = on_meta(lambda: tgan.TorchDiscriminator(image_size))
    assert count(gen) == tgan.num_params(t_gen) > 1_000_000
    assert count(disc) == tgan.num_params(t_disc) > 1_000_000
    for ours, theirs in zip(gen.stages, t_gen.stages):  # per stage, not just in total
        assert count(ours) == tgan.num_params(theirs)
    for ours, theirs in zip(disc.blocks, t_disc.blocks):
        assert count(ours) == tgan.num_params(theirs)


def test_text_encoder_bert_mini_equal_in_total_and_under_partial_finetuning():
    ours = abstract(lambda: TextEncoder("bert", "bert_mini", out_dim=256, finetune="partial", rngs=nnx.Rngs(0)))
    theirs = on_meta(lambda: tgan.TorchTextEncoder(tgan.bert_mini_config(), finetune="partial"))
    assert ours.token_proj is None and ours.sentence_proj is None  # 256 wide: no projection heads
    assert count(ours) == tgan.num_params(theirs) == 11_170_560
    trained = count(ours, ours.trainable_filter())
    assert trained == tgan.num_params(theirs, trainable_only=True)
    assert 0 < trained < count(ours)  # partial really freezes something (position embeddings, layers 0-2)


# --------------------------------------------------------------------------------- parameter counts: L1


def test_l1_model_equal_per_module():
    ours = abstract(lambda: L1Model(L1ModelConfig(), rngs=nnx.Rngs(0)))
    theirs = on_meta(tl1.TorchL1Model)
    pairs = {
        "bert": (ours.encoder.bert, theirs.encoder.bert),
        "encoder stack": (ours.encoder.layers, theirs.encoder.layers),
        "attention block": (ours.attention, theirs.attention),
        "decoder": (ours.decoder, theirs.decoder),
        "decoder stage 0": (ours.decoder.stages[0], theirs.decoder.stages[0]),
        "decoder to_rgb": (ours.decoder.to_rgb, theirs.decoder.to_rgb),
    }
    for name, (a, b) in pairs.items():
        assert count(a) == tgan.num_params(b), name
    assert count_params(ours) == tgan.num_params(theirs) > 40_000_000


def test_l1_final_layer_reaches_215_pixels():
    layer = tl1.TorchL1Model(decoder_channels=(4, 4, 4, 4, 4), attention_dim=8, z_dim=4).decoder.to_rgb
    assert (layer.padding, layer.output_padding) == ((22, 22), (1, 1))
    assert layer(torch.zeros(1, 4, 128, 128)).shape == (1, 3, 215, 215)


def test_bert_reference_is_hugging_face_bert_mini():
    ours = abstract(lambda: BertModel(BertConfig.bert_mini(), rngs=nnx.Rngs(0)))
    theirs = on_meta(lambda: tgan.TorchTextEncoder(finetune="none")).bert
    assert count(ours) == tgan.num_params(theirs)
    assert tgan.num_params(on_meta(lambda: tgan.TorchTextEncoder(finetune="none")), trainable_only=True) == 0


# ------------------------------------------------------------------------- numerical parity (tiny GAN)


TINY = dict(base_channels=32, max_channels=64)
B, T, DIM = 3, 5, 16

# The sums on the longest paths of the tiny 16 px networks (tests/tolerances.py), for float32 parity with
# the torch reference (oneDNN) on any CPU. Generator (widths 64, 64, 32; GroupNorm 8 groups; attention 2 x 8
# over 5 tokens): the 24-wide projection; per stage the upsample (2x2 taps) and its 3x3 conv (576), the
# residual block's convs and GroupNorms (mean and variance over the group's channels x pixels), the attention
# (q or folded query-keys, norms, logits, softmax, values, output); the head's GroupNorm and 3x3 conv.
GENERATOR_PATH = ([24] + [4, 576, 576, 1024, 576, 1024, 135] + [4, 576, 288, 2048, 288, 2048, 119]
                  + [2048, 288])
# Discriminator (widths 32, 64, 64): the convs on the main path (stem 27, 288, 576, the 4x4 down 1024, 576,
# 576, 1024, the head's 3x3 over 64 + 16 channels 720 and 4x4 1024) and each layer's spectral-norm sigma
# (W^T u, |v|, W v, |u|, u.Wv: 2 in*k*k + 3 out terms), whose error scales the whole layer.
DISCRIMINATOR_PATH = ([27, 288, 576, 1024, 576, 576, 1024, 720, 1024]
                      + [150, 768, 1344, 2240, 1344, 1344, 2240, 1632, 2051])


def copy_into_torch(ours: nnx.Module, theirs: torch.nn.Module) -> None:
    """Writes our parameters (and spectral-norm u) into the torch module, converting layouts."""
    targets = dict(theirs.named_parameters()) | dict(theirs.named_buffers())
    for path, variable in nnx.to_flat_state(nnx.state(ours)):
        *module_path, leaf = (str(p) for p in path)
        value = np.asarray(variable.get_value())
        prefix = ".".join(module_path)
        if leaf == "kernel" and isinstance(theirs.get_submodule(prefix), torch.nn.ConvTranspose2d):
            value = value[::-1, ::-1].transpose(2, 3, 0, 1)  # flax's unflipped HWIO -> torch [in, out, kh, kw]
        elif leaf == "kernel":
            value = value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)  # [in,out] / HWIO -> torch
        names = {"kernel": ["weight_orig", "weight"], "scale": ["weight"], "bias": ["bias"], "u": ["weight_u"]}[leaf]
        name = next(f"{prefix}.{n}" for n in names if f"{prefix}.{n}" in targets)
        with torch.no_grad():
            targets[name].copy_(torch.tensor(np.ascontiguousarray(value)))


def text_batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    mask = np.ones((B, T), np.int32)
    mask[:, -2:] = 0
    mask[0, -1] = 1
    return (rng.normal(size=(B, DIM)).astype(np.float32), rng.normal(size=(B, T, DIM)).astype(np.float32), mask)


@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
def test_generator_matches_torch_reference(upsample):
    gen = Generator(16, z_dim=8, sentence_dim=DIM, token_dim=DIM, num_groups=8, num_heads=2, head_dim=8,
                    upsample=upsample, **TINY, rngs=nnx.Rngs(0))
    t_gen = tgan.TorchGenerator(16, z_dim=8, sentence_dim=DIM, token_dim=DIM, num_groups=8, num_heads=2, head_dim=8,
                                upsample=upsample, **TINY)
    copy_into_torch(gen, t_gen)
    sentence, tokens, mask = text_batch()
    z = np.random.default_rng(1).normal(size=(B, 8)).astype(np.float32)
    ours = np.asarray(nnx.jit(lambda g, *a: g(*a))(gen, z, sentence, tokens, mask))
    with torch.no_grad():
        theirs = t_gen(*(torch.from_numpy(a) for a in (z, sentence, tokens, mask))).permute(0, 2, 3, 1).numpy()
    assert ours.shape == (B, 16, 16, 3) and np.std(ours) > 1e-3
    assert_within(ours, theirs, path_tolerance(GENERATOR_PATH), "generator vs torch")  # GroupNorm'd: order one


@pytest.mark.parametrize("downsample", ["strided", "avgpool"])
def test_discriminator_matches_torch_spectral_norm(downsample):
    disc = Discriminator(16, sentence_dim=DIM, downsample=downsample, **TINY, rngs=nnx.Rngs(0))
    t_disc = tgan.TorchDiscriminator(16, sentence_dim=DIM, downsample=downsample, **TINY)
    copy_into_torch(disc, t_disc)
    images = np.random.default_rng(2).uniform(-1, 1, (B, 16, 16, 3)).astype(np.float32)
    sentence = text_batch()[0]
    ours = np.asarray(nnx.jit(lambda d, *a: d(*a))(disc, images, sentence))  # training mode: one power iteration
    with torch.no_grad():
        theirs = t_disc(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(sentence)).numpy()
    # Spectral norm keeps every layer's gain <= 1: activations stay of the inputs' order (images in [-1, 1]).
    assert_within(ours, theirs, path_tolerance(DISCRIMINATOR_PATH, max(1.0, max_abs(theirs))), "logits vs torch")
    # both stored the same updated power-iteration vector (unit length; one iteration of the stem's 150 terms)
    assert_within(disc.stem.u[...], t_disc.stem.weight_u.numpy(), path_tolerance([150]), "stem u")


@pytest.mark.parametrize("downsample", ["strided", "avgpool"])
def test_discriminator_loss_and_gradients_match_torch_dfgan_loss(downsample):
    """Our shared-pass L_D (one power iteration, trunk on 2B, MA-GP from the real pass) equals DF-GAN's,
    computed by the torch reference, in value and in the gradient of every discriminator weight."""
    from pikagen_jax.gan.steps import discriminator_loss

    disc = Discriminator(16, sentence_dim=DIM, downsample=downsample, **TINY, rngs=nnx.Rngs(0))
    t_disc = tgan.TorchDiscriminator(16, sentence_dim=DIM, downsample=downsample, **TINY)
    copy_into_torch(disc, t_disc)
    rng = np.random.default_rng(3)
    images, fake = (rng.uniform(-1, 1, (B, 16, 16, 3)).astype(np.float32) for _ in range(2))
    sentence = text_batch()[0]

    def loss_fn(d):
        return discriminator_loss(d, images, fake, sentence, magp_weight=1.5, magp_power=6.0)

    (loss, parts), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(disc)
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    t_loss = tgan.d_loss_shared(t_disc, nchw(images), nchw(fake), torch.from_numpy(sentence))
    t_loss.backward()
    assert float(parts["ma_gp"]) > 0
    # Hinge terms carry the forward path's error; MA-GP = 1.5 mean |grad|^6 the relative error of the gradient
    # (forward and backward path) six times over.
    logit_scale = max(1.0, abs(float(parts["d_real_logit"])), abs(float(parts["d_fake_logit"])))
    loss_tol = (path_tolerance(DISCRIMINATOR_PATH, 3 * logit_scale)
                + 6 * path_tolerance(2 * DISCRIMINATOR_PATH, float(parts["ma_gp"])))
    assert_within(float(loss), t_loss.item(), loss_tol, "L_D vs torch")
    t_grads = {name: p.grad.numpy() for name, p in t_disc.named_parameters()}
    compared = 0
    for path, grad in nnx.to_flat_state(grads):
        *module_path, leaf = (str(p) for p in path)
        g = np.asarray(grad.get_value())
        g = g.transpose(3, 2, 0, 1) if leaf == "kernel" else g
        theirs = t_grads[".".join(module_path) + (".weight_orig" if leaf == "kernel" else ".bias")]
        # forward, backward and MA-GP's second backward: three passes over the path; the power 6 scales the
        # penalty's share of the gradient's relative error.
        assert_within(g, theirs, path_tolerance(3 * DISCRIMINATOR_PATH, 6 * max(1.0, max_abs(theirs))),
                      ".".join(module_path) + "." + leaf)
        compared += 1
    assert compared == len(t_grads)
    assert_within(disc.stem.u[...], t_disc.stem.weight_u.numpy(), path_tolerance([150]), "stem u")


def test_torch_trainer_separate_and_shared_d_pass_give_the_same_loss():
    """The reference's two ways to compute L_D (3B pass + MA-GP's own eval pass, or DF-GAN's shared pass)
    agree: the eval-mode MA-GP pass uses the power-iteration vectors the training pass just stored."""
    torch.manual_seed(0)
    disc = tgan.TorchDiscriminator(16, sentence_dim=DIM, **TINY)
    images, fake = torch.rand(B, 3, 16, 16) * 2 - 1, torch.rand(B, 3, 16, 16) * 2 - 1
    sentence = torch.from_numpy(text_batch()[0])
    state = {k: v.clone() for k, v in disc.state_dict().items()}
    shared = tgan.d_loss_shared(disc, images, fake, sentence)
    disc.load_state_dict(state)
    logits = disc(torch.cat([images, fake, images]), torch.cat([sentence, sentence, torch.roll(sentence, 1, 0)]))
    separate = tgan.d_hinge_loss(*logits.chunk(3)) + tgan.ma_gp(disc, images, sentence)
    torch.testing.assert_close(shared, separate, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="d_pass"):
        tgan.TorchGanTrainer(None, None, disc, d_pass="both")


def test_torch_gan_step_trains_g_d_and_partial_text_encoder():
    torch.manual_seed(0)
    text = tgan.TorchTextEncoder(tgan.bert_mini_config(num_hidden_layers=1, hidden_size=DIM, num_attention_heads=2,
                                                       intermediate_size=32, vocab_size=50), finetune="partial")
    gen = tgan.TorchGenerator(16, z_dim=8, sentence_dim=DIM, token_dim=DIM, num_groups=8, num_heads=2, head_dim=8,
                              **TINY)
    disc = tgan.TorchDiscriminator(16, sentence_dim=DIM, **TINY)
    trainer = tgan.TorchGanTrainer(text, gen, disc)
    ids, mask = torch.randint(1, 50, (B, T)), torch.from_numpy(text_batch()[2]).long()
    before = [p.detach().clone() for p in (disc.stem.weight_orig, gen.head_conv.weight,
                                           text.bert.embeddings.word_embeddings.weight,
                                           text.bert.embeddings.position_embeddings.weight)]
    metrics = trainer.step(torch.rand(B, 3, 16, 16) * 2 - 1, ids, mask)
    after = (disc.stem.weight_orig, gen.head_conv.weight, text.bert.embeddings.word_embeddings.weight,
             text.bert.embeddings.position_embeddings.weight)
    assert np.isfinite(metrics["d_loss"]) and np.isfinite(metrics["g_loss"])
    assert [not torch.equal(a, b) for a, b in zip(before, after)] == [True, True, True, False]  # positions frozen
    assert trainer.sample(ids, mask, torch.zeros(B, 8)).shape == (B, 3, 16, 16)


def test_torch_l1_step_reaches_215_and_updates_every_module():
    torch.manual_seed(0)
    model = tl1.TorchL1Model(decoder_channels=(8, 8, 4, 4, 4), attention_dim=8, attention_heads=2, z_dim=4)
    trainer = tl1.TorchL1Trainer(model)
    ids, mask = torch.randint(1, 1000, (2, T)), torch.ones(2, T, dtype=torch.long)
    before = [p.detach().clone() for p in (model.encoder.bert.embeddings.word_embeddings.weight,
                                           model.encoder.layers.layers[0].linear1.weight,
                                           model.decoder.to_rgb.weight)]
    loss = trainer.step(ids, mask, torch.zeros(2, 3, 215, 215))
    after = (model.encoder.bert.embeddings.word_embeddings.weight, model.encoder.layers.layers[0].linear1.weight,
             model.decoder.to_rgb.weight)
    assert 0.0 < loss < 1.0
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
