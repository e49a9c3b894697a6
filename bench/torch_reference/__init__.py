"""PyTorch re-implementations of the seed-002 cGAN and the seed-000/001 L1 model, for benchmarks only.

They mirror `pikagen_jax.models` layer by layer (same widths, same parameter counts, same train step) so
that `bench/bench_vs_torch.py` times the same work in both frameworks. Not part of the installed package:
they need the test extras (torch, transformers).
"""
