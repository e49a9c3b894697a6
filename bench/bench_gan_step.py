"""Times the GAN's jitted training step: compile time, median step time, images/s, XLA FLOP count.

    python bench/bench_gan_step.py --preset=cpu --image_size=64 --batch_size=32 [--steps=10]

Uses random batches (the loader is measured separately by bench/bench_data.py), so it needs no dataset.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from flax import nnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--override", action="append", default=[], help="extra config overrides k=v")
    args = parser.parse_args()

    from pikagen_jax.config_utils import load_config
    from pikagen_jax.gan.state import GanState
    from pikagen_jax.gan.steps import make_train_step
    from pikagen_jax.training.mesh import make_mesh, replicate_nodes, shard_batch

    config = load_config(f"configs/gan.py:{args.preset}", [f"data.image_size={args.image_size}",
                                                            f"train.batch_size={args.batch_size}", *args.override])
    mesh = make_mesh()
    state = GanState(config, rngs=nnx.Rngs(0))
    replicate_nodes(mesh, state)
    step_fn = make_train_step(state, config, mesh)
    rng = np.random.default_rng(0)
    b, s, t = args.batch_size, args.image_size, config.text.max_length
    batch = shard_batch({"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
                         "token_ids": rng.integers(1000, 20000, (b, t)).astype(np.int32),
                         "attention_mask": (np.arange(t)[None] < rng.integers(8, t, (b, 1))).astype(np.int32)}, mesh)
    lowered = step_fn.jitted.lower(nnx.state(state), batch, np.int32(0))
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    jax.block_until_ready(step_fn(batch, 0))  # warm-up (uses the jit cache entry compiled above)
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        jax.block_until_ready(step_fn(batch, i + 1))
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    result = {"preset": args.preset, "image_size": s, "batch_size": b, "compile_s": round(compile_s, 1),
              "step_s_median": round(median, 3), "images_per_s": round(b / median, 2),
              "gflop_per_step": round(flops / 1e9, 1), "achieved_gflops": round(flops / 1e9 / median, 1),
              "devices": jax.device_count()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
