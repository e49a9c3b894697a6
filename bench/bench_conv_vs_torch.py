"""3×3 stride-1 convolutions, XLA:CPU (our project flags) against PyTorch (oneDNN), calls alternating in one process.

    python bench/bench_conv_vs_torch.py [--repeats=7] [--threads=2]

These convolutions carry most of the GAN step's FLOPs (about two thirds at 64 px, XLA's cost analysis; the
strided 4×4 ones, computed as 2×2 convolutions after space-to-depth, most of the rest). Shapes: the seed-002
generator's and discriminator's at 64 px, batch 16, NHWC for JAX and NCHW for PyTorch (each framework's
native layout). Forward, and forward + backward (gradients w.r.t. input and kernel), median ms and GFLOP/s
(a forward is 2·9·B·H·W·C_in·C_out FLOPs, forward + backward three times that). float32; both frameworks on
`--threads` CPUs (torch.set_num_threads, and the process's CPU affinity, which sizes XLA:CPU's pool).
"""

from __future__ import annotations

import argparse
import os

SHAPES = [  # (batch, size, in channels, out channels)
    (16, 64, 32, 32), (16, 64, 32, 64), (16, 64, 64, 64), (16, 32, 64, 128), (16, 32, 128, 128),
    (16, 16, 128, 256), (16, 16, 256, 256), (16, 8, 256, 256),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from bench_attention import alternate  # imports JAX: after the affinity is set

    import pikagen_jax  # noqa: F401  (applies the project's XLA flags before JAX starts its CPU client)
    torch.set_num_threads(args.threads)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    jax_fwd = jax.jit(conv)
    jax_grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
    print("| B, size, C_in → C_out | GFLOP fwd | JAX fwd ms | PyTorch fwd ms | JAX fwd+bwd ms | PyTorch fwd+bwd ms "
          "| JAX / PyTorch fwd+bwd GFLOP/s | JAX/PyTorch speed |\n|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    totals = {"jax": 0.0, "torch": 0.0}
    for batch, size, c_in, c_out in SHAPES:
        x = rng.standard_normal((batch, size, size, c_in)).astype(np.float32)
        w = (rng.standard_normal((3, 3, c_in, c_out)) / np.sqrt(9 * c_in)).astype(np.float32)
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
        wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_()

        def torch_fwd():
            with torch.no_grad():
                torch.nn.functional.conv2d(xt, wt, padding=1)

        def torch_grad():
            (torch.nn.functional.conv2d(xt, wt, padding=1) ** 2).sum().backward()
            xt.grad = wt.grad = None

        calls = {"jax_fwd": lambda: jax_fwd(xj, wj), "torch_fwd": torch_fwd,
                 "jax_grad": lambda: jax_grad(xj, wj), "torch_grad": torch_grad}
        med = alternate(calls, (), args.repeats)  # blocks on each result (None for the PyTorch calls)
        gflop = 2 * 9 * batch * size * size * c_in * c_out / 1e9
        totals["jax"] += med["jax_grad"]
        totals["torch"] += med["torch_grad"]
        print(f"| {batch}, {size}, {c_in} → {c_out} | {gflop:.2f} | {med['jax_fwd'] * 1e3:.1f} | "
              f"{med['torch_fwd'] * 1e3:.1f} | {med['jax_grad'] * 1e3:.1f} | {med['torch_grad'] * 1e3:.1f} | "
              f"{3 * gflop / med['jax_grad']:.0f} / {3 * gflop / med['torch_grad']:.0f} | "
              f"{med['torch_grad'] / med['jax_grad']:.2f} |")
    print(f"\nAll shapes, forward + backward: JAX {totals['jax'] * 1e3:.0f} ms, PyTorch {totals['torch'] * 1e3:.0f} ms "
          f"(PyTorch / JAX time {totals['torch'] / totals['jax']:.2f}).")


if __name__ == "__main__":
    main()
