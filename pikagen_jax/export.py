"""Export a trained run of any system to a self-contained model folder with a model card.

    python -m pikagen_jax.export --workdir=workdirs/gan64 --out=models/gan64
    python -m pikagen_jax.export --workdir=workdirs/gan64 --best --out=models/gan64_best
    python -m pikagen_jax.generate --model=models/gan64 --prompt="A small blue turtle." --out=grid.png

The folder holds the inference weights only (the EMA generator and text encoder of a GAN; the model of an L1 run;
the text encoder, VAE, latent scale and EMA U-Net of a diffusion run; a DCGAN's generator) as safetensors, the
run's config as JSON, the tokenizer files, a model card (README.md: data, steps, the run's measured metrics, how to
use it) and a sample grid — no optimizer or discriminator state (layout: `pikagen_jax.model_folder`). It is written
to a temporary folder and renamed into place, so a failed export leaves nothing half-written; an existing
non-empty `--out` is refused unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pikagen_jax.errors import EXIT_USER_ERROR, UsageError, UserError, debug_enabled, format_user_error
from pikagen_jax.model_folder import (
    BACKBONE_DIR,
    FORMAT,
    FORMAT_VERSION,
    MODEL_JSON,
    TOKENIZER_DIR,
    WEIGHTS_DIR,
    flat_arrays,
)

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training work directory (holds checkpoints/)")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest intact one)")
    p.add_argument("--best", action="store_true", help="the best checkpoint (by the run's evaluation metric)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p.parse_args(argv)


def _copy_tokenizer(config, folder: Path) -> None:
    from pikagen_jax.data.tokenizers import default_bert_dir, find_clip_vocab

    folder.mkdir(parents=True)
    source = config.text.tokenizer_path or None
    if config.text.tokenizer == "clip":
        vocab = Path(source) if source else find_clip_vocab()
        shutil.copy(vocab, folder / vocab.name)
        return
    source_dir = Path(source) if source else default_bert_dir()
    copied = [shutil.copy(source_dir / name, folder / name) for name in TOKENIZER_FILES if (source_dir / name).is_file()]
    if not copied:
        raise UsageError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {source_dir}")


def _run_metrics(workdir: Path) -> dict[str, Any]:
    """What the run measured: its latest evaluate report and any results.json (L1, alignment)."""
    metrics: dict[str, Any] = {}
    reports = sorted(workdir.glob("eval_*.json"), key=lambda p: p.stat().st_mtime)
    if reports:
        report = json.loads(reports[-1].read_text())
        metrics["evaluate"] = {"file": reports[-1].name, "step": report.get("step"), "results": {
            split: {k: v for k, v in r.items() if k in ("fid", "kid", "alignment", "num_real", "num_generated")}
            for split, r in report.get("results", {}).items()}}
    if (workdir / "results.json").is_file():
        metrics["results"] = json.loads((workdir / "results.json").read_text())
    return metrics


def _sample_grid(workdir: Path) -> Path | None:
    grids = sorted(workdir.rglob("samples/step_*.png"), key=lambda p: (p.stat().st_mtime, p.name))
    return grids[-1] if grids else None


def _metric_lines(metrics: dict[str, Any]) -> list[str]:
    lines = []
    evaluation = metrics.get("evaluate")
    if evaluation:
        for split, r in evaluation["results"].items():
            kid = r.get("kid") or {}
            line = (f"- `{split}` (step {evaluation['step']}): FID {r.get('fid', float('nan')):.1f}, KID "
                    f"{kid.get('mean', float('nan')):.4f} ± {kid.get('std', float('nan')):.4f}")
            alignment = r.get("alignment") or {}
            if alignment.get("r_precision_top1") is not None:
                line += f", R-precision top-1 {100 * alignment['r_precision_top1']:.1f} %"
            if alignment.get("colour_agreement") is not None:
                line += f", colour agreement {100 * alignment['colour_agreement']:.1f} %"
            lines.append(line + f" ({evaluation['file']})")
    if "results" in metrics:
        lines.append(f"- results.json: `{json.dumps(metrics['results'])[:400]}`")
    return lines or ["- none recorded in the work directory (run `python -m pikagen_jax.evaluate --workdir=...`)"]


def model_card(manifest: dict[str, Any], metrics: dict[str, Any], has_grid: bool) -> str:
    """The folder's README.md: what the model is, its data and training, its measured metrics, how to use it."""
    config = manifest["config"]
    data, train = config.get("data", {}), config.get("train", {})
    lines = [f"# {manifest['name']}: a {manifest['system']} model of PikaPikaGen-JAX", "",
             f"Text → Pokémon sprite generation ({manifest['description']}). Exported {manifest['created']} from "
             f"`{manifest['source_workdir']}`, checkpoint step {manifest['step']} ({manifest['checkpoint']}).", "",
             "## Use", "", "```bash",
             f"python -m pikagen_jax.generate --model={manifest['name']} --prompt=\"A small blue turtle with a hard "
             "shell.\" --num=8 --out=grid.png",
             f"python -m pikagen_jax.demo --model={manifest['name']}", "```", "",
             "## Training", "",
             f"- data: `{data.get('dataset')}` at {data.get('image_size')} px (built by `python -m data_prep.build`; "
             "Pokémon names, images and texts © Nintendo / Creatures / GAME FREAK, research use only)",
             f"- {manifest['step']} steps of batch {train.get('batch_size')}; config preset and every setting in "
             f"`{MODEL_JSON}` (`config`)",
             f"- text encoder: {config.get('text', {}).get('backbone', 'none')} "
             f"`{manifest.get('text_checkpoint', 'n/a')}` (its weights are part of this folder)", "",
             "## Measured", "", *_metric_lines(metrics), "",
             "## Files", "",
             f"- `{MODEL_JSON}`: format {FORMAT} v{FORMAT_VERSION}, system, step, config",
             *(f"- `{WEIGHTS_DIR}/{item}.safetensors`" for item in manifest["items"]),
             f"- `{TOKENIZER_DIR}/`, `{BACKBONE_DIR}/`: the tokenizer and the text backbone's shape", ""]
    if has_grid:
        lines[4:4] = ["![samples: top row real validation sprites, below generated from their captions](samples.png)",
                      ""]
    return "\n".join(lines)


