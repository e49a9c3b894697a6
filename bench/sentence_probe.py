"""What does the frozen MiniLM sentence embedding tell a generator? Pooler vs mean pooling on the Pokédex captions.

    python bench/sentence_probe.py [--benchmarks_md=BENCHMARKS.md]

For each way of pooling MiniLM's token states into one sentence vector (`text.sentence_pooling`: 'pooler', BERT's
tanh layer on [CLS], as seed 002; 'mean', the masked mean all-MiniLM-L6-v2 was trained to give), over the original
caption of every species in the Kaggle seed-000 split:
  spread        mean over features of the standard deviation across training captions (raw backbone output);
  cosine        mean cosine similarity between two different training captions (1 = every caption the same);
  type / colour test accuracy of a ridge-regression probe (one-hot targets, features standardised on the training
                split) trained on the training species to name a test species' primary type / its sprite's dominant
                colour (`data.colours.dominant_colour`); beside it the majority class's accuracy;
  phrase        the same probe naming the colour word of a phrase "It is mostly <colour>." put before each caption
                (a random one of the 8 in `data.colours.PHRASE_COLOURS`, seed 0; chance 12.5 %): can the vector
                carry the colour phrase that `data.captions.colour_phrase` adds?
  phrase move   how far changing only that colour word moves the vector, as a share of the mean distance between
                two different captions (0 = the colour word is invisible, 1 = as far as another species' caption).
Needs the `kaggle-splits_seed000_split` dataset (README, "Data").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import append_markdown, command_line  # noqa: E402
from configs.gan import get_config  # noqa: E402
from pikagen_jax.data.augment import decode_png, resize_to_float  # noqa: E402
from pikagen_jax.data.colours import COLOUR_PROMPT, PHRASE_COLOURS, dominant_colour  # noqa: E402
from pikagen_jax.data.pipeline import open_split, text_of, tokenizer_from_config  # noqa: E402
from pikagen_jax.models.text_encoder import build_backbone, masked_mean  # noqa: E402

DATASET = "kaggle-splits_seed000_split"
RIDGE = 1.0  # on standardised features; the accuracies move by about a point between 0.1 and 10


def ridge_probe(train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str]) -> float:
    """Test accuracy of ridge regression onto one-hot labels (argmax), features standardised on train."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    classes = sorted(set(train_y))
    onehot = np.eye(len(classes))[[classes.index(y) for y in train_y]]
    a1, b1 = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
    weights = np.linalg.solve(a1.T @ a1 + RIDGE * np.eye(a1.shape[1]), a1.T @ onehot)
    predicted = [classes[i] for i in np.argmax(b1 @ weights, axis=1)]
    return float(np.mean([p == y for p, y in zip(predicted, test_y)]))


def majority(train_y: list[str], test_y: list[str]) -> float:
    top = max(set(train_y), key=train_y.count)
    return float(np.mean([y == top for y in test_y]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data/tfds")
    parser.add_argument("--benchmarks_md", default="", help="append the table to this Markdown file")
    args = parser.parse_args(argv)
    start = time.time()
    config = get_config("cpu")
    tokenizer = tokenizer_from_config(config)
    backbone = build_backbone("bert", config.text.checkpoint, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)

    def embed(texts: list[str]) -> dict[str, np.ndarray]:
        pooled = {"pooler": [], "mean": []}
        for i in range(0, len(texts), 64):
            ids, mask = (jnp.asarray(a) for a in tokenizer(texts[i:i + 64]))
            hidden, pooler = backbone(ids, mask)
            pooled["pooler"].append(np.asarray(pooler))
            pooled["mean"].append(np.asarray(masked_mean(hidden, mask)))
        return {k: np.concatenate(v) for k, v in pooled.items()}

    splits = {}
    for split in ("train", "test"):
        source = open_split(args.data_dir, DATASET, split)
        records = [source[i] for i in range(len(source))]
        captions = [text_of(r["descriptions"][0]) for r in records]
        phrase_colours = [PHRASE_COLOURS[i] for i in rng.integers(len(PHRASE_COLOURS), size=len(captions))]
        swapped = [PHRASE_COLOURS[(PHRASE_COLOURS.index(c) + 1 + int(rng.integers(len(PHRASE_COLOURS) - 1)))
                                  % len(PHRASE_COLOURS)] for c in phrase_colours]
        splits[split] = {
            "features": embed(captions),
            "phrased": embed([f"{COLOUR_PROMPT.format(c)} {t}" for c, t in zip(phrase_colours, captions)]),
            "swapped": embed([f"{COLOUR_PROMPT.format(c)} {t}" for c, t in zip(swapped, captions)]),
            "phrase": phrase_colours,
            "type": [text_of(r["types"][0]) for r in records],
            "colour": [dominant_colour(resize_to_float(decode_png(r["image"]), 64)) for r in records],
        }
    train, test = splits["train"], splits["test"]
    rows = ["| pooling | spread | cosine | type probe (majority) | colour probe (majority) | phrase probe (chance) "
            "| phrase move |", "|---|---|---|---|---|---|---|"]
    for pooling in ("pooler", "mean"):
        x = train["features"][pooling]
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        cosine = (np.sum(unit.sum(0) ** 2) - len(unit)) / (len(unit) * (len(unit) - 1))
        probes = [f"{ridge_probe(x, train[k], test['features'][pooling], test[k]):.1%} "
                  f"({majority(train[k], test[k]):.1%})" for k in ("type", "colour")]
        phrase = ridge_probe(train["phrased"][pooling], train["phrase"], test["phrased"][pooling], test["phrase"])
        phrased = test["phrased"][pooling]
        move = np.linalg.norm(phrased - test["swapped"][pooling], axis=1).mean()
        between = np.linalg.norm(phrased - np.roll(phrased, 1, axis=0), axis=1).mean()
        rows.append(f"| {pooling} | {x.std(0).mean():.3f} | {cosine:.3f} | {probes[0]} | {probes[1]} | "
                    f"{phrase:.1%} ({1 / len(PHRASE_COLOURS):.1%}) | {move / between:.2f} |")
    table = "\n".join(rows)
    print(table)
    print(f"({len(train['type'])} training and {len(test['type'])} test species; {time.time() - start:.0f} s)")
    if args.benchmarks_md:
        heading = f"MiniLM sentence embedding: pooler vs mean pooling ({time.strftime('%Y-%m-%d')})"
        append_markdown(args.benchmarks_md, heading, command_line(__file__, argv), table)


if __name__ == "__main__":
    main()
