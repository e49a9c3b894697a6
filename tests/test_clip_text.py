"""CLIP text tower port: parity with transformers' CLIPTextModel(WithProjection) and CLIPModel."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pikagen_jax.models import hf_weights
from pikagen_jax.models.clip_text import CLIPTextConfig, CLIPTextModel, hf_param_map
from tests.tolerances import assert_within, bfloat16_tolerance, path_tolerance, transformer_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BOS, EOS, PAD = 97, 98, 1
TINY = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, projection_dim=24, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
# Float32 parity with transformers from the sums on the path (tests/tolerances.py): 2 pre-LN layers of 32 over
# at most 12 tokens and the final LayerNorm (activations of order one); the projection adds one 32-wide sum.
TINY_PATH = transformer_path(width=32, intermediate=37, head_dim=8, tokens=12, layers=2)
TOL = path_tolerance(TINY_PATH)  # 7.6e-5
PROJECTED_TOL = path_tolerance(TINY_PATH + [32])


def _ids_and_mask(lengths=(12, 8, 4), length=12, seed=0, pad=PAD):
    """<bos> text <eos> then padding, one row per length (right padding, as CLIP tokenizers pad)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, BOS, (len(lengths), length))
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, n - 1], ids[row, n:] = BOS, EOS, pad
        mask[row, :n] = 1
    return ids, mask


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _save(model, directory):
    model.eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY))
    return _save(model, tmp_path_factory.mktemp("clip_text")), model


def test_text_model_parity_with_padding(tiny_text_model):
    directory, reference = tiny_text_model
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        out = reference(torch.tensor(ids), attention_mask=torch.tensor(mask))
    ours = CLIPTextModel.from_pretrained(directory)
    assert ours.text_projection is None
    hidden, pooled = ours(jnp.asarray(ids), jnp.asarray(mask))
    assert hidden.shape == (3, 12, 32) and pooled.shape == (3, 32)
    assert_within(hidden, out.last_hidden_state, TOL, "hidden states")
    assert_within(pooled, out.pooler_output, TOL, "pooled (EOS) state")
    np.testing.assert_array_equal(ours.eos_positions(jnp.asarray(ids)), [11, 7, 3])
    # Causality: the states before a row's EOS do not depend on what follows it.
    changed = ids.copy()
    changed[1, 8:] = 5
    hidden_changed, _ = ours(jnp.asarray(changed), None)
    assert_within(hidden_changed[1, :8], hidden[1, :8], TOL, "states before the EOS")  # same program, other mask
    assert _max_diff(hidden_changed[1, 8:], hidden[1, 8:]) > 10 * TOL


def test_with_projection_parity(tmp_path):
    torch.manual_seed(1)
    reference = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**TINY))
    _save(reference, tmp_path)
    ids, mask = _ids_and_mask(seed=1)
    with torch.no_grad():
        out = reference(torch.tensor(ids), attention_mask=torch.tensor(mask))
    ours = CLIPTextModel.from_pretrained(tmp_path)
    assert ours.text_projection is not None and ours.pooled_size == 24
    hidden, pooled = ours(jnp.asarray(ids), jnp.asarray(mask))
    assert pooled.shape == (3, 24)
    assert_within(hidden, out.last_hidden_state, TOL, "hidden states")
    assert_within(pooled, out.text_embeds, PROJECTED_TOL, "text embeddings")
    # Explicitly without projection: the tensor is ignored and the EOS state comes back.
    plain = CLIPTextModel.from_pretrained(tmp_path, with_projection=False)
    assert plain(jnp.asarray(ids), jnp.asarray(mask))[1].shape == (3, 32)


def test_legacy_eos_token_id_pools_at_largest_id(tmp_path):
    """Configs from before transformers PR 24773 say eos_token_id=2: HF pools at argmax(input_ids)."""
    torch.manual_seed(2)
    reference = transformers.CLIPTextModel(transformers.CLIPTextConfig(**{**TINY, "eos_token_id": 2}))
    _save(reference, tmp_path)
    ids, mask = _ids_and_mask(seed=2, pad=0)
    ids[0, 5] = 98  # the largest id now sits before the true end token of row 0
    ids[0, 11] = 50
    with torch.no_grad():
        out = reference(torch.tensor(ids), attention_mask=torch.tensor(mask))
    ours = CLIPTextModel.from_pretrained(tmp_path)
    assert ours.config.eos_token_id == 2
    np.testing.assert_array_equal(ours.eos_positions(jnp.asarray(ids)), [5, 7, 3])
    _, pooled = ours(jnp.asarray(ids), jnp.asarray(mask))
    assert_within(pooled, out.pooler_output, TOL, "pooled (EOS) state")


