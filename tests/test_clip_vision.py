"""CLIP vision tower and full CLIP model: parity with transformers' CLIPVisionModel(WithProjection) and
CLIPModel (get_image_features / get_text_features), checkpoint loading and its errors, and the CLIP score
against torchmetrics' formula."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pikagen_jax.losses.l1_clip import clip_image_preprocess
from pikagen_jax.models import hf_weights
from pikagen_jax.models.clip import CLIPConfig, CLIPModel
from pikagen_jax.models.clip_vision import CLIPVisionConfig, CLIPVisionModel, hf_param_map
from tests.conftest import TINY_CLIP_COSINE_PATH, skip_if_triton_would_crash
from tests.tolerances import assert_within, path_tolerance, sum_tolerance, transformer_path

skip_if_triton_would_crash()
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# 30 px / 8 px patches: a 3x3 grid, the trailing 6 pixels dropped as HF's strided conv drops them.
VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
              patch_size=8, projection_dim=24, hidden_act="gelu")
CAPTIONS = ["a small blue turtle", "a fiery lizard with a flame on its tail", "a yellow mouse", "a pink blob",
            "a green seed on its back", "a purple ghost"]


# The vision tower (VISION) from pixels to its last hidden states: the 8x8x3 patch convolution, the
# pre-LayerNorm and 2 layers of 32 over 10 tokens; the pooled output adds the post-LayerNorm, the projection
# one 32-wide sum. Activations are LayerNorm'd (order one); see tests/tolerances.py.
VISION_PATH = [8 * 8 * 3] + transformer_path(width=32, intermediate=37, head_dim=8, tokens=10, layers=2)
TOL = path_tolerance(VISION_PATH)  # 9.9e-5
POOLED_TOL = path_tolerance(VISION_PATH + [64])
PROJECTED_TOL = path_tolerance(VISION_PATH + [64, 32])

COSINE_TOL = path_tolerance(TINY_CLIP_COSINE_PATH)  # 8.3e-5: see tests/conftest.py


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _nchw(pixels) -> "torch.Tensor":
    return torch.tensor(np.asarray(pixels).transpose(0, 3, 1, 2))


def _pixels(n=3, size=30, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def _images(n=3, seed=0) -> np.ndarray:
    """Images in [-1, 1] of a size other than the model's (CLIP's preprocessing resizes and crops them)."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, 40, 48, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_vision(tmp_path_factory):
    torch.manual_seed(0)
    reference = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).eval()
    directory = tmp_path_factory.mktemp("clip_vision")
    reference.save_pretrained(directory)
    return directory, reference


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_dir):
    """(our CLIPModel, transformers' CLIPModel), both loaded from the same saved checkpoint."""
    return CLIPModel.from_pretrained(tiny_clip_dir), transformers.CLIPModel.from_pretrained(tiny_clip_dir).eval()


def test_vision_tower_parity_and_shapes(tiny_vision):
    directory, reference = tiny_vision
    pixels = _pixels()
    with torch.no_grad():
        out = reference(pixel_values=_nchw(pixels))
    ours = CLIPVisionModel.from_pretrained(directory)
    assert ours.visual_projection is None and ours.config == CLIPVisionConfig(**VISION)
    hidden, pooled = nnx.jit(lambda model, x: model(x))(ours, jnp.asarray(pixels))
    assert hidden.shape == (3, 1 + 9, 32) and pooled.shape == (3, 32) and ours.config.num_patches == 9
    assert_within(hidden, out.last_hidden_state, TOL, "hidden states")
    assert_within(pooled, out.pooler_output, POOLED_TOL, "pooled output")
    with pytest.raises(ValueError, match=r"NHWC \[batch, 30, 30, 3\]"):
        ours(jnp.zeros((1, 32, 32, 3)))


