r"""XLA's convolution vs the im2col + matmul and the space-to-depth forms (`pikagen_jax.models.conv_matmul`)
for the seed-002 discriminator's conv shapes: forward, first-order gradient and MA-GP's second-order
gradient (grad of a function of the input gradient), median wall time per call.

    python bench/bench_conv_impl.py --batch=32      # 32 = 2 x 16: D's trunk sees the real and the fake batch

This is the measurement behind `conv_impl='auto'` (space-to-depth for strided convs, XLA's for stride 1).

    python bench/bench_conv_impl.py --model=l1 --batch=10

times the L1 decoder's transposed convolutions in their sub-pixel form (a 2×2 stride-1 conv with padding 1
and s²·C_out output channels, `TorchConvTranspose`): XLA's conv with JAX's gradient rules, im2col + matmul,
and `conv2d_stride1` (custom VJP), forward and forward + backward.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from pikagen_jax.models.conv_matmul import conv2d, conv2d_matmul, conv2d_stride1

# (side, C_in, C_out, kernel, stride, padding) of the seed-002 discriminator at 64 px, base width 32.
SHAPES = [(64, 3, 32, 3, 1, 1), (64, 32, 32, 3, 1, 1), (64, 32, 64, 4, 2, 1), (32, 64, 64, 3, 1, 1),
          (32, 64, 128, 4, 2, 1), (16, 128, 128, 3, 1, 1), (16, 128, 256, 4, 2, 1), (8, 256, 256, 4, 2, 1)]
# (input side, C_in, C_out) of the seed-001 L1 decoder's 4×4 stride-2 transposed convs at 215 px.
L1_SHAPES = [(8, 1024, 512), (16, 512, 256), (32, 256, 128), (64, 128, 64), (128, 64, 3)]


def median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", choices=("gan", "l1"), default="gan")
    args = parser.parse_args()
    if args.model == "l1":
        return l1_table(args)
    impls = ("xla", "matmul", "space_to_depth")
    print("| conv | " + " | ".join(f"{what} {impl}" for what in ("fwd", "grad", "2nd-order") for impl in impls) + " |")
    print("|---|" + "---|" * 3 * len(impls))
    for side, c_in, c_out, k, s, p in SHAPES:
        x = jax.random.normal(jax.random.key(0), (args.batch, side, side, c_in))
        w = jax.random.normal(jax.random.key(1), (k, k, c_in, c_out)) * 0.05
        ms = {}
        for impl in impls:
            conv = lambda x, w, impl=impl: conv2d(x, w, (s, s), p, impl=impl)  # noqa: E731
            forward = jax.jit(conv)
            first = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.square(conv(x, w))), argnums=(0, 1)))

            def penalty(x, w, conv=conv):
                grad_x = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w))))(x)
                return jnp.sum(grad_x ** 2)

            second = jax.jit(jax.grad(penalty, argnums=1))
            ms[impl] = [1e3 * median_seconds(f, x, w, repeats=args.repeats) for f in (forward, first, second)]
        cells = [f"{ms[impl][i]:.0f} ms" for i in range(3) for impl in impls]
        print(f"| {side} px {c_in}->{c_out} {k}x{k}/{s} | " + " | ".join(cells) + " |", flush=True)


def l1_table(args) -> None:
    pad = ((1, 1), (1, 1))
    forms = {"xla": lambda x, w: conv2d(x, w, (1, 1), pad, impl="xla"),
             "matmul": lambda x, w: conv2d_matmul(x, w, (1, 1), pad),
             "stride1_vjp": lambda x, w: conv2d_stride1(x, w, pad)}
    print("| transposed conv (sub-pixel form) | " + " | ".join(f"{what} {name}" for what in ("fwd", "fwd+bwd")
                                                        for name in forms) + " |")
    print("|---|" + "---|" * 2 * len(forms))
    for side, c_in, c_out in L1_SHAPES:
        x = jax.random.normal(jax.random.key(0), (args.batch, side, side, c_in))
        w = jax.random.normal(jax.random.key(1), (2, 2, c_in, 4 * c_out)) * 0.05
        ms = {}
        for name, conv in forms.items():
            both = jax.jit(jax.grad(lambda x, w, conv=conv: jnp.sum(jnp.square(conv(x, w))), argnums=(0, 1)))
            ms[name] = [1e3 * median_seconds(f, x, w, repeats=args.repeats) for f in (jax.jit(conv), both)]
        cells = [f"{ms[name][i]:.0f} ms" for i in range(2) for name in forms]
        print(f"| {side}->{2 * side} px {c_in}->{c_out} ch | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
