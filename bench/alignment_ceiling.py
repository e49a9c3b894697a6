"""How much can a caption tell about an unseen species' sprite? The alignment encoder's heads, trained on the same
frozen image features with three kinds of text, scored by R-precision on the novel-class split.

    python bench/alignment_ceiling.py --pokeapi_dir=../shared/data/pokeapi_1025 --seeds=3 --benchmarks_md=BENCHMARKS.md
    python bench/alignment_ceiling.py --colour_bins=0,4 --seeds=3    # pool3 alone, and with a 4³ colour histogram

Rows (mean ± std over `--seeds` initialisations and batch orders; the frozen features are extracted once):
  pokedex      the Kaggle training sprites (and their mirror images) with their Pokédex captions;
  pokedex+api  as well every PokeAPI flavour text and art / pixel sprite of the training species and of species
               899-1025, which are in no Kaggle split (the validation and test species are left out);
  attributes   an oracle caption: one-hot PokeAPI colour, body shape and types of the species (training species
               and 899-1025), scored on the test sprites against their own attribute vectors. It bounds what the
               frozen features can tell apart when the text names exactly what is visible.
Each row is trained once per `--colour_bins` value: 0 is the frozen Inception pool3 features alone, b > 0 adds the
sprite's foreground colour histogram over b³ RGB cells (`model.colour_bins` of configs/alignment.py).
Heads, loss and optimiser are configs/alignment.py's (`alignment_step`); as there, the step with the best validation
top-1 is the one reported. Needs the `kaggle-splits_seed000_split` dataset (README, "Data").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import append_markdown, command_line  # noqa: E402
from configs.alignment import get_config  # noqa: E402
from data_prep.records import load_sprite_rgb  # noqa: E402
from data_prep.sources.pokeapi import read_pokeapi  # noqa: E402
from pikagen_jax.alignment.state import AlignmentState  # noqa: E402
from pikagen_jax.alignment.steps import alignment_step  # noqa: E402
from pikagen_jax.data.augment import resize_to_float  # noqa: E402
from pikagen_jax.data.pipeline import make_eval_loader, tokenizer_from_config  # noqa: E402
from pikagen_jax.metrics.alignment import r_precision  # noqa: E402
from pikagen_jax.models.alignment import colour_histogram_features  # noqa: E402
from pikagen_jax.training.alignment_scorer import build_frozen_networks, text_features  # noqa: E402

BATCH = 32  # frozen-feature batch (Inception at 299 px)
ROWS = ("pokedex", "pokedex+api", "attributes")


class Extractor:
    """Fixed-size batches through the frozen Inception-v3 or the text backbone (one compilation each)."""

    def __init__(self, config):
        inception, backbone = build_frozen_networks(config)
        self.tokenizer = tokenizer_from_config(config)
        image_fn = nnx.jit(lambda net, x: net(x))
        text_fn = nnx.jit(lambda net, ids, mask: text_features(net, ids, mask))
        self.image_fn = lambda chunk: image_fn(inception, jnp.asarray(chunk))
        self.text_fn = lambda chunk: text_fn(backbone, *map(jnp.asarray, self.tokenizer(chunk)))

    @staticmethod
    def _batched(fn, items, pad):
        outs = []
        for start in range(0, len(items), BATCH):
            chunk = items[start:start + BATCH]
            missing = BATCH - len(chunk)
            outs.append(np.asarray(fn(pad(chunk, missing) if missing else chunk), np.float32)[:len(chunk)])
        return np.concatenate(outs)

    def images(self, images: np.ndarray) -> np.ndarray:
        """Sprites [N, H, W, 3] in [-1, 1] -> pool3 features [N, 2048]."""
        return self._batched(self.image_fn, images, lambda c, k: np.concatenate([c, np.repeat(c[-1:], k, 0)]))

    def texts(self, texts: list[str]) -> np.ndarray:
        """Captions -> masked-mean token states [N, D]."""
        return self._batched(self.text_fn, list(texts), lambda c, k: c + [c[-1]] * k)


def kaggle_split(config, extract: Extractor, split: str) -> dict[str, np.ndarray]:
    """A split's sprites (and, for train, their mirror images), original captions and species numbers."""
    batches = list(make_eval_loader(config, split, batch_size=BATCH))
    images = np.concatenate([np.asarray(b["image"], np.float32) for b in batches])
    captions = [str(c) for b in batches for c in b["caption"]]
    numbers = np.concatenate([np.asarray(b["national_number"]) for b in batches]).astype(np.int64)
    image_features = extract.images(images)
    out = {"image": image_features, "image_species": numbers, "text": extract.texts(captions), "text_species": numbers,
           "pixels": images}
    if split == "train":
        mirrored = np.ascontiguousarray(images[:, :, ::-1])
        out["image"] = np.concatenate([image_features, extract.images(mirrored)])
        out["image_species"] = np.concatenate([numbers, numbers])
        out["pixels"] = np.concatenate([images, mirrored])
    return out


