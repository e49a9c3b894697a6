"""Generate sprites from text with a trained model.

    python -m pikagen_jax.generate --workdir=workdirs/gan --prompt="A small blue turtle with a shell." \
        --num=8 --out=grid.png
    python -m pikagen_jax.generate --workdir=workdirs/gan --prompts_file=prompts.txt --num=4 --out_dir=samples/

Loads the config and the EMA generator + text encoder from the latest checkpoint (or `--best`, or
`--step=N`). The same `--seed` gives the same images. One grid row per prompt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--workdir", required=True, help="training work directory (holds checkpoints/)")
    p.add_argument("--prompt", action="append", default=[], help="a description; repeat for several")
    p.add_argument("--prompts_file", help="a text file with one description per line")
    p.add_argument("--num", type=int, default=8, help="images per prompt")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same seed → same images)")
    p.add_argument("--out", default="generated.png", help="PNG grid to write (one row per prompt)")
    p.add_argument("--out_dir", help="also write every image as its own PNG here")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--best", action="store_true", help="use the best checkpoint (by the eval metric)")
    return p.parse_args(argv)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {path} not found")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompt given: pass --prompt='A fiery lizard…' (repeatable) or --prompts_file")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise ValueError(f"prompt #{empty[0] + 1} is empty: give a non-empty description")
    return prompts


def load_gan_for_sampling(workdir: Path, step: int | None = None, best: bool = False):
    """(config, text encoder, EMA generator) restored from a GAN work directory."""
    import jax.numpy as jnp
    import ml_collections
    from flax import nnx

    from pikagen_jax.gan.state import build_generator, build_text_encoder, compute_dtype
    from pikagen_jax.training.checkpointing import Checkpointer

    if not (workdir / "checkpoints").is_dir():
        raise FileNotFoundError(f"no checkpoints in {workdir}: train first with "
                                f"`python launch.py --config=configs/gan.py --workdir={workdir}`")
    checkpointer = Checkpointer(workdir, read_only=True)
    config = ml_collections.ConfigDict(checkpointer.restore_config(step=step))
    if best:
        if not config.checkpoint.best_metric:
            raise ValueError(f"--best: the run in {workdir} keeps no best checkpoint (checkpoint.best_metric "
                             "is empty); drop --best or train with --config.eval.every_steps=N")
        checkpointer = Checkpointer.from_config(workdir, config, read_only=True)
    if config.system != "gan":
        raise ValueError(f"{workdir} holds a {config.system!r} run; this command generates with 'gan' runs")
    text = build_text_encoder(config, nnx.Rngs(0), compute_dtype(config))
    generator = build_generator(config, nnx.Rngs(0), jnp.float32)
    resolved = step if step is not None else (checkpointer.best_step() if best else checkpointer.latest_step())
    restored = checkpointer.restore({"text_encoder": text, "ema_generator": generator}, step=resolved, best=best)
    nnx.update(text, restored["text_encoder"])
    nnx.update(generator, restored["ema_generator"])
    return config, text, generator, resolved


def generate(args: argparse.Namespace) -> np.ndarray:
    """Generates `num` images per prompt; writes the grid (and single PNGs); returns the images."""
    from pikagen_jax.data.pipeline import tokenizer_from_config
    from pikagen_jax.gan.sampling import make_sampler, noise
    from pikagen_jax.training.logging import make_image_grid, save_png, to_uint8

    if args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}")
    prompts = read_prompts(args)
    config, text, generator, step = load_gan_for_sampling(Path(args.workdir), args.step, args.best)
    tokenizer = tokenizer_from_config(config)
    sample = make_sampler(text, generator)
    rows = []
    for index, prompt in enumerate(prompts):
        ids, mask = tokenizer([prompt] * args.num)
        z = noise(args.seed + index, args.num, config.model.z_dim)
        rows.append(np.asarray(sample(ids, mask, z)))
    images = np.concatenate(rows)
    save_png(args.out, make_image_grid(images, ncols=args.num))
    if args.out_dir:
        from PIL import Image

        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_uint8(images)):
            Image.fromarray(image).save(out_dir / f"prompt{i // args.num:03d}_{i % args.num:02d}.png")
    print(f"wrote {len(images)} image(s) for {len(prompts)} prompt(s) from step {step} to {args.out}")
    return images


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        generate(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
