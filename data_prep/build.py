"""Builds the `pokemon_sprites` dataset (ArrayRecord shards) from a local source folder.

    python -m data_prep.build --source=kaggle --source_dir=../shared/data/pokemon_kaggle
    python -m data_prep.build --source=pokeapi --source_dir=../shared/data/pokeapi_1025
    python -m data_prep.build --source=pypi_default          # offline default, no folder needed

Prints one summary line: examples per split, skipped rows and why, elapsed time.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from data_prep.pokemon_sprites.pokemon_sprites_dataset_builder import LAYOUTS, make_config
from pikagen_jax.errors import EXIT_USER_ERROR, debug_enabled, format_user_error

DEFAULT_DATA_DIR = "data/tfds"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--source", choices=LAYOUTS, default="pypi_default", help="source layout")
    p.add_argument("--source_dir", default=None, help="folder holding the source files (TFDS manual dir)")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="where the shards are written")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--split_file", default=None,
                   help="JSON with train/val/test national numbers (e.g. seed000_split.json) instead of a random split")
    p.add_argument("--intra_holdout", type=int, default=1,
                   help="captions per training species held out for the intra-class test")
    p.add_argument("--sprite_folder", default=None, help="PokeAPI layout: sprite folder to use")
    p.add_argument("--strict", action="store_true", help="stop at the first bad image instead of skipping it")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset exists")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[str, dict, str]:
    """Builds the dataset; returns (config name, report, summary line)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds

    from data_prep.pokemon_sprites.pokemon_sprites_dataset_builder import Builder

    start = time.perf_counter()
    if args.source != "pypi_default" and not (args.source_dir and Path(args.source_dir).is_dir()):
        raise FileNotFoundError(f"source folder {args.source_dir} for --source={args.source} does not exist; "
                                "pass --source_dir pointing at the downloaded data")
    config = make_config(args.source, seed=args.seed, fractions=tuple(args.fractions), split_file=args.split_file,
                         intra_holdout=args.intra_holdout, sprite_folder=args.sprite_folder)
    name = config if isinstance(config, str) else config.name
    target = Path(args.data_dir) / "pokemon_sprites" / name
    previous = None
    if args.overwrite and target.exists():  # kept aside until the new build has succeeded
        previous = target.with_name(f"{target.name}.previous-{os.getpid()}")
        target.rename(previous)
    builder = Builder(config=config, data_dir=args.data_dir, strict=args.strict)
    manual_dir = str(Path(args.source_dir).resolve()) if args.source_dir else None
    try:
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except BaseException:
        if previous is not None:  # a failed rebuild leaves the dataset that was there
            shutil.rmtree(target, ignore_errors=True)
            previous.rename(target)
        raise
    if previous is not None:
        shutil.rmtree(previous)
    report = builder.build_report or {"skipped": builder.info.metadata.get("skipped", []),
                                      "warnings": builder.info.metadata.get("warnings", []), "reused": True}
    counts = " | ".join(f"{s} {builder.info.splits[s].num_examples}" for s in builder.info.splits)
    skipped = report["skipped"]
    reasons = "; ".join(f"{where}: {why}" for where, why in skipped[:5]) + (" …" if len(skipped) > 5 else "")
    summary = (f"pokemon_sprites/{name} at {target}: {counts} examples; skipped {len(skipped)} row(s)"
               + (f" ({reasons})" if skipped else "")
               + (" [already built: reused; --overwrite rebuilds]" if report.get("reused") else "")
               + f"; {time.perf_counter() - start:.1f} s")
    return name, report, summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        _, report, summary = build(args)
    except (FileNotFoundError, ValueError) as e:  # a source folder, file or format the user can fix
        if debug_enabled():
            raise
        print(format_user_error(e), file=sys.stderr)
        return EXIT_USER_ERROR
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    shown = 20
    for where, why in report["skipped"][:shown]:
        print(f"skipped: {where}: {why}", file=sys.stderr)
    if len(report["skipped"]) > shown:
        print(f"skipped: … {len(report['skipped']) - shown} more, all listed under 'skipped' in the "
              "dataset's metadata.json", file=sys.stderr)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
