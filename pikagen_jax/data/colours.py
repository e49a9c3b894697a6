"""Colour names of sprite pixels, the colours a caption names, and the colour phrase a training caption can carry.

A pixel is background when all its channels are near-white (`BACKGROUND_MIN`: the sprites' white background);
the others are named by hue, saturation and value (`colour_name`). `colour_histogram` is a sprite's share of
foreground pixels per name, and `colour_phrase` turns it into a short sentence ("It is mostly blue and orange.")
that `data.captions.colour_phrase` puts in front of training captions, so a generator can learn what colour words
mean from sprites whose Pokédex text never names their colour; `rotate_hue` recolours a sprite first
(`data.captions.recolour`), so that the phrase, not the species, tells its colours. The metrics
(`metrics.alignment`) use the same names.
"""

from __future__ import annotations

import re

import numpy as np

BACKGROUND_MIN = 0.92  # a pixel whose channels are all >= this (in [0, 1]) is the white background

# colour word (and synonyms) -> colour name; names are what `colour_name` returns
COLOUR_WORDS = {
    "red": "red", "crimson": "red", "scarlet": "red",
    "orange": "orange",
    "yellow": "yellow", "golden": "yellow", "gold": "yellow",
    "green": "green", "emerald": "green",
    "blue": "blue", "navy": "blue", "cyan": "blue", "turquoise": "blue", "aqua": "blue",
    "purple": "purple", "violet": "purple", "lavender": "purple",
    "pink": "pink", "magenta": "pink",
    "brown": "brown",
    "black": "black",
    "white": "white",
    "gray": "gray", "grey": "gray", "silver": "gray",
}
COLOURS = tuple(sorted(set(COLOUR_WORDS.values())))
MIN_FOREGROUND = 0.01  # a sprite with fewer foreground pixels than this share is white


def named_colours(caption: str) -> set[str]:
    """The colours a caption names, by whole words ('Bluish' and 'redden' do not count)."""
    words = re.findall(r"[a-z]+", caption.lower())
    return {COLOUR_WORDS[w] for w in words if w in COLOUR_WORDS}


def _hue_chroma_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), chroma (max - min) and value (max) of rgb [..., 3] in [0, 1]."""
    value = rgb.max(axis=-1)
    chroma = value - rgb.min(axis=-1)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(chroma, 1e-12)
    hue = np.where(value == r, ((g - b) / safe) % 6, np.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return hue * 60.0, chroma, value


def rotate_hue(image: np.ndarray, degrees: float) -> np.ndarray:
    """`image` [..., 3] in [-1, 1] with every pixel's hue turned by `degrees`, saturation and value kept (HSV), so
    white, gray and black pixels — the background and outlines — stay as they are; float32."""
    rgb = np.clip((np.asarray(image, np.float64) + 1.0) / 2.0, 0.0, 1.0)
    hue, chroma, value = _hue_chroma_value(rgb)
    sextant = ((hue + degrees) % 360.0) / 60.0  # HSV -> RGB: the hue's sextant and its position inside it
    mid = chroma * (1.0 - np.abs(sextant % 2.0 - 1.0))
    zero = np.zeros_like(chroma)
    which = np.minimum(sextant.astype(np.int64), 5)
    r = np.choose(which, [chroma, mid, zero, zero, mid, chroma])
    g = np.choose(which, [mid, chroma, chroma, mid, zero, zero])
    b = np.choose(which, [zero, zero, mid, chroma, chroma, mid])
    rotated = np.stack([r, g, b], axis=-1) + (value - chroma)[..., None]
    return (rotated * 2.0 - 1.0).astype(np.float32)


def colour_name(rgb: np.ndarray) -> np.ndarray:
    """Names of pixels rgb [..., 3] in [0, 1]: black / white / gray by value and saturation, else by hue
    (red, orange, yellow, green, blue, purple, pink), dark orange-red hues being brown."""
    rgb = np.clip(np.asarray(rgb, np.float64), 0.0, 1.0)
    hue, chroma, value = _hue_chroma_value(rgb)
    saturation = np.where(value > 0, chroma / np.maximum(value, 1e-12), 0.0)
    names = np.select(
        [hue < 15, hue < 40, hue < 70, hue < 165, hue < 255, hue < 290, hue < 345],
        ["red", "orange", "yellow", "green", "blue", "purple", "pink"], default="red").astype(object)
    names = np.where((hue < 40) & (value < 0.6) & (saturation > 0.25), "brown", names)
    names = np.where(saturation < 0.2, np.where(value > 0.85, "white", np.where(value < 0.25, "black", "gray")), names)
    return np.where((value < 0.2), "black", names).astype(object)


def colour_histogram(image: np.ndarray) -> np.ndarray:
    """Share of a sprite's non-background pixels per colour name (`COLOURS` order; image [H, W, 3] in [-1, 1]).
    A sprite with (almost) no foreground counts as all white."""
    rgb = (np.asarray(image, np.float64) + 1.0) / 2.0
    foreground = ~np.all(rgb >= BACKGROUND_MIN, axis=-1)
    histogram = np.zeros(len(COLOURS))
    if foreground.mean() < MIN_FOREGROUND:
        histogram[COLOURS.index("white")] = 1.0
        return histogram
    names = colour_name(rgb[foreground]).astype(str)
    for i, colour in enumerate(COLOURS):
        histogram[i] = np.mean(names == colour)
    return histogram


def dominant_colour(image: np.ndarray) -> str:
    """The most frequent colour name among a sprite's non-background pixels (image [H, W, 3] in [-1, 1]; ties go
    to the alphabetically first name, 'white' for a sprite with almost no foreground)."""
    return COLOURS[int(np.argmax(colour_histogram(image)))]


# colours a phrase may name as a sprite's main ones; white, gray and black are outlines, shading and background
# as often as a sprite's own colour, so they are named only when no other colour covers PHRASE_MIN_SHARE
PHRASE_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
PHRASE_MIN_SHARE = 0.15
PHRASE_TEMPLATES = {
    1: ("It is mostly {0}.", "Its body is {0}.", "A {0} Pokémon."),
    2: ("It is mostly {0} and {1}.", "Its body is {0} with {1}.", "A {0} and {1} Pokémon."),
}
COLOUR_PROMPT = PHRASE_TEMPLATES[1][0]  # "It is mostly {0}.": what the colour-word test puts before a caption


def main_colours(image: np.ndarray, limit: int = 2) -> list[str]:
    """Up to `limit` colour names of a sprite (image [H, W, 3] in [-1, 1]) by share of its foreground: those of
    `PHRASE_COLOURS` covering at least `PHRASE_MIN_SHARE`, else its single most frequent colour."""
    histogram = colour_histogram(image)
    order = np.argsort(-histogram, kind="stable")
    names = [COLOURS[i] for i in order if COLOURS[i] in PHRASE_COLOURS and histogram[i] >= PHRASE_MIN_SHARE]
    return names[:limit] or [COLOURS[int(order[0])]]


def colour_phrase(image: np.ndarray, rng: np.random.Generator) -> str:
    """A short sentence naming the sprite's main colours (`main_colours`), in one of `PHRASE_TEMPLATES`."""
    names = main_colours(image)
    templates = PHRASE_TEMPLATES[len(names)]
    return templates[int(rng.integers(len(templates)))].format(*names)
