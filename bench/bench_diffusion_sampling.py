"""Times text -> image sampling of the latent-diffusion system: DDIM (default 50 steps) with classifier-free
guidance, text encoding and VAE decoding included; images/s after warm-up.

    python bench/bench_diffusion_sampling.py --preset=cpu --batch_size=8 --steps=50 --guidance_scale=3
    python bench/bench_diffusion_sampling.py --workdir=workdirs/diffusion_cpu --batch_size=8   # a trained run

Random-init networks of the preset's shapes unless --workdir is given (speed does not depend on the weights).
Prints one JSON line: compile time, median seconds per batch, images/s, ms per denoising step.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np


def build_sampler(args: argparse.Namespace):
    """(config, LatentDiffusionSampler) from a trained run or random networks of a preset."""
    from flax import nnx

    from pikagen_jax.config_utils import load_config
    from pikagen_jax.diffusion.sampling import LatentDiffusionSampler, load_sampling_networks, sampling_stage
    from pikagen_jax.diffusion.state import LatentStats, build_unet, build_vae
    from pikagen_jax.training.text import build_text_encoder

    if args.workdir:
        from pathlib import Path

        workdir = Path(args.workdir)
        config, networks, _ = load_sampling_networks(workdir, sampling_stage(workdir))
    else:
        config = load_config(f"configs/diffusion.py:{args.preset}" if args.preset else "configs/diffusion.py",
                             [f"data.image_size={args.image_size}"] if args.image_size else [])
        rngs = nnx.Rngs(0)
        networks = (build_text_encoder(config, rngs), build_vae(config, rngs), build_unet(config, rngs),
                    LatentStats())
    sampler = LatentDiffusionSampler(*networks, config, method=args.method, num_steps=args.steps,
                                     guidance_scale=args.guidance_scale, clip_x0=config.sample.clip_x0 or None)
    return config, sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", help="configs/diffusion.py preset ('' = the seed's full size)")
    parser.add_argument("--image_size", type=int, default=0, help="override data.image_size (0 = the preset's)")
    parser.add_argument("--workdir", default="", help="time a trained run's networks instead")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--method", default="ddim", choices=("ddim", "ddpm"))
    parser.add_argument("--guidance_scale", type=float, default=3.0, help="1 = no guidance (half the U-Net work)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from pikagen_jax.data.pipeline import tokenizer_from_config

    config, sampler = build_sampler(args)
    prompts = ["A small blue turtle with a hard shell. It sprays water from its mouth."] * args.batch_size
    ids, mask = tokenizer_from_config(config)(prompts)
    start = time.perf_counter()
    jax.block_until_ready(sampler(ids, mask, seed=0))  # compile + first run
    warmup_s = time.perf_counter() - start
    times = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(sampler(ids, mask, seed=repeat + 1))
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    steps = args.steps if args.method == "ddim" else config.diffusion.num_timesteps
    print(json.dumps({
        "preset": args.preset if not args.workdir else args.workdir, "image_size": config.data.image_size,
        "latent": list(sampler.latent_shape), "batch_size": args.batch_size, "method": args.method, "steps": steps,
        "guidance_scale": args.guidance_scale, "devices": [str(d) for d in jax.devices()],
        "warmup_s": round(warmup_s, 1), "batch_s_median": round(median, 3), "batch_s_all": [round(t, 3) for t in times],
        "images_per_s": round(args.batch_size / median, 2), "ms_per_step": round(1000 * median / steps, 1),
    }))


if __name__ == "__main__":
    main()
