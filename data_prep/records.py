"""The species record every source reader produces, and the image/text helpers they share."""

from __future__ import annotations

import dataclasses
import io
import re
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class BadImageError(ValueError):
    """A sprite file is missing, unreadable or not an image."""


@dataclasses.dataclass
class SpeciesRecord:
    """One Pokémon species as read from a source, before splitting.

    `image_path` points at the sprite file; `descriptions` holds every distinct Pokédex text
    (flavor text) available for the species, the first one being the primary/original one.
    `source_row` says where the record came from (file and row/line) for error messages.
    """

    national_number: int
    name: str
    types: list[str]
    classification: str
    descriptions: list[str]
    image_path: Path
    source_row: str = ""


@dataclasses.dataclass
class ReadResult:
    """Records read from a source plus what was skipped and why (never dropped silently)."""

    records: list[SpeciesRecord]
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (where, reason)
    warnings: list[str] = dataclasses.field(default_factory=list)


def normalize_text(text: str) -> str:
    """Cleans a Pokédex text: NFC, soft hyphens/newlines/form feeds removed, 'POKéMON' → 'Pokémon'."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\u00ad", "").replace("\f", " ").replace("\n", " ")
    text = re.sub(r"POK[EÉé]MON", "Pokémon", text)
    text = text.replace("Pokèmon", "Pokémon")
    return re.sub(r"\s+", " ", text).strip()


def enriched_description(description: str, classification: str, types: list[str]) -> str:
    """Seed 000's enriched description: text + classification + primary/secondary type sentences.

    >>> enriched_description("A seed.", "Seed Pokémon", ["grass", "poison"])
    'A seed. This Pokémon is classified as a Seed Pokémon. Its primary type is Grass, and its secondary type is Poison.'
    """
    parts = [description.strip()]
    if classification:
        article = "an" if classification[:1].lower() in "aeiou" else "a"
        parts.append(f"This Pokémon is classified as {article} {classification}.")
    if types:
        sentence = f"Its primary type is {types[0].capitalize()}"
        if len(types) > 1 and types[1]:
            sentence += f", and its secondary type is {types[1].capitalize()}"
        parts.append(sentence + ".")
    return " ".join(p for p in parts if p)


MIN_SIDE = 8  # a smaller image is no sprite
MAX_SIDE = 1024  # a larger one is downscaled (the systems train at 64-256 px)


def _to_rgba(im: Image.Image) -> Image.Image:
    """RGBA of any PIL mode: palette, greyscale, CMYK, and 16-/32-bit integer or float greyscale (scaled to
    8 bits by its own range instead of being clipped white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(values.max()), 1.0)
        im = Image.fromarray(np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8), "L")
    return im.convert("RGBA")


def load_sprite_rgb(path: Path | str) -> np.ndarray:
    """Loads a sprite as uint8 RGB (H, W, 3) with transparency composited onto white.

    Palette, greyscale, CMYK and 16-bit images are converted through RGBA; an image larger than 1024 px on a
    side is downscaled to fit (high-quality resampling). Raises BadImageError naming the file when it is
    missing, empty, truncated, not an image, or smaller than 8 px on a side.
    """
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"sprite file not found: {path}")
    if path.stat().st_size == 0:
        raise BadImageError(f"sprite file {path} is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            if min(im.size) < MIN_SIDE:
                raise BadImageError(f"sprite {path} is {im.size[0]}x{im.size[1]} px: too small to be a sprite "
                                    f"(at least {MIN_SIDE} px on a side)")
            rgba = _to_rgba(im)
    except BadImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"cannot decode sprite {path}: {e}") from e
    if max(rgba.size) > MAX_SIDE:
        rgba.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """Encodes a uint8 RGB array as PNG bytes (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