def pokeapi_extra(extract: Extractor, source_dir: Path, held_out: set[int]) -> dict[str, np.ndarray]:
    """Features of every PokeAPI art and pixel sprite (and mirror) and flavour text, held-out species left out."""
    images, image_species, texts, text_species = [], [], [], []
    for folder in ("sprites96_art", "sprites96_pixel"):
        for record in read_pokeapi(source_dir, folder).records:
            if record.national_number in held_out or not Path(record.image_path).is_file():
                continue
            pixels = resize_to_float(Image.fromarray(load_sprite_rgb(record.image_path)), 64)
            images += [pixels, pixels[:, ::-1]]
            image_species += [record.national_number] * 2
            if folder == "sprites96_art":
                texts += list(record.descriptions)
                text_species += [record.national_number] * len(record.descriptions)
    pixels = np.stack(images).astype(np.float32)
    return {"image": extract.images(pixels), "image_species": np.asarray(image_species), "text": extract.texts(texts),
            "text_species": np.asarray(text_species), "pixels": pixels}


def with_colour(part: dict[str, np.ndarray], bins: int) -> dict[str, np.ndarray]:
    """`part` with its image features followed by the sprites' colour histogram over `bins`³ cells (0: as is)."""
    if not bins:
        return part
    colour = np.concatenate([np.asarray(colour_histogram_features(jnp.asarray(part["pixels"][i:i + 256]), bins))
                             for i in range(0, len(part["pixels"]), 256)])
    return {**part, "image": np.concatenate([part["image"], colour], axis=1)}


def attribute_vectors(source_dir: Path) -> dict[int, np.ndarray]:
    """One-hot colour, body shape and (multi-hot) types of every PokeAPI species."""
    rows = [json.loads(line) for line in (source_dir / "pokeapi_species_en.jsonl").read_text("utf-8").splitlines()
            if line.strip()]
    colours = sorted({str(r["color"]) for r in rows})
    shapes = sorted({str(r["shape"]) for r in rows})
    types = sorted({t for r in rows for t in r["types"]})
    vectors = {}
    for r in rows:
        v = np.zeros(len(colours) + len(shapes) + len(types), np.float32)
        v[colours.index(str(r["color"]))] = 1
        v[len(colours) + shapes.index(str(r["shape"]))] = 1
        for t in r["types"]:
            v[len(colours) + len(shapes) + types.index(t)] = 1
        vectors[int(r["national_number"])] = v
    return vectors


def feature_name(bins: int) -> str:
    return f"pool3 + colour {bins}³" if bins else "pool3"