def test_with_projection_parity_from_safetensors_and_pytorch_bin(tmp_path):
    torch.manual_seed(1)
    reference = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VISION)).eval()
    reference.save_pretrained(tmp_path / "safetensors")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "safetensors" / "config.json").read_text())
    torch.save(reference.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # `vision_model.`-prefixed names
    pixels = _pixels(seed=1)
    with torch.no_grad():
        expected = reference(pixel_values=_nchw(pixels)).image_embeds
    for kind in ("safetensors", "bin"):
        ours = CLIPVisionModel.from_pretrained(tmp_path / kind)
        assert ours.pooled_size == 24
        assert_within(ours(jnp.asarray(pixels))[1], expected, PROJECTED_TOL, f"image embeddings ({kind})")


def test_full_model_features_cosines_and_logits_match_transformers(tiny_clip):
    ours, reference = tiny_clip
    assert ours.image_size == 32 and ours.embed_dim == 8 and ours.max_text_length == 77
    images = _images()
    pixels = clip_image_preprocess(jnp.asarray(images), 32)
    ids, mask = ours.tokenizer()(CAPTIONS[:3])
    with torch.no_grad():
        image_ref = reference.get_image_features(_nchw(pixels)).pooler_output
        text_ref = reference.get_text_features(torch.tensor(ids, dtype=torch.long),
                                               attention_mask=torch.tensor(mask, dtype=torch.long)).pooler_output
        logits_ref = reference(input_ids=torch.tensor(ids, dtype=torch.long), pixel_values=_nchw(pixels),
                               attention_mask=torch.tensor(mask, dtype=torch.long)).logits_per_image

    @nnx.jit
    def run(model, images, pixels, ids, mask):
        image_emb, text_emb = model.image_embeds(images), model.text_embeds(ids, mask)
        # the cosine per pair, CLIP's logits, and the preprocessing-free entry of the vision tower
        return (image_emb, text_emb, model(images, ids, mask), model.logits_per_image(image_emb, text_emb),
                model.pixel_embeds(pixels))

    image_emb, text_emb, cosines, logits, from_pixels = run(ours, jnp.asarray(images), pixels, jnp.asarray(ids),
                                                            jnp.asarray(mask))
    assert image_emb.shape == text_emb.shape == (3, 8)
    # Each embedding's path is part of the cosine's (TINY_CLIP_COSINE_PATH), so COSINE_TOL bounds them too; CLIP's
    # logits are the cosines times exp(logit_scale) = 14.3.
    assert_within(image_emb, image_ref, COSINE_TOL, "image embeddings")
    assert_within(text_emb, text_ref, COSINE_TOL, "text embeddings")
    assert_within(cosines, torch.nn.functional.cosine_similarity(image_ref, text_ref, dim=-1), COSINE_TOL, "cosines")
    assert_within(logits, logits_ref, float(np.exp(ours.logit_scale[...])) * COSINE_TOL, "logits")
    assert_within(from_pixels, image_ref, COSINE_TOL, "image embeddings from pixels")


def _cosines_match(cosines, reference) -> bool:
    """Per-pair cosines and their mean within COSINE_TOL, absolute: the mean of cosines of both signs comes
    out of cancellation (here ~0.0025), so a relative tolerance on it would mean nothing. The mean's own
    sum (N terms of |cos| <= 1) adds N * eps."""
    cosines, reference = np.asarray(cosines, np.float64), np.asarray(reference, np.float64)
    mean_tol = COSINE_TOL + sum_tolerance(len(reference))
    return bool(np.all(np.abs(cosines - reference) <= COSINE_TOL)
                and abs(cosines.mean() - reference.mean()) <= mean_tol)


def test_clip_score_equals_torchmetrics_formula_on_transformers_features(tiny_clip, tiny_clip_dir):
    """evaluate.clip_scores (JAX CLIP) vs torchmetrics' CLIPScore formula computed by hand from the torch
    model's features of the same images and captions (torchmetrics itself is not installed):
    max(100 · mean(cos), 0); and the seed-000 mean cosine. Compared in cosine units (COSINE_TOL)."""
    from pikagen_jax import evaluate
    from pikagen_jax.metrics.clip_score import ClipScorer, torchmetrics_clip_score

    ours, reference = tiny_clip
    captions = CAPTIONS[1:]  # the tiny random model's cosines: mixed signs, positive mean
    images = _images(len(captions), seed=2)
    scorer = ClipScorer(ours)
    ids, mask = scorer.tokenizer(captions)
    assert mask.sum(axis=1).max() <= 16  # the text path above assumes at most 16 tokens
    pixels = clip_image_preprocess(jnp.asarray(images), 32)
    with torch.no_grad():
        image_features = reference.get_image_features(_nchw(pixels)).pooler_output.double()
        text_features = reference.get_text_features(torch.tensor(ids, dtype=torch.long),
                                                    attention_mask=torch.tensor(mask, dtype=torch.long)
                                                    ).pooler_output.double()
    image_features = image_features / image_features.norm(p=2, dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(p=2, dim=-1, keepdim=True)
    per_pair = 100 * (image_features * text_features).sum(axis=-1)  # torchmetrics' _clip_score_update
    torchmetrics_score = torch.max(per_pair.sum(0) / len(per_pair), torch.zeros(())).item()  # its compute()
    reference_cosines = per_pair.numpy() / 100
    # Where some cosines are negative, clamping the mean (torchmetrics) and clamping each pair differ.
    assert per_pair.min() < 0 < torchmetrics_score < 100 * per_pair.clamp(min=0).mean().item() - 1
    scores = evaluate.clip_scores(scorer, images, captions, batch_size=3)  # batches of 3 + 2
    ours_cosines = scorer.score(images, captions)
    assert _cosines_match(ours_cosines, reference_cosines)
    assert _cosines_match(scorer.score(images[:3], captions[:3]), reference_cosines[:3])
    mean_tol = COSINE_TOL + sum_tolerance(len(captions))
    assert abs(scores["clip_cosine"] - reference_cosines.mean()) <= mean_tol
    assert abs(scores["clip_score"] - torchmetrics_score) <= 100 * mean_tol  # 100 x the mean cosine
    # The check has power: a real bug of 1e-3 in one cosine (12x the tolerance) is caught.
    for index in range(len(captions)):
        broken = ours_cosines.astype(np.float64).copy()
        broken[index] += 1e-3
        assert not _cosines_match(broken, reference_cosines)
    assert torchmetrics_clip_score(np.array([-0.5, 0.1])) == 0.0  # a negative mean clamps to 0
    with pytest.raises(ValueError, match="got 2 images but 1 captions"):
        scorer.score(images[:2], captions[:1])


def test_param_maps_cover_the_models_and_configs_roundtrip(tiny_clip_dir, tiny_vision):
    config = CLIPVisionConfig.from_json(tiny_vision[0])
    assert config == CLIPVisionConfig(**VISION)
    for with_projection in (False, True):
        model = CLIPVisionModel(config, with_projection=with_projection, rngs=nnx.Rngs(0))
        mapped = {path for path, _ in hf_param_map(config, with_projection=with_projection).values()}
        assert mapped == set(hf_weights.model_params(model))
    clip_config = CLIPConfig.from_json(tiny_clip_dir)
    assert clip_config.projection_dim == 8 and clip_config.vision.image_size == 32
    assert clip_config.text.vocab_size == 49408 and clip_config.logit_scale_init_value == pytest.approx(2.6592)


def test_vit_b32_presets_match_transformers_parameter_count():
    abstract = nnx.eval_shape(lambda: CLIPModel(CLIPConfig.vit_b32(), rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(p.shape)) for p in hf_weights.model_params(abstract).values())
    with torch.device("meta"):
        reference = transformers.CLIPModel(transformers.CLIPConfig())
    assert ours == sum(p.numel() for p in reference.parameters())
    tiny = lambda: CLIPModel(CLIPConfig.tiny(), rngs=nnx.Rngs(0))  # noqa: E731
    shapes = jax.eval_shape(lambda: (tiny().image_embeds(jnp.zeros((2, 20, 28, 3))),
                                     tiny().text_embeds(jnp.ones((2, 16), jnp.int32)),
                                     tiny().vision_model(jnp.zeros((2, 32, 32, 3)))[0]))
    assert [s.shape for s in shapes] == [(2, 24), (2, 24), (2, 17, 32)]


def test_missing_corrupt_and_wrong_checkpoints_fail_clearly(tmp_path, tiny_clip_dir, tiny_vision):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPModel.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        CLIPModel.from_pretrained(tmp_path / "empty")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((tiny_clip_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights in"):
        CLIPModel.from_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes((tiny_clip_dir / "model.safetensors").read_bytes()[:500])
    with pytest.raises(hf_weights.CheckpointError, match="not a readable safetensors file"):
        CLIPModel.from_pretrained(corrupt)
    (corrupt / "model.safetensors").unlink()
    (corrupt / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(hf_weights.CheckpointError, match="not a readable PyTorch state dict"):
        CLIPModel.from_pretrained(corrupt)
    with pytest.raises(ValueError, match="not a CLIPModel config: no text_config"):
        CLIPModel.from_pretrained(tiny_vision[0])  # a vision-only checkpoint
    config = json.loads((tiny_clip_dir / "config.json").read_text())
    config["vision_config"]["patch_size"] = 16
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps(config))
    (wrong / "model.safetensors").write_bytes((tiny_clip_dir / "model.safetensors").read_bytes())
    with pytest.raises(hf_weights.CheckpointError, match=r"patch_embedding\.weight: checkpoint \(16, 3, 8, 8\) "
                                                         r"vs model \(16, 3, 16, 16\)"):
        CLIPModel.from_pretrained(wrong)
