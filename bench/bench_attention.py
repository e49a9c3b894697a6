"""The GAN generator's cross-attention, folded vs textbook order, side by side in one process.

    python bench/bench_attention.py [--batch=16] [--tokens=64] [--gen_batch=64] [--repeats=6]

Part 1: one `CrossAttention` per generator stage of the 64 px seed-002 network (4 heads × 64, 256-d tokens),
forward + backward (gradients w.r.t. its weights and input), median ms. Part 2: the folded order's core,
`folded_attention` (blocked, hand-written backward) against the same expression left to autodiff
(`folded_attention_autodiff`), forward and forward + backward, at the 32–128 px stages' shapes. Part 3: the
whole generator's forward at `--gen_batch` (generation), 64 and 128 px, images/s. The variants compared
alternate call by call, so both see the same machine load. Random weights and inputs; float32.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pikagen_jax.models.folded_attention import folded_attention, folded_attention_autodiff
from pikagen_jax.models.gan import CrossAttention, Generator


def alternate(fns: dict, args: tuple, repeats: int) -> dict[str, float]:
    """Median seconds per call of each fn, calls interleaved."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def text_inputs(rng: np.random.Generator, batch: int, tokens: int):
    token_states = jnp.asarray(rng.normal(size=(batch, tokens, 256)), jnp.float32)
    mask = jnp.asarray(np.arange(tokens)[None] < rng.integers(5, tokens, (batch, 1)), jnp.int32)
    return token_states, mask


def bench_layers(batch: int, tokens: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    token_states, mask = text_inputs(rng, batch, tokens)
    print("| map | channels | textbook ms | folded ms | textbook / folded | auto picks |\n|---|---|---|---|---|---|")
    for size, channels in [(8, 256), (16, 128), (32, 64), (64, 32)]:
        module = CrossAttention(channels, 256, num_heads=4, head_dim=64, dtype=jnp.float32,
                                param_dtype=jnp.float32, rngs=nnx.Rngs(0))
        graph, params = nnx.split(module)
        x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)

        def make(folded):
            def loss(params, x):
                attention = nnx.merge(graph, params)
                attention.folded = folded
                y = attention(x, token_states, mask)
                return jnp.sum(y * jnp.cos(y))
            return jax.jit(jax.grad(loss, argnums=(0, 1)))

        med = alternate({"textbook": make(False), "folded": make(True)}, (params, x), repeats)
        pick = "folded" if module._fold(channels, tokens) else "textbook"
        print(f"| {size}×{size} | {channels} | {med['textbook'] * 1e3:.0f} | {med['folded'] * 1e3:.0f} | "
              f"{med['textbook'] / med['folded']:.2f} | {pick} |")


def bench_folded_core(batch: int, tokens: int, repeats: int, heads: int = 4, head_dim: int = 64) -> None:
    rng = np.random.default_rng(2)
    keep = jnp.asarray(np.arange(tokens)[None] < rng.integers(5, tokens, (batch, 1)))
    print("\n| folded core (batch %d) | autodiff fwd ms | blocked fwd ms | autodiff fwd+bwd ms | blocked fwd+bwd ms "
          "| fwd+bwd speed-up |\n|---|---|---|---|---|---|" % batch)
    for size, channels in [(32, 64), (64, 32), (128, 32)]:
        normal = lambda *shape: jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[-2]), jnp.float32)  # noqa: E731
        args = (normal(batch, size * size, channels), normal(batch, channels, heads * tokens),
                normal(channels, heads * head_dim), normal(batch, heads * tokens, channels))
        fns = {}
        for name, attend in (("autodiff", folded_attention_autodiff), ("blocked", folded_attention)):
            run = lambda x, qk, wq, vo, attend=attend: attend(x, qk, wq, vo, keep, 0.125, num_heads=heads)  # noqa: E731
            fns[name] = jax.jit(run)
            fns[name + "_grad"] = jax.jit(jax.grad(lambda *a, run=run: jnp.sum(jnp.cos(run(*a))), argnums=(0, 1, 2, 3)))
        med = alternate(fns, args, repeats)
        print(f"| {size}×{size}, {channels} ch | {med['autodiff'] * 1e3:.0f} | {med['blocked'] * 1e3:.0f} | "
              f"{med['autodiff_grad'] * 1e3:.0f} | {med['blocked_grad'] * 1e3:.0f} | "
              f"{med['autodiff_grad'] / med['blocked_grad']:.2f} |")


def bench_generation(gen_batch: int, tokens: int, repeats: int) -> None:
    rng = np.random.default_rng(1)
    token_states, mask = text_inputs(rng, gen_batch, tokens)
    print("\n| generator | textbook img/s | auto img/s | auto / textbook |\n|---|---|---|---|")
    for size in (64, 128):
        graph, params = nnx.split(Generator(size, z_dim=100, rngs=nnx.Rngs(0)))
        z = jnp.asarray(rng.normal(size=(gen_batch, 100)), jnp.float32)
        sentence = jnp.asarray(rng.normal(size=(gen_batch, 256)), jnp.float32)

        def make(folded):
            def run(params):
                gen = nnx.merge(graph, params)
                for stage in gen.stages:
                    stage.attention.folded = folded
                return gen(z, sentence, token_states, mask)
            return jax.jit(run)

        fns = {"textbook": make(False), "auto": make(None)}
        gap = float(jnp.abs(fns["textbook"](params) - fns["auto"](params)).max())
        med = alternate(fns, (params,), repeats)
        print(f"| {size} px, batch {gen_batch} | {gen_batch / med['textbook']:.1f} | {gen_batch / med['auto']:.1f} | "
              f"{med['textbook'] / med['auto']:.2f} (max pixel gap {gap:.1e}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="batch of the per-layer forward + backward")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--gen_batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    bench_layers(args.batch, args.tokens, args.repeats)
    bench_folded_core(args.batch, args.tokens, args.repeats)
    bench_generation(args.gen_batch, args.tokens, args.repeats)


if __name__ == "__main__":
    main()