def test_full_clip_model_checkpoint(tmp_path):
    """A CLIPModel checkpoint (text + vision towers): the text tower and text_projection are loaded."""
    torch.manual_seed(3)
    text = {k: v for k, v in TINY.items() if k != "projection_dim"}
    config = transformers.CLIPConfig(
        text_config=text, projection_dim=20,
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=16))
    reference = transformers.CLIPModel(config)
    _save(reference, tmp_path)
    assert CLIPTextConfig.from_json(tmp_path).projection_dim == 20
    ids, mask = _ids_and_mask(seed=3)
    with torch.no_grad():
        text_out = reference.text_model(torch.tensor(ids), attention_mask=torch.tensor(mask))
        projected = reference.text_projection(text_out.pooler_output)
    ours = CLIPTextModel.from_pretrained(tmp_path)
    hidden, pooled = ours(jnp.asarray(ids), jnp.asarray(mask))
    assert_within(hidden, text_out.last_hidden_state, TOL, "hidden states")
    assert_within(pooled, projected, PROJECTED_TOL, "projected text embeddings")


def test_param_map_covers_model_and_config_roundtrip(tiny_text_model):
    directory, _ = tiny_text_model
    config = CLIPTextConfig.from_json(directory / "config.json")
    assert config == CLIPTextConfig(**TINY)
    for with_projection in (False, True):
        model = CLIPTextModel(config, with_projection=with_projection, rngs=nnx.Rngs(0))
        mapped = {path for path, _ in hf_param_map(config, with_projection=with_projection).values()}
        assert mapped == set(hf_weights.model_params(model))


def test_shape_mismatch_and_bad_input(tmp_path, tiny_text_model):
    directory, _ = tiny_text_model
    config = json.loads((directory / "config.json").read_text())
    config["max_position_embeddings"] = 20
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(hf_weights.CheckpointError, match=r"position_embedding\.weight: checkpoint \(16, 32\) "
                                                         r"vs model \(20, 32\)"):
        CLIPTextModel.from_pretrained(tmp_path)
    model = CLIPTextModel(CLIPTextConfig.tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 16"):
        model(jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model(jnp.zeros((17,), jnp.int32))


def test_vit_b32_preset_matches_transformers_parameter_count():
    abstract = nnx.eval_shape(lambda: CLIPTextModel(CLIPTextConfig.vit_b32(), with_projection=True,
                                                    rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(p.shape)) for p in hf_weights.model_params(abstract).values())
    with torch.device("meta"):
        reference = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig())
    assert ours == sum(p.numel() for p in reference.parameters())
    assert CLIPTextConfig.vit_b32().eos_token_id == transformers.CLIPTextConfig().eos_token_id


def test_bfloat16_compute_stays_close():
    model32 = CLIPTextModel(CLIPTextConfig.tiny(), with_projection=True, rngs=nnx.Rngs(0))
    model16 = CLIPTextModel(CLIPTextConfig.tiny(), with_projection=True, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    ids, mask = map(jnp.asarray, _ids_and_mask())
    hidden32, pooled32 = model32(ids, mask)
    hidden16, pooled16 = model16(ids, mask)
    assert hidden16.dtype == jnp.bfloat16 and model16.layers[0].fc1.kernel.dtype == jnp.float32
    # About 14 activations per layer are stored in bfloat16 (LayerNorm, q, k, v, logits, weights, attention,
    # output, residual, LayerNorm, fc1, GELU, fc2, residual), plus the embeddings and the final LayerNorm: 32 roundings
    # of order-one activations. Whether the CPU has AVX512_BF16 or XLA emulates it does not change the bound.
    tol = bfloat16_tolerance(2 * 14 + 4)  # 0.125
    assert_within(np.asarray(hidden16, np.float32), hidden32, tol, "bfloat16 vs float32 hidden states")
    assert_within(np.asarray(pooled16, np.float32), pooled32, tol, "bfloat16 vs float32 pooled output")
