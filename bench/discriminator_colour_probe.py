"""Does a trained GAN discriminator check colours against its text? Sprites and hue-turned twins, two colour phrases.

    python bench/discriminator_colour_probe.py --workdir=RUN [--workdir=RUN ...] [--split=test]
        [--benchmarks_md=BENCHMARKS.md]

For each GAN run (its latest checkpoint's discriminator and text encoder) and each sprite of `--split` whose main
colour is one a phrase can name (`data.colours.PHRASE_COLOURS`), the caption gets "It is mostly <that colour>." in
front (as `data.captions.colour_phrase` does in training), and its twin is the sprite with its hues turned by a
random 90-270 degrees (`losses.colour_mismatch`) whose main colour is another phrase colour. Reported:
  colour words read    over sprite / twin pairs, how often D scores an image higher with the phrase naming its own
                       main colour than with the phrase naming the other image's (same caption after it; chance
                       50 %): the text alone decides, so D's liking for untouched sprites does not count;
  untouched preferred  how often D scores a sprite above its twin, both with the sprite's own phrase (what
                       `loss.colour_mismatch` trains; a D can also get it by disliking turned images);
  caption told         how often D scores a sprite higher with its own phrased caption than with another
                       sprite's (the batch rolled by one: DF-GAN's mismatched text);
and the mean logits of (sprite, own caption), (twin, sprite's caption), (sprite, another caption). How much the text
can move D at all: the spread of the sentence D gets (per-feature std over the sprites' captions, mean over features;
beside that of D's 4x4 image features), the ratio of the std over sprites of the text part of D's concatenation head
(its first conv applied to the broadcast sentence alone) to that of the image part, and the std over sprites of the
logit change from another caption to the own one (0 = D ignores its text; with `model.d_text_projection` this
includes the projection term). The spreads are for the DF-GAN D only (n/a for a projected D).
Needs the `kaggle-splits_seed000_split` dataset (README, "Data") and trained GAN runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import append_markdown, command_line  # noqa: E402
from pikagen_jax.data.colours import COLOUR_PROMPT, PHRASE_COLOURS, main_colours  # noqa: E402
from pikagen_jax.data.pipeline import tokenizer_from_config  # noqa: E402
from pikagen_jax.gan.state import build_discriminator  # noqa: E402
from pikagen_jax.losses.colour_mismatch import hue_turned_negatives  # noqa: E402
from pikagen_jax.metrics.split_eval import load_split  # noqa: E402
from pikagen_jax.models.gan import Discriminator  # noqa: E402
from pikagen_jax.training.checkpointing import Checkpointer  # noqa: E402
from pikagen_jax.training.text import build_text_encoder  # noqa: E402


def load_discriminator(workdir: Path):
    """(config, text encoder, discriminator, step) of a GAN run's latest checkpoint."""
    checkpointer = Checkpointer(workdir, read_only=True)
    config = ml_collections.ConfigDict(checkpointer.restore_config())
    if config.system != "gan":
        raise SystemExit(f"{workdir} holds a {config.system!r} run; this probe reads GAN discriminators")
    nodes = {"text_encoder": build_text_encoder(config, nnx.Rngs(0), jnp.float32),
             "discriminator": build_discriminator(config, nnx.Rngs(0))}
    step = checkpointer.restore_latest_into(nodes)
    return config, nodes["text_encoder"], nodes["discriminator"], step


