"""Image preprocessing and augmentations on uint8 RGB sprites with a white background (numpy/PIL,
run in the Grain workers). Validation and test data only get `resize_to_float`."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

WHITE = (255, 255, 255)


def decode_png(data: bytes) -> Image.Image:
    """Decodes the PNG bytes stored in the shards to an RGB PIL image."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def resize_to_float(image: Image.Image, size: int) -> np.ndarray:
    """Resizes (bicubic, antialiased) to size×size and scales to float32 in [-1, 1]."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 127.5 - 1.0


def fixed_rotation(image: Image.Image, num_rotations: int, rng: np.random.Generator) -> Image.Image:
    """Seed 000's augmentation: one of `num_rotations` angles evenly spaced in [0°, 360°), white fill."""
    k = int(rng.integers(num_rotations))
    if k == 0:
        return image
    return image.rotate(360.0 * k / num_rotations, resample=Image.Resampling.BILINEAR, fillcolor=WHITE)


def horizontal_flip(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def mild_affine(image: Image.Image, rng: np.random.Generator, degrees: float, translate: float,
                scale: tuple[float, float]) -> Image.Image:
    """Random rotation (±degrees), isotropic scale and translation (fraction of size), white fill."""
    w, h = image.size
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    s = rng.uniform(*scale)
    tx, ty = rng.uniform(-translate, translate, size=2) * (w, h)
    cx, cy = w / 2.0, h / 2.0
    # PIL wants the inverse map: output pixel → input pixel.
    cos, sin = np.cos(angle) / s, np.sin(angle) / s
    a, b = cos, sin
    d, e = -sin, cos
    c = cx - a * (cx + tx) - b * (cy + ty)
    f = cy - d * (cx + tx) - e * (cy + ty)
    return image.transform((w, h), Image.Transform.AFFINE, (a, b, c, d, e, f),
                           resample=Image.Resampling.BILINEAR, fillcolor=WHITE)


def color_jitter_on_white(image: np.ndarray, rng: np.random.Generator, brightness: float,
                          contrast: float, saturation: float) -> np.ndarray:
    """Brightness/contrast/saturation jitter of the sprite only: the white background stays white.

    `image` is float32 in [-1, 1]; the foreground is every pixel not (near-)white.
    """
    background = np.all(image > 0.96, axis=-1, keepdims=True)
    pil = Image.fromarray(np.clip((image + 1.0) * 127.5, 0, 255).round().astype(np.uint8))
    for enhancer, amount in ((ImageEnhance.Brightness, brightness), (ImageEnhance.Contrast, contrast),
                             (ImageEnhance.Color, saturation)):
        if amount > 0:
            pil = enhancer(pil).enhance(rng.uniform(1.0 - amount, 1.0 + amount))
    jittered = np.asarray(pil, dtype=np.float32) / 127.5 - 1.0
    return np.where(background, np.float32(1.0), jittered)
