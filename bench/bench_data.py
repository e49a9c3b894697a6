"""Benchmarks the dataset build and the Grain loader on the 898-species Kaggle set.

    python bench/bench_data.py --source_dir=../shared/data/pokemon_kaggle [--batches=20]

Measures (one run, side by side): build time of the ArrayRecord shards, then training-loader
throughput in images/s at batch 64, 128 px, for 0, 1 and 2 worker processes (augmentations of seed 002
on: flip, mild affine, colour jitter; caption sampling and tokenization included).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import ml_collections


def measure_loader(config: ml_collections.ConfigDict, batches: int) -> float:
    from pikagen_jax.data.pipeline import make_train_loader

    iterator = iter(make_train_loader(config))
    next(iterator)  # start-up (worker spawn, first decode) excluded
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * config.train.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source_dir", default="../shared/data/pokemon_kaggle")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image_size", type=int, default=128)
    args = parser.parse_args()

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    from data_prep.build import build, parse_args
    from pikagen_jax.data.pipeline import data_config

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        name, _, summary = build(parse_args(["--source=kaggle", f"--source_dir={args.source_dir}",
                                             f"--data_dir={tmp}"]))
        build_seconds = time.perf_counter() - start
        print(summary)
        config = data_config()
        config.data.data_dir, config.data.dataset, config.data.image_size = tmp, name, args.image_size
        config.data.augment.update({"hflip": True, "affine": True, "color_jitter": True})
        config.seed = 0
        config.train = ml_collections.ConfigDict({"batch_size": 64})
        results = {"build_seconds": round(build_seconds, 2), "machine": platform.platform(),
                   "image_size": args.image_size, "batch_size": 64, "images_per_second": {}}
        for workers in args.workers:
            config.data.worker_count = workers
            ips = measure_loader(config, args.batches)
            results["images_per_second"][workers] = round(ips, 1)
            print(f"workers={workers}: {ips:.1f} images/s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