def probe(workdir: Path, split: str, seed: int) -> dict:
    """The three scores of every phrase-colour sprite of `split` and the shares above."""
    config, text_encoder, disc, step = load_discriminator(workdir)
    data = load_split(config, split)
    main = [main_colours(image, limit=1)[0] for image in data.images]
    keep = [i for i, colour in enumerate(main) if colour in PHRASE_COLOURS]
    images = jnp.asarray(data.images[keep])
    captions = [f"{COLOUR_PROMPT.format(main[i])} {data.captions[i]}" for i in keep]
    ids, mask = tokenizer_from_config(config)(captions)
    _, sentence = text_encoder(jnp.asarray(ids), jnp.asarray(mask))
    turned, moved = hue_turned_negatives(images, jax.random.key(seed))

    # D's text-free trunk runs once per image set; each caption set then only passes its conditional head
    features, turned_features = (disc.features(x, update_stats=False) for x in (images, turned))

    def score(f, s):
        return np.asarray(disc.logits(f, s, update_stats=False), np.float64).reshape(len(keep), -1).mean(axis=1)

    real, hue = score(features, sentence), score(turned_features, sentence)
    other = score(features, jnp.roll(sentence, 1, 0))
    spread = text_spread(disc, features, sentence) if isinstance(disc, Discriminator) else {}
    moved = np.asarray(moved) > 0
    # the text alone: each sprite and its hue-turned twin, each with the phrase naming its own main colour and
    # with the phrase naming the other one's (the caption after it is the same): does D prefer the right phrase?
    turned_colours = [main_colours(np.asarray(x), limit=1)[0] for x in turned]
    pairs = [i for i in range(len(keep)) if moved[i] and turned_colours[i] in PHRASE_COLOURS
             and turned_colours[i] != main[keep[i]]]
    turned_captions = [f"{COLOUR_PROMPT.format(turned_colours[i])} {data.captions[keep[i]]}" for i in range(len(keep))]
    ids, mask = tokenizer_from_config(config)(turned_captions)
    _, turned_sentence = text_encoder(jnp.asarray(ids), jnp.asarray(mask))
    real_wrong, hue_right = score(features, turned_sentence), score(turned_features, turned_sentence)
    words = np.concatenate([real[pairs] > real_wrong[pairs], hue_right[pairs] > hue[pairs]])
    return {"workdir": str(workdir), "step": int(step), "sprites": int(moved.sum()), "pairs": len(pairs),
            "colour_words_read": float(np.mean(words)),
            "untouched_preferred": float(np.mean(real[moved] > hue[moved])),
            "caption_told": float(np.mean(real > other)),
            "real_logit": float(real.mean()), "hue_turned_logit": float(hue[moved].mean()),
            "other_caption_logit": float(other.mean()), "caption_effect": float(np.std(real - other)), **spread}


def text_spread(disc: Discriminator, features: jax.Array, sentence: jax.Array) -> dict:
    """Spreads over the sprites of a DF-GAN D's sentence input, its 4x4 image `features`, and the text and image
    parts of its concatenation head's first conv (the 3x3 conv on [features, sentence]; kernel split by input
    channels)."""
    features = np.asarray(features, np.float64)
    text = np.broadcast_to(np.asarray(sentence, np.float64)[:, None, None, :],
                           (*features.shape[:3], sentence.shape[-1]))
    kernel = np.asarray(disc.head_conv.normalized_kernel(update_stats=False), np.float64)
    width = features.shape[-1]

    def conv_part(x, k):  # 3x3 'SAME' conv of NHWC x with HWIO k
        return np.asarray(jax.lax.conv_general_dilated(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32),
                                                       (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))

    image_part, text_part = conv_part(features, kernel[:, :, :width]), conv_part(text, kernel[:, :, width:])
    return {"sentence_spread": float(np.asarray(sentence).std(axis=0).mean()),
            "feature_spread": float(features.std(axis=0).mean()),
            "head_text_to_image": float(text_part.std(axis=0).mean() / image_part.std(axis=0).mean())}


def _spread_cells(r: dict) -> str:
    """The table's spread cells ('n/a' for a projected D, which has no concatenation head)."""
    if "sentence_spread" not in r:
        return "n/a | n/a"
    return f"{r['sentence_spread']:.4f} / {r['feature_spread']:.4f} | {r['head_text_to_image']:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", action="append", required=True, help="a trained GAN run (repeatable)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the hue turns")
    parser.add_argument("--benchmarks_md", help="append the table and the command to this Markdown file")
    args = parser.parse_args(argv)
    lines = ["| run | step | sprites (pairs) | colour words read | untouched preferred | caption told | "
             "real logit | hue-turned logit | other-caption logit | caption effect (std) | sentence / feature spread | "
             "head text / image |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for workdir in args.workdir:
        r = probe(Path(workdir), args.split, args.seed)
        lines.append(f"| `{Path(workdir).name}` | {r['step']} | {r['sprites']} ({r['pairs']}) | "
                     f"{100 * r['colour_words_read']:.1f} % | {100 * r['untouched_preferred']:.1f} % | "
                     f"{100 * r['caption_told']:.1f} % | {r['real_logit']:.3f} | {r['hue_turned_logit']:.3f} | "
                     f"{r['other_caption_logit']:.3f} | {r['caption_effect']:.4f} | {_spread_cells(r)} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.benchmarks_md:
        append_markdown(args.benchmarks_md, f"Discriminator colour probe ({args.split} split)",
                        command_line("bench/discriminator_colour_probe.py", argv), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