def merge(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def train_and_score(config, train: dict, val: tuple, test: tuple, *, seed: int, steps: int, every: int
                    ) -> dict[str, float]:
    """Trains the heads on species-balanced pairs (a random sprite and a random text of one species); returns the
    val / test R-precision at the step with the best val top-1."""
    rng = np.random.default_rng(seed)
    by_species = lambda key: {int(s): np.nonzero(train[f"{key}_species"] == s)[0]  # noqa: E731
                              for s in np.unique(train[f"{key}_species"])}
    images, texts = by_species("image"), by_species("text")
    species = np.asarray(sorted(set(images) & set(texts)))
    state = AlignmentState(config, train["text"].shape[1], rngs=nnx.Rngs(seed))
    step_fn = nnx.jit(alignment_step)
    embed = nnx.jit(lambda heads, i, t: (heads.embed_images(i), heads.embed_texts(t)))
    batch_size = int(config.train.batch_size)

    def score(split):
        image_emb, text_emb = embed(state.heads, jnp.asarray(split[0]), jnp.asarray(split[1]))
        return r_precision(np.asarray(image_emb), np.asarray(text_emb), candidates=config.eval.candidates, seed=0)

    best = None
    for step in range(1, steps + 1):
        drawn = rng.choice(species, batch_size, replace=len(species) < batch_size)
        image_rows = [images[s][rng.integers(len(images[s]))] for s in drawn]
        text_rows = [texts[s][rng.integers(len(texts[s]))] for s in drawn]
        step_fn(state, {"image_features": jnp.asarray(train["image"][image_rows]),
                        "text_features": jnp.asarray(train["text"][text_rows]), "species": jnp.asarray(drawn)})
        if step % every == 0:
            v = score(val)
            if best is None or v["r_precision_top1"] > best["val_top1"]:
                t = score(test)
                best = {"step": step, "val_top1": v["r_precision_top1"], "val_top5": v["r_precision_top5"],
                        "test_top1": t["r_precision_top1"], "test_top5": t["r_precision_top5"],
                        "candidates": t["candidates"], "species": len(species)}
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pokeapi_dir", default="../shared/data/pokeapi_1025", help="the PokeAPI-layout source folder")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000, help="head training steps per run (configs/alignment.py's)")
    p.add_argument("--every", type=int, default=100, help="validation every this many steps")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {ROWS}")
    p.add_argument("--colour_bins", default="0",
                   help="comma-separated: 0 = Inception pool3 alone, b > 0 = with a b³-cell colour histogram")
    p.add_argument("--out", help="write the per-seed results as JSON here")
    p.add_argument("--benchmarks_md", help="append the table and the command to this Markdown file")
    args = p.parse_args(argv)
    source = Path(args.pokeapi_dir)
    if not (source / "pokeapi_species_en.jsonl").is_file():
        raise SystemExit(f"{source}/pokeapi_species_en.jsonl not found: pass --pokeapi_dir=<PokeAPI-layout folder>")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    colour_bins = [int(b) for b in args.colour_bins.split(",") if b.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown --rows {unknown}; choose from {ROWS}")

    config = get_config()
    extract = Extractor(config)
    start = time.perf_counter()
    base = {s: kaggle_split(config, extract, s) for s in ("train", "val", "test")}
    held_out = set(base["val"]["image_species"].tolist()) | set(base["test"]["image_species"].tolist())
    if held_out & set(base["train"]["image_species"].tolist()):
        raise SystemExit("the Kaggle train split shares species with val / test: rebuild the dataset")
    needs_api = "pokedex+api" in rows or "attributes" in rows
    api = pokeapi_extra(extract, source, held_out) if needs_api else None
    vectors = attribute_vectors(source) if needs_api else {}
    attrs = lambda numbers: np.stack([vectors[int(n)] for n in numbers])  # noqa: E731
    print(f"features extracted in {time.perf_counter() - start:.0f} s", flush=True)

    results: dict[str, list[dict]] = {}
    for bins in colour_bins:
        config.model.colour_bins = bins  # the heads' input width follows it
        train, val, test = (with_colour(base[s], bins) for s in ("train", "val", "test"))
        data = {"pokedex": (train, (val["image"], val["text"]), (test["image"], test["text"]))}
        if needs_api:
            pool = merge(train, with_colour(api, bins))
            data["pokedex+api"] = (pool, data["pokedex"][1], data["pokedex"][2])
            named = np.unique(pool["image_species"])
            oracle = {"image": pool["image"], "image_species": pool["image_species"], "text": attrs(named),
                      "text_species": named}
            data["attributes"] = (oracle, (val["image"], attrs(val["image_species"])),
                                  (test["image"], attrs(test["image_species"])))
        for row in rows:
            name = f"{row} | {feature_name(bins)}"
            train_set, val_set, test_set = data[row]
            for seed in range(args.seeds):
                started = time.perf_counter()
                out = train_and_score(config, train_set, val_set, test_set, seed=seed, steps=args.steps,
                                      every=args.every)
                results.setdefault(name, []).append(out)
                print(f"{name} seed {seed}: best val step {out['step']}, val top-1 {out['val_top1']:.3f}, "
                      f"test top-1 {out['test_top1']:.3f} top-5 {out['test_top5']:.3f} ({out['species']} species, "
                      f"{time.perf_counter() - started:.0f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    pct = lambda values: f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f} %"  # noqa: E731
    lines = ["| text the heads train on | image features | species | val top-1 | test top-1 | test top-5 |",
             "|---|---|---|---|---|---|"]
    for row, runs in results.items():
        lines.append(f"| {row} | {runs[0]['species']} | {pct([r['val_top1'] for r in runs])} | "
                     f"{pct([r['test_top1'] for r in runs])} | {pct([r['test_top5'] for r in runs])} |")
    chance = 1 / next(iter(results.values()))[0]["candidates"]
    table = "\n".join(lines) + (f"\n\nChance: top-1 {100 * chance:.1f} %, top-5 {500 * chance:.1f} %; "
                                 f"{args.seeds} seeds.")
    print(table)
    if args.benchmarks_md:
        append_markdown(args.benchmarks_md, f"Alignment ceiling ({time.strftime('%Y-%m-%d')})",
                        command_line(__file__, argv), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