def export_run(workdir: str | Path, out: str | Path, *, step: int | None = None, best: bool = False,
               overwrite: bool = False) -> Path:
    """Writes the model folder of `workdir`'s checkpoint to `out`; returns its path."""
    from safetensors.numpy import save_file

    from pikagen_jax.models.text_encoder import write_shape_only
    from pikagen_jax.run_sampler import load_run_sampler

    workdir, out = Path(workdir), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty: pick another --out or pass --overwrite")
    sampler = load_run_sampler(workdir, step=step, best=best)
    config = sampler.config
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / WEIGHTS_DIR).mkdir(parents=True)
        for item, node in sampler.nodes.items():
            save_file(flat_arrays(node), str(tmp / WEIGHTS_DIR / f"{item}.safetensors"))
        if "text" in config and "text_encoder" in sampler.nodes:
            _copy_tokenizer(config, tmp / TOKENIZER_DIR)
            write_shape_only(sampler.nodes["text_encoder"].backbone, tmp / BACKBONE_DIR)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": out.name, "system": config.system,
                    "step": int(sampler.step), "checkpoint": "best" if best else ("step" if step is not None else "latest"),
                    "description": sampler.description, "items": sorted(sampler.nodes),
                    "created": time.strftime("%Y-%m-%d %H:%M"), "source_workdir": str(workdir),
                    "text_checkpoint": config.text.get("checkpoint") if "text" in config else None,
                    "config": json.loads(config.to_json_best_effort())}
        (tmp / MODEL_JSON).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        grid = _sample_grid(workdir)
        if grid is not None:
            shutil.copy(grid, tmp / "samples.png")
        (tmp / "README.md").write_text(model_card(manifest, _run_metrics(workdir), grid is not None), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = export_run(args.workdir, args.out, step=args.step, best=args.best, overwrite=args.overwrite)
    except UserError as error:
        if debug_enabled():
            raise
        print(format_user_error(error), file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"exported {args.workdir} to {out}: {folder_size(out) / 2**20:.1f} MiB (work directory "
          f"{folder_size(Path(args.workdir)) / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
