r"""XLA's convolution vs the im2col + matmul form (`pikagen_jax.models.conv_matmul`) for the seed-002
discriminator's conv shapes: first-order gradient and MA-GP's second-order gradient (grad of a function
of the input gradient), median wall time per call.

    python bench/bench_conv_impl.py --batch=48      # 48 = 3 x 16: D sees real, fake and mismatched pairs

This is the measurement behind `conv_impl='auto'` (matmul form for strided convs only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from pikagen_jax.models.conv_matmul import conv2d

# (side, C_in, C_out, kernel, stride, padding) of the seed-002 discriminator at 64 px, base width 32.
SHAPES = [(64, 3, 32, 3, 1, 1), (64, 32, 32, 3, 1, 1), (64, 32, 64, 4, 2, 1), (32, 64, 64, 3, 1, 1),
          (32, 64, 128, 4, 2, 1), (16, 128, 128, 3, 1, 1), (16, 128, 256, 4, 2, 1), (8, 256, 256, 4, 2, 1)]


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
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| conv | grad xla | grad matmul | 2nd-order xla | 2nd-order matmul | 2nd-order speed-up |")
    print("|---|---|---|---|---|---|")
    for side, c_in, c_out, k, s, p in SHAPES:
        x = jax.random.normal(jax.random.key(0), (args.batch, side, side, c_in))
        w = jax.random.normal(jax.random.key(1), (k, k, c_in, c_out)) * 0.05
        ms = {}
        for impl in ("xla", "matmul"):
            conv = lambda x, w, impl=impl: conv2d(x, w, (s, s), p, impl=impl)  # noqa: E731
            first = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.square(conv(x, w))), argnums=(0, 1)))

            def penalty(x, w, conv=conv):
                grad_x = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w))))(x)
                return jnp.sum(grad_x ** 2)

            second = jax.jit(jax.grad(penalty, argnums=1))
            ms[impl] = [1e3 * median_seconds(f, x, w, repeats=args.repeats) for f in (first, second)]
        print(f"| {side} px {c_in}->{c_out} {k}x{k}/{s} | {ms['xla'][0]:.0f} ms | {ms['matmul'][0]:.0f} ms | "
              f"{ms['xla'][1]:.0f} ms | {ms['matmul'][1]:.0f} ms | {ms['xla'][1] / ms['matmul'][1]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
