"""Generate sprites from text with a trained model of any system (gan, l1, diffusion, dcgan).

    python -m pikagen_jax.generate --workdir=workdirs/gan --prompt="A small blue turtle with a shell." \
        --num=8 --out=grid.png
    python -m pikagen_jax.generate --workdir=workdirs/gan --prompts_file=prompts.txt --num=4 --out_dir=samples/
    python -m pikagen_jax.generate --workdir=workdirs/diffusion --prompt="A fiery lizard." --sampler=ddim \
        --sampling_steps=50 --guidance_scale=3
    python -m pikagen_jax.generate --workdir=workdirs/dcgan --num=32          # unconditional: no prompt
    python -m pikagen_jax.generate --model=models/gan64 --prompt="A fiery lizard."   # an exported model folder

Loads the run's config and networks from the latest checkpoint (or `--best`, or `--step=N`) through
`pikagen_jax.run_sampler.load_run_sampler`. The same `--seed` gives the same images. One grid row per prompt
(unconditional DCGAN runs: rows of up to 8 images; prompts are ignored, with a note). `--sampler`,
`--sampling_steps` and `--guidance_scale` apply to diffusion runs (default: the run's `config.sample`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pikagen_jax.errors import (
    EXIT_USER_ERROR,
    InputFileNotFoundError,
    UsageError,
    UserError,
    debug_enabled,
    format_user_error,
)

UNCONDITIONAL_COLUMNS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training work directory (holds checkpoints/)")
    source.add_argument("--model", help="an exported model folder (python -m pikagen_jax.export)")
    p.add_argument("--prompt", action="append", default=[], help="a description; repeat for several")
    p.add_argument("--prompts_file", help="a text file with one description per line")
    p.add_argument("--num", type=int, default=8, help="images per prompt (unconditional runs: images in all)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same seed → same images)")
    p.add_argument("--out", default="generated.png", help="PNG grid to write (one row per prompt)")
    p.add_argument("--out_dir", help="also write every image as its own PNG here")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--best", action="store_true", help="use the best checkpoint (by the eval metric)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), help="diffusion runs: DDIM (fast) or DDPM (all steps)")
    p.add_argument("--sampling_steps", type=int, help="diffusion runs: DDIM steps (e.g. 50)")
    p.add_argument("--guidance_scale", type=float,
                   help="diffusion runs: classifier-free guidance (1 = conditional only, > 1 stronger text)")
    return p.parse_args(argv)


def collect_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts of --prompt and --prompts_file (possibly none); an empty prompt is an error."""
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise InputFileNotFoundError(f"prompts file {path} not found")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise UsageError(f"prompt #{empty[0] + 1} is empty: give a non-empty description")
    return prompts


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts of --prompt and --prompts_file; none at all is an error."""
    prompts = collect_prompts(args)
    if not prompts:
        raise UsageError("no prompt given: pass --prompt='A fiery lizard…' (repeatable) or --prompts_file")
    return prompts


def load_gan_for_sampling(workdir: Path, step: int | None = None, best: bool = False):
    """(config, text encoder, EMA generator, step) of a GAN run; see `pikagen_jax.gan.sampling`."""
    from pikagen_jax.gan import sampling

    return sampling.load_gan_for_sampling(workdir, step, best)


def sampler_options(args: argparse.Namespace) -> dict:
    """The sampler options given on the command line (diffusion runs)."""
    if args.sampling_steps is not None and args.sampling_steps < 1:
        raise UsageError(f"--sampling_steps must be at least 1, got {args.sampling_steps}")
    names = ("sampler", "sampling_steps", "guidance_scale")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def generate(args: argparse.Namespace) -> np.ndarray:
    """Generates `num` images per prompt; writes the grid (and single PNGs); returns the images."""
    from pikagen_jax.data.pipeline import tokenizer_from_config
    from pikagen_jax.run_sampler import load_run_sampler
    from pikagen_jax.training.logging import make_image_grid, save_png, to_uint8

    if args.num < 1:
        raise UsageError(f"--num must be at least 1, got {args.num}")
    prompts = collect_prompts(args)
    options = sampler_options(args)
    sampler = load_run_sampler(args.model or args.workdir, step=args.step, best=args.best, **options)
    if sampler.conditional:
        if not prompts:
            read_prompts(args)  # raises: a text-conditioned run needs a prompt
        tokenizer = tokenizer_from_config(sampler.config)
        rows = [sampler.generate(*tokenizer([prompt] * args.num), args.seed + index)
                for index, prompt in enumerate(prompts)]
        images, columns = np.concatenate(rows), args.num
    else:
        if prompts:
            print(f"note: {sampler.config.system} runs are unconditional; the prompt(s) are ignored", file=sys.stderr)
        images = sampler.generate(np.zeros((args.num, 1), np.int32), np.ones((args.num, 1), np.int32), args.seed)
        columns = min(args.num, UNCONDITIONAL_COLUMNS)
    save_png(args.out, make_image_grid(images, ncols=columns))
    if args.out_dir:
        from PIL import Image

        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_uint8(images)):
            name = f"prompt{i // args.num:03d}_{i % args.num:02d}.png" if sampler.conditional else f"sample_{i:03d}.png"
            Image.fromarray(image).save(out_dir / name)
    what = f"{len(prompts)} prompt(s)" if sampler.conditional else "no prompt (unconditional)"
    print(f"wrote {len(images)} image(s) for {what} with {sampler.description} to {args.out}")
    return images


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line for a user error (PIKAGEN_JAX_DEBUG=1: its traceback); a bug raises."""
    args = parse_args(argv)
    try:
        generate(args)
    except UserError as error:
        if debug_enabled():
            raise
        print(format_user_error(error), file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
