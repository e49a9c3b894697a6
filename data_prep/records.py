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


def load_sprite_rgb(path: Path | str) -> np.ndarray:
    """Loads a sprite as uint8 RGB (H, W, 3) with transparency composited onto white.

    Palette and greyscale PNGs are converted through RGBA first. Raises BadImageError naming the
    file when it is missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"sprite file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            rgba = im.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise BadImageError(f"cannot decode sprite {path}: {e}") from e
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """Encodes a uint8 RGB array as PNG bytes (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
