"""Does the sprite follow the text? R-precision with a trained sprite-caption encoder, and colour agreement.

R-precision (AttnGAN's, with DAMSM-style embeddings): for each image, its own caption is ranked among
`candidates` captions (itself + randomly drawn others) by cosine similarity; top-k accuracy over the images.
Chance is 1 / candidates (1 % among 100). `r_precision` takes unit-length embeddings and, for several samples
per caption, the caption index of each image.

Colour agreement needs no learned model: for the prompts that name a colour ("a blue turtle", "its red
cheeks"), the share of sprites whose dominant non-background colour is one of the named ones. A pixel is
background when it is near-white (the sprites' background); the remaining pixels are named by hue, saturation
and value (`colour_name`), and the most frequent name is the sprite's colour.

Pokédex captions rarely name a sprite's main colour ("its red cheeks" on a yellow Pikachu), so colour agreement has
few prompts and a low ceiling on our data. Colour match asks the question without colour words: does a sprite take
the colours of its own species' real sprite (the one its caption belongs to)? It is the histogram intersection of
the two sprites' colour-name shares (`colour_histogram`), 1 for the same colours in the same proportions, 0 for no
colour in common; the floor is the same score against another species' real sprite. A generator whose colours
follow its text scores above that floor; one that ignores the text scores at it.

Text influence asks the most basic question: do the images change with the caption at all? It compares the
pixel variance across captions at a fixed noise draw with the variance across noise draws for a fixed caption.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pikagen_jax.data.colours import (  # noqa: F401  (re-exported: the colour names are part of this metric's API)
    COLOURS,
    colour_histogram,
    colour_name,
    dominant_colour,
    named_colours,
)


def colour_match(generated: np.ndarray, real: np.ndarray, *, samples_per_caption: int = 1) -> dict[str, float]:
    """Mean colour-histogram intersection of each generated sprite with its own caption's real sprite, and (floor)
    with the next caption's real sprite, i.e. another species'.

    `generated` holds `samples_per_caption` images per caption, caption-major; `real` one per caption.
    Returns {'colour_match': mean, 'colour_match_shuffled': the floor's mean}."""
    if len(generated) != len(real) * samples_per_caption:
        raise ValueError(f"got {len(generated)} generated sprites for {len(real)} real ones and "
                         f"{samples_per_caption} per caption")
    if len(real) < 2:
        raise ValueError("colour match needs at least 2 captions (the floor uses another caption's sprite)")
    real_hist = np.stack([colour_histogram(image) for image in real])
    generated_hist = np.stack([colour_histogram(image) for image in generated])
    own = np.repeat(np.arange(len(real)), samples_per_caption)
    other = (own + 1) % len(real)
    return {"colour_match": float(np.mean(np.minimum(generated_hist, real_hist[own]).sum(-1))),
            "colour_match_shuffled": float(np.mean(np.minimum(generated_hist, real_hist[other]).sum(-1)))}


def text_influence(images: np.ndarray) -> dict[str, float]:
    """How much a generator's images change with the caption, against how much they change with the noise.

    `images` [C, K, H, W, 3]: C captions, each with the same K noise draws. Returns the mean pixel variance
    across captions at a fixed draw ('text_variance'), across draws for a fixed caption ('noise_variance'), and
    'text_influence' = text_variance / noise_variance: near 0 for a generator that ignores its text."""
    images = np.asarray(images, np.float64)
    if images.ndim != 5 or images.shape[0] < 2 or images.shape[1] < 2:
        raise ValueError(f"text_influence needs [captions >= 2, draws >= 2, H, W, C] images, got {images.shape}")
    text_variance = float(images.var(axis=0).mean())
    noise_variance = float(images.var(axis=1).mean())
    return {"text_variance": text_variance, "noise_variance": noise_variance,
            "text_influence": text_variance / max(noise_variance, 1e-12)}


def colour_word_response(images: np.ndarray, colours: Sequence[str]) -> dict[str, float]:
    """Do colour words steer the colours? `images` [K, N, H, W, 3]: N sprites, each generated K times from the
    same caption and noise, the k-th time with a phrase naming `colours[k]` in front of the caption.

    Returns 'colour_word_accuracy': the share of (sprite, colour) pairs where naming the colour gives the largest
    share of it among the K versions (ties split; chance 1 / K); 'colour_word_named_share': the mean share of the
    foreground a colour covers when it is named, and 'colour_word_other_share' when another colour is."""
    images = np.asarray(images)
    colours = list(colours)
    if images.ndim != 5 or images.shape[0] != len(colours) or len(colours) < 2:
        raise ValueError(f"colour_word_response needs [K = {len(colours)} >= 2 colours, N, H, W, 3] images, "
                         f"got {images.shape}")
    index = [COLOURS.index(c) for c in colours]
    shares = np.stack([[colour_histogram(image)[index] for image in row] for row in images])  # [K, N, K]
    named = np.stack([shares[k, :, k] for k in range(len(colours))])  # [K, N]: colour k's share when named
    hits = []
    for k in range(len(colours)):
        column = shares[:, :, k]  # [K, N]: colour k's share under each of the K prompts
        best = column.max(axis=0)
        ties = np.sum(column == best, axis=0)
        hits.append(np.where(column[k] == best, 1.0 / ties, 0.0))
    other = np.stack([np.delete(shares[:, :, k], k, axis=0).mean(axis=0) for k in range(len(colours))])
    return {"colour_word_accuracy": float(np.mean(hits)), "colour_word_chance": 1.0 / len(colours),
            "colour_word_named_share": float(named.mean()), "colour_word_other_share": float(other.mean())}


def colour_agreement(images: np.ndarray, captions: Sequence[str]) -> dict[str, float | int | None]:
    """Share of the images whose caption names a colour and whose dominant colour is a named one.

    Returns {'colour_agreement': share or None (no caption names a colour), 'colour_prompts': how many}."""
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    hits, total = 0, 0
    for image, caption in zip(images, captions):
        wanted = named_colours(caption)
        if wanted:
            total += 1
            hits += dominant_colour(image) in wanted
    return {"colour_agreement": hits / total if total else None, "colour_prompts": total}


def r_precision(image_emb: np.ndarray, text_emb: np.ndarray, *, caption_index: np.ndarray | None = None,
                distractor_emb: np.ndarray | None = None, candidates: int = 100, ks: Sequence[int] = (1, 5),
                seed: int = 0) -> dict[str, float]:
    """R-precision of images against their captions (unit-length embeddings).

    `image_emb` [M, E], `text_emb` [N, E]; image m belongs to caption `caption_index[m]` (default m, M = N).
    Each image's caption competes with `candidates - 1` others drawn without replacement from the other
    captions and `distractor_emb` (e.g. another split's captions); with fewer available, all are used.
    Returns {'r_precision_top<k>': accuracy, 'candidates': the number ranked, 'chance_top1': 1 / it}.
    """
    image_emb, text_emb = np.asarray(image_emb, np.float64), np.asarray(text_emb, np.float64)
    index = np.arange(len(image_emb)) if caption_index is None else np.asarray(caption_index)
    if len(index) != len(image_emb) or index.max() >= len(text_emb):
        raise ValueError(f"caption_index must give each of the {len(image_emb)} images one of the {len(text_emb)} "
                         "captions")
    pool = text_emb if distractor_emb is None else np.concatenate([text_emb, np.asarray(distractor_emb, np.float64)])
    count = min(candidates, len(pool))
    if count < 2:
        raise ValueError("R-precision needs at least 2 candidate captions")
    rng = np.random.default_rng(seed)
    similarity = image_emb @ pool.T  # [M, pool]
    ranks = np.empty(len(image_emb), np.int64)
    for m, own in enumerate(index):
        others = np.delete(np.arange(len(pool)), own)
        drawn = rng.choice(others, count - 1, replace=False)
        ranks[m] = int(np.sum(similarity[m, drawn] > similarity[m, own]))
    out = {f"r_precision_top{k}": float(np.mean(ranks < k)) for k in ks}
    out.update(candidates=count, chance_top1=1.0 / count)
    return out


def alignment_report(scorer, generated: np.ndarray, real: np.ndarray, captions: Sequence[str], *,
                     samples_per_caption: int = 1, distractor_captions: Sequence[str] = (), candidates: int = 100,
                     seed: int = 0) -> dict[str, float | int | None]:
    """R-precision (top-1, top-5) of generated sprites with the real sprites' own as the ceiling and a
    shuffled-caption control as the floor, colour agreement of both, and colour match (with its floor);
    `scorer` embeds images and captions (`pikagen_jax.training.alignment_scorer.AlignmentScorer`; None: the
    colour scores only).

    `generated` holds `samples_per_caption` images per caption, caption-major; `real` one per caption. The floor
    scores each generated image against the caption after its own (so: an image made from another species'
    caption) — what an image that ignores its text would get.
    """
    captions = list(captions)
    repeated = [c for c in captions for _ in range(samples_per_caption)]
    out: dict[str, float | int | None] = {}
    generated_colour, real_colour = colour_agreement(generated, repeated), colour_agreement(real, captions)
    out.update(colour_agreement=generated_colour["colour_agreement"], colour_prompts=real_colour["colour_prompts"],
               colour_agreement_real=real_colour["colour_agreement"])
    if len(captions) > 1:
        out.update(colour_match(generated, real, samples_per_caption=samples_per_caption))
    if scorer is None:
        return out
    text_emb = scorer.embed_captions(captions)
    distractors = scorer.embed_captions(list(distractor_captions)) if len(distractor_captions) else None
    index = np.repeat(np.arange(len(captions)), samples_per_caption)
    kw = dict(distractor_emb=distractors, candidates=candidates, seed=seed)
    generated_emb = scorer.embed_images(generated)
    ours = r_precision(generated_emb, text_emb, caption_index=index, **kw)
    ceiling = r_precision(scorer.embed_images(real), text_emb, **kw)
    floor = r_precision(generated_emb, text_emb, caption_index=(index + 1) % len(captions), **kw)
    out.update({key: ours[key] for key in ("r_precision_top1", "r_precision_top5", "candidates", "chance_top1")})
    out.update(r_precision_top1_real=ceiling["r_precision_top1"], r_precision_top5_real=ceiling["r_precision_top5"],
               r_precision_top1_shuffled=floor["r_precision_top1"], r_precision_top5_shuffled=floor["r_precision_top5"])
    return out
