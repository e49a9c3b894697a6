"""Evaluate a trained run: FID, KID, IS, R-precision, colour agreement (and CLIP score) of generated sprites.

    python -m pikagen_jax.evaluate --workdir=workdirs/gan                       # test_intra + test, latest
    python -m pikagen_jax.evaluate --workdir=workdirs/gan --best --samples_per_caption=4
    python -m pikagen_jax.evaluate --workdir=workdirs/gan --alignment_workdir=workdirs/alignment  # + R-precision
    python -m pikagen_jax.evaluate --workdir=workdirs/diffusion --sampling_steps=50 --guidance_scale=3
    python -m pikagen_jax.evaluate --real_vs_real=test,train --dataset=kaggle --image_size=64   # the floor

For each split (default: `test_intra`, the intra-class set, when the dataset has it, and `test`, the
novel-class set) every record's caption is generated `--samples_per_caption` times by the run's model (any
system: the GAN's EMA generator, the L1 model, latent diffusion, or the unconditional DCGAN), and the generated set is compared with the split's real images (one per record) in the pool3 features of
the FID Inception-v3. Results go to `<workdir>/eval_<step>.json` and `.md` and to TensorBoard
(`eval/<split>/<metric>`). Real-image statistics are cached per dataset, split, resolution and weights.

KID is the mean ± std of the unbiased polynomial-kernel MMD² over `--kid_subsets` random subsets of
`--kid_subset_size` images (clamped, with a printed note, to the smaller set). IS needs Inception weights
with the classifier head (`--inception=pt_inception-2015-12-05-6726825d.pth` from pytorch-fid); the default
fid-helper weights have none, so IS is reported as unavailable, never estimated. The CLIP score needs
`--clip_checkpoint` (a Hugging Face CLIP model directory or hub name); without it, it is "n/a".
Whether the sprites follow their text, for the text-conditioned systems: colour agreement always (the share of
prompts naming a colour whose sprite has it as dominant colour; the real sprites' share beside it), colour match
always (how far each sprite's colour mix matches its own species' real sprite, beside the same score against another
species' sprite: the floor of a generator that ignores its text), text influence always (how much the images
change with the caption at a fixed noise draw, over how much they change with the noise), and, with
`--alignment_workdir` (an encoder trained by `configs/alignment.py`), R-precision top-1 / top-5 among 100
captions, beside the real sprites' own (the ceiling) and a shuffled-caption control (the floor).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import ml_collections
import numpy as np

from pikagen_jax.errors import (
    EXIT_USER_ERROR,
    NoCheckpointError,
    UsageError,
    UserError,
    debug_enabled,
    format_user_error,
)
from pikagen_jax.metrics.split_eval import (
    MetricSettings,
    SplitData,
    compare_features,
    default_eval_splits,
    format_kid,
    inception_tag,
    load_inception,
    load_split,
    split_reference_stats,
)

if TYPE_CHECKING:
    from pikagen_jax.metrics.fid import ReferenceStats
    from pikagen_jax.metrics.inception import InceptionV3

IS_UNAVAILABLE = "unavailable: weights have no classifier head"
NOT_AVAILABLE = "n/a"
SPLIT_TITLES = {"test_intra": "intra-class", "test": "novel-class", "val": "validation", "train": "train"}


def clip_scores(clip, images: np.ndarray, captions: Sequence[str], batch_size: int = 50) -> dict[str, float]:
    """Mean CLIP image-caption cosine (seed 000's CLIP score) and torchmetrics' CLIPScore
    max(100 * mean(cos), 0) (seed 002's); `clip` is a `pikagen_jax.metrics.clip_score.ClipScorer`."""
    from pikagen_jax.metrics.clip_score import torchmetrics_clip_score

    cosines = np.concatenate([clip.score(images[i:i + batch_size], list(captions[i:i + batch_size]))
                              for i in range(0, len(images), batch_size)])
    return {"clip_score": torchmetrics_clip_score(cosines), "clip_cosine": float(cosines.mean())}


def evaluate_images(inception: InceptionV3, images: np.ndarray, reference: ReferenceStats, *, reference_image_size: int,
                    settings: MetricSettings = MetricSettings(), captions: Sequence[str] | None = None,
                    clip=None) -> dict[str, Any]:
    """All metrics of generated `images` against a real reference: FID, KID, IS (or why it is unavailable)
    and the CLIP score (with `clip` and `captions`, else "n/a")."""
    from pikagen_jax.metrics.fid import extract_features, inception_score

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:3] != (reference_image_size, reference_image_size):
        raise ValueError(f"generated images have shape {images.shape[1:]} but the real reference images are "
                         f"{reference_image_size}x{reference_image_size}: compare images of one resolution")
    with_logits = inception.has_classifier_head
    extracted = extract_features(inception, images, settings.batch_size, with_logits=with_logits)
    features, logits = extracted if with_logits else (extracted, None)
    results = compare_features(features, reference, settings)
    if logits is None:
        results["inception_score"] = IS_UNAVAILABLE
    elif len(logits) < settings.is_splits:
        results["inception_score"] = f"unavailable: needs at least {settings.is_splits} images, got {len(logits)}"
    else:
        mean, std = inception_score(logits, splits=settings.is_splits)
        results["inception_score"] = {"mean": mean, "std": std, "splits": settings.is_splits}
    results["clip_score"] = NOT_AVAILABLE
    if clip is not None and captions is not None:
        results.update(clip_scores(clip, images, captions, settings.batch_size))
    return results


# ----------------------------------------------------------------------------------------- runs

def run_config(workdir: str | Path, step: int | None = None) -> ml_collections.ConfigDict:
    """The config saved with a run's checkpoint (`step`, default the latest); staged runs (diffusion) keep
    their stages in sub-folders, whose last one is read."""
    from pikagen_jax.run_sampler import SYSTEM_TRAIN_COMMANDS, checkpoint_dirs
    from pikagen_jax.training.checkpointing import Checkpointer

    dirs = checkpoint_dirs(workdir)
    if not dirs:
        raise NoCheckpointError(f"no checkpoints in {workdir}: train first, e.g. "
                                f"`{SYSTEM_TRAIN_COMMANDS.format(workdir=workdir)}`")
    return ml_collections.ConfigDict(Checkpointer(dirs[-1], read_only=True).restore_config(step=step))


def generator_for_run(workdir: str | Path, *, step: int | None, best: bool, batch_size: int,
                      sampler_options: dict[str, Any] | None = None) -> tuple[Any, Callable[[SplitData, int, int], np.ndarray]]:
    """(RunSampler, generate(split_data, samples_per_caption, seed) -> images) for a run of any system.

    Images are caption-major: the `samples_per_caption` samples of caption 0 come first. `sampler_options`
    go to the system's sampler (diffusion: sampler, sampling_steps, guidance_scale).
    """
    from pikagen_jax.run_sampler import load_run_sampler

    sampler = load_run_sampler(workdir, step=step, best=best, batch_size=batch_size, **(sampler_options or {}))

    def generate(data: SplitData, samples_per_caption: int, seed: int) -> np.ndarray:
        repeat = lambda a: np.repeat(np.asarray(a), samples_per_caption, axis=0)  # noqa: E731
        return sampler.generate(repeat(data.token_ids), repeat(data.attention_mask), seed)

    return sampler, generate


INFLUENCE_GRID = 8  # captions, and noise draws per caption, of the text-influence grid


def _text_influence(sampler, data: SplitData, seed: int) -> dict[str, float]:
    """`metrics.alignment.text_influence` on the split's first captions, each with the same noise draws (the
    sampler draws noise per position from `seed`, so equal positions share it), beside the real sprites' own
    pixel variance across those captions."""
    from pikagen_jax.metrics.alignment import text_influence

    count = min(INFLUENCE_GRID, len(data.captions))
    if count < 2:
        return {}
    repeat = lambda a, i: np.repeat(np.asarray(a)[i:i + 1], INFLUENCE_GRID, axis=0)  # noqa: E731
    grid = np.stack([sampler.generate(repeat(data.token_ids, i), repeat(data.attention_mask, i), seed)
                     for i in range(count)])
    out = text_influence(grid)
    out["real_variance"] = float(np.asarray(data.images[:count], np.float64).var(axis=0).mean())
    return out


COLOUR_WORD_CAPTIONS = 16  # captions of the colour-word test, each generated once per named colour


def _colour_words(sampler, data: SplitData, seed: int) -> dict[str, float]:
    """`metrics.alignment.colour_word_response` on the split's first captions, each with "It is mostly <colour>."
    in front for every colour of `data.colours.PHRASE_COLOURS`, at the same noise draw per caption."""
    from pikagen_jax.data.colours import COLOUR_PROMPT, PHRASE_COLOURS
    from pikagen_jax.data.pipeline import tokenizer_from_config
    from pikagen_jax.metrics.alignment import colour_word_response

    captions = data.captions[:COLOUR_WORD_CAPTIONS]
    if not captions:
        return {}
    tokenizer = tokenizer_from_config(sampler.config)
    images = []
    for colour in PHRASE_COLOURS:
        ids, mask = tokenizer([f"{COLOUR_PROMPT.format(colour)} {caption}" for caption in captions])
        images.append(sampler.generate(ids, mask, seed))
    return colour_word_response(np.stack(images), PHRASE_COLOURS)


def evaluate_run(workdir: str | Path, *, splits: Sequence[str] | None = None, samples_per_caption: int = 1,
                 step: int | None = None, best: bool = False, settings: MetricSettings = MetricSettings(),
                 inception_source: str = "fid_helper", clip_checkpoint: str | None = None, seed: int = 0,
                 cache_dir: str | Path | None = None, write: bool = True,
                 sampler_options: dict[str, Any] | None = None, alignment_workdir: str | Path | None = None
                 ) -> dict[str, Any]:
    """Generates `samples_per_caption` images per caption of each split with the run's checkpoint and
    returns the report {run info..., "results": {split: metrics}}; with `write`, also writes
    `eval_<step>.json` / `.md` to `workdir` and logs the scalars to its TensorBoard. Works for every
    system (`pikagen_jax.run_sampler`); for the unconditional DCGAN the captions only set the image count
    and no CLIP score, R-precision or colour agreement is computed. With `alignment_workdir` (a trained
    `configs/alignment.py` run) the text-conditioned systems also get R-precision; without a trained encoder
    there, one line says how to train it and the other metrics are still computed."""
    workdir = Path(workdir)
    if samples_per_caption < 1:
        raise UsageError(f"--samples_per_caption must be >= 1, got {samples_per_caption}")
    sampler, generate = generator_for_run(workdir, step=step, best=best, batch_size=settings.batch_size,
                                          sampler_options=sampler_options)
    config, resolved_step = sampler.config, sampler.step
    splits = list(splits) if splits else default_eval_splits(config)
    inception = load_inception(inception_source)
    clip = None
    if clip_checkpoint:
        from pikagen_jax.metrics.clip_score import ClipScorer

        clip = ClipScorer.from_pretrained(clip_checkpoint)
    if clip is not None and not sampler.conditional:
        print("note: the run is unconditional: no CLIP score", file=sys.stderr)
        clip = None
    scorer = _alignment_scorer(alignment_workdir, settings.batch_size) if sampler.conditional else None
    report = {"workdir": str(workdir), "system": config.system, "step": resolved_step, "sampler": sampler.description,
              "checkpoint": "best" if best else ("step" if step is not None else "latest"),
              "dataset": config.data.dataset, "image_size": config.data.image_size,
              "inception": inception_tag(inception_source), "samples_per_caption": samples_per_caption,
              "seed": seed, "results": {}}
    for split in splits:
        data = load_split(config, split, settings.batch_size)
        reference = split_reference_stats(inception, config, split, inception_source=inception_source,
                                          batch_size=settings.batch_size, cache_dir=cache_dir, images=data.images)
        images = generate(data, samples_per_caption, seed)
        captions = [c for c in data.captions for _ in range(samples_per_caption)]
        try:
            results = evaluate_images(inception, images, reference, reference_image_size=config.data.image_size,
                                      settings=settings, captions=captions, clip=clip)
        except ValueError as error:
            raise ValueError(f"split {split!r}, generated images: {error}") from error
        if sampler.conditional:
            from pikagen_jax.metrics.alignment import alignment_report

            distractors = [c for other in _caption_pool_splits(config, split) for c in load_split(config, other).captions]
            results["alignment"] = alignment_report(scorer, images, data.images, data.captions,
                                                    samples_per_caption=samples_per_caption,
                                                    distractor_captions=distractors, seed=seed)
            results["alignment"].update(_text_influence(sampler, data, seed))
            results["alignment"].update(_colour_words(sampler, data, seed))
        report["results"][split] = results
        for note in results["notes"]:
            print(f"note ({split}): {note}", file=sys.stderr)
    if write:
        write_report(workdir, f"eval_{resolved_step}", report)
        log_scalars(workdir, resolved_step, report, prefix="eval")
    return report


def _alignment_scorer(workdir: str | Path | None, batch_size: int):
    """The trained alignment encoder in `workdir`, or None (with one line saying how to train one)."""
    if not workdir:
        return None
    from pikagen_jax.training.alignment_scorer import AlignmentEncoderMissing, load_alignment_scorer

    try:
        return load_alignment_scorer(workdir, batch_size=batch_size)
    except AlignmentEncoderMissing as missing:
        print(f"note: no R-precision: {missing}", file=sys.stderr)
        return None


def _caption_pool_splits(config: ml_collections.ConfigDict, split: str) -> list[str]:
    """Splits whose captions fill R-precision's candidate list for `split` (unseen species: val and test)."""
    if split not in ("val", "test"):
        return []
    from pikagen_jax.metrics.split_eval import dataset_splits

    return [other for other in ("val", "test") if other != split and other in dataset_splits(config)]


def real_vs_real(config: ml_collections.ConfigDict, split_a: str, split_b: str, *,
                 settings: MetricSettings = MetricSettings(), inception_source: str = "fid_helper",
                 cache_dir: str | Path | None = None) -> dict[str, Any]:
    """FID / KID of the real images of `split_a` against those of `split_b` (e.g. test vs train): the
    floor a generator can be compared with at this dataset size and resolution."""
    inception = load_inception(inception_source)
    stats = {split: split_reference_stats(inception, config, split, inception_source=inception_source,
                                          batch_size=settings.batch_size, cache_dir=cache_dir)
             for split in (split_a, split_b)}
    results = compare_features(stats[split_a].features, stats[split_b], settings)
    del results["num_generated"], results["num_real"]
    results[f"num_{split_a}"], results[f"num_{split_b}"] = len(stats[split_a].features), len(stats[split_b].features)
    results["inception_score"] = results["clip_score"] = NOT_AVAILABLE
    return {"mode": "real_vs_real", "dataset": config.data.dataset, "image_size": config.data.image_size,
            "inception": inception_tag(inception_source), "results": {f"{split_a} vs {split_b}": results}}


# ----------------------------------------------------------------------------------------- reports

def _format(value: Any, digits: int) -> str:
    if isinstance(value, dict):
        return format_kid(value, digits)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "" if value is None else str(value)


def _markdown_header(report: dict[str, Any]) -> list[str]:
    if report.get("mode") == "real_vs_real":
        title = f"# Real vs real: {report['dataset']}, {report['image_size']} px"
    else:
        title = (f"# Evaluation of {report['workdir']} ({report['system']}), step {report['step']} "
                 f"({report['checkpoint']} checkpoint)")
    setting = f"Dataset `{report['dataset']}` at {report['image_size']} px; Inception weights: {report['inception']}"
    if "samples_per_caption" in report:
        setting += f"; {report['samples_per_caption']} sample(s) per caption, seed {report['seed']}"
    return [title, "", setting + ".", ""]


def markdown_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table, one column per split (or split pair), then the notes."""
    results = report["results"]
    columns = list(results)
    labels = [f"{c} ({SPLIT_TITLES[c]})" if c in SPLIT_TITLES else c for c in columns]
    subsets = "/".join(sorted({str(results[c]["kid"]["subsets"]) for c in columns}))
    sizes = "/".join(str(n) for n in sorted({results[c]["kid"]["subset_size"] for c in columns}))
    rows = [("FID ↓", "fid", 2), (f"KID ↓ ({subsets} subsets of {sizes})", "kid", 4),
            ("IS ↑", "inception_score", 3), ("CLIP score ↑", "clip_score", 2),
            ("CLIP cosine ↑", "clip_cosine", 4), ("real images", "num_real", 0),
            ("generated images", "num_generated", 0)]
    known = {key for _, key, _ in rows}
    counts = sorted({key for c in columns for key in results[c] if key.startswith("num_")} - known)
    rows += [(f"{key[4:]} images", key, 0) for key in counts]  # real_vs_real: num_<split>
    lines = _markdown_header(report)
    lines += ["| metric | " + " | ".join(labels) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, key, digits in rows:
        if any(results[c].get(key) is not None for c in columns):
            cells = [_format(results[c].get(key), digits) for c in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += _alignment_rows([results[c].get("alignment") or {} for c in columns])
    notes = [f"{c}: {note}" for c in columns for note in results[c]["notes"]]
    notes.append("FID is biased upwards for fewer than a few thousand images; compare runs at equal sizes.")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes] + [""])


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _alignment_rows(alignments: list[dict]) -> list[str]:
    """R-precision (with the real sprites' ceiling and the shuffled-caption floor), colour agreement and colour
    match (with another species' sprite as its floor)."""
    lines = []
    for k in (1, 5):
        key = f"r_precision_top{k}"
        if any(key in a for a in alignments):
            cells = [f"{_percent(a.get(key))} (real {_percent(a.get(key + '_real'))}, shuffled "
                     f"{_percent(a.get(key + '_shuffled'))}; chance {_percent(a.get('chance_top1') and k * a['chance_top1'])})"
                     if key in a else "n/a" for a in alignments]
            lines.append(f"| R-precision top-{k} ↑ | " + " | ".join(cells) + " |")
    if any("colour_agreement" in a for a in alignments):
        cells = [f"{_percent(a.get('colour_agreement'))} (real {_percent(a.get('colour_agreement_real'))}; "
                 f"{a.get('colour_prompts', 0)} prompts name a colour)" if "colour_prompts" in a else "n/a"
                 for a in alignments]
        lines.append("| colour agreement ↑ | " + " | ".join(cells) + " |")
    if any("colour_match" in a for a in alignments):
        cells = [f"{_percent(a['colour_match'])} (another species' sprite {_percent(a['colour_match_shuffled'])})"
                 if "colour_match" in a else "n/a" for a in alignments]
        lines.append("| colour match with its species' sprite ↑ | " + " | ".join(cells) + " |")
    if any("text_influence" in a for a in alignments):
        cells = [f"{a['text_influence']:.3f} (pixel variance across captions {a['text_variance']:.4f}, across "
                 f"noise {a['noise_variance']:.4f}; real sprites across captions {a['real_variance']:.4f})"
                 if "text_influence" in a else "n/a" for a in alignments]
        lines.append("| text influence ↑ | " + " | ".join(cells) + " |")
    if any("colour_word_accuracy" in a for a in alignments):
        cells = [f"{_percent(a['colour_word_accuracy'])} (chance {_percent(a['colour_word_chance'])}; a colour covers "
                 f"{_percent(a['colour_word_named_share'])} when named, {_percent(a['colour_word_other_share'])} when "
                 "another is)" if "colour_word_accuracy" in a else "n/a" for a in alignments]
        lines.append("| colour words followed ↑ | " + " | ".join(cells) + " |")
    return lines


def write_report(directory: str | Path, name: str, report: dict[str, Any]) -> tuple[Path, Path]:
    """Writes `<name>.json` and `<name>.md` into `directory`; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown_report(report), encoding="utf-8")
    return json_path, md_path


def report_scalars(report: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric results as {'<prefix>/<split>/fid': ..., '.../kid', '.../kid_std', '.../is', ...}."""
    scalars = {}
    for column, results in report["results"].items():
        name = f"{prefix}/{column.replace(' ', '_')}"
        scalars[f"{name}/fid"] = results["fid"]
        scalars[f"{name}/kid"], scalars[f"{name}/kid_std"] = results["kid"]["mean"], results["kid"]["std"]
        if isinstance(results.get("inception_score"), dict):
            scalars[f"{name}/is"] = results["inception_score"]["mean"]
        for key in ("clip_score", "clip_cosine"):
            if isinstance(results.get(key), float):
                scalars[f"{name}/{key}"] = results[key]
        for key, value in (results.get("alignment") or {}).items():
            if isinstance(value, float) and not key.startswith("chance"):
                scalars[f"{name}/{key}"] = value
    return scalars


def log_scalars(workdir: str | Path, step: int, report: dict[str, Any], prefix: str) -> None:
    """Writes the report's numbers to the TensorBoard log in `workdir` (CLU writer)."""
    from pikagen_jax.training.logging import create_writer

    writer = create_writer(workdir)
    writer.write_scalars(step, report_scalars(report, prefix))
    writer.flush()
    writer.close()


# ----------------------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--workdir", help="training work directory (holds checkpoints/); reports are written here")
    p.add_argument("--splits", help="comma-separated splits (default: test_intra if present, and test)")
    p.add_argument("--samples_per_caption", type=int, default=1, help="generated images per caption")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--best", action="store_true", help="use the best checkpoint (by the in-training metric)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the generated images")
    p.add_argument("--kid_subsets", type=int, default=100, help="number of KID subsets")
    p.add_argument("--kid_subset_size", type=int, default=1000,
                   help="images per KID subset (clamped to the smaller set, with a note)")
    p.add_argument("--batch_size", type=int, default=50, help="Inception / generation batch size")
    p.add_argument("--inception", default="fid_helper",
                   help="Inception weights: 'fid_helper', pytorch-fid's .pth (has the IS head) or a .safetensors")
    p.add_argument("--clip_checkpoint", help="Hugging Face CLIP model (directory or hub name) for the CLIP score")
    p.add_argument("--alignment_workdir",
                   help="a trained alignment encoder (python launch.py --config=configs/alignment.py) for R-precision")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), help="diffusion runs: DDIM (fast) or DDPM (all steps)")
    p.add_argument("--sampling_steps", type=int, help="diffusion runs: DDIM steps (default: the run's config)")
    p.add_argument("--guidance_scale", type=float, help="diffusion runs: classifier-free guidance scale")
    p.add_argument("--cache_dir", help="cache of real-image statistics (default: ~/.cache/pikagen_jax)")
    p.add_argument("--real_vs_real", metavar="A,B", help="FID/KID of real split A against real split B instead")
    p.add_argument("--data_dir", default="data/tfds", help="--real_vs_real without --workdir: built datasets")
    p.add_argument("--dataset", default="kaggle", help="--real_vs_real without --workdir: dataset name")
    p.add_argument("--image_size", type=int, default=128, help="--real_vs_real without --workdir: resolution")
    p.add_argument("--out_dir", help="--real_vs_real: where to write the report (default: workdir, else none)")
    return p.parse_args(argv)


def _real_vs_real_main(args: argparse.Namespace, settings: MetricSettings) -> dict[str, Any]:
    pair = [s.strip() for s in args.real_vs_real.split(",") if s.strip()]
    if len(pair) != 2 or pair[0] == pair[1]:
        raise UsageError(f"--real_vs_real needs two different splits, e.g. test,train; got {args.real_vs_real!r}")
    if args.workdir:
        config = run_config(args.workdir)
    else:
        from pikagen_jax.data.pipeline import data_config

        config = data_config()
        config.data.update({"data_dir": args.data_dir, "dataset": args.dataset, "image_size": args.image_size})
    report = real_vs_real(config, *pair, settings=settings, inception_source=args.inception,
                          cache_dir=args.cache_dir)
    out_dir = args.out_dir or args.workdir
    if out_dir:
        name = f"real_vs_real_{pair[0]}_{pair[1]}_{config.data.image_size}px"
        write_report(out_dir, name, report)
        if args.workdir:
            log_scalars(args.workdir, 0, report, prefix="real_vs_real")
    return report


def sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The diffusion sampler flags that were given (other systems take none)."""
    names = ("sampler", "sampling_steps", "guidance_scale")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pikagen_jax.metrics.inception import ClassifierHeadUnavailableError

    try:
        settings = MetricSettings(kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                                  batch_size=args.batch_size)
        if args.real_vs_real:
            report = _real_vs_real_main(args, settings)
        elif not args.workdir:
            raise UsageError("pass --workdir=<training work directory> (or --real_vs_real=A,B)")
        else:
            splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
            report = evaluate_run(args.workdir, splits=splits, samples_per_caption=args.samples_per_caption,
                                  step=args.step, best=args.best, settings=settings,
                                  inception_source=args.inception, clip_checkpoint=args.clip_checkpoint,
                                  seed=args.seed, cache_dir=args.cache_dir, sampler_options=sampler_options(args),
                                  alignment_workdir=args.alignment_workdir)
    except (UserError, ClassifierHeadUnavailableError) as error:
        if debug_enabled():
            raise
        print(format_user_error(error), file=sys.stderr)
        return EXIT_USER_ERROR
    print(markdown_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
