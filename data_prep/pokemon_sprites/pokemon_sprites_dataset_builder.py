"""TFDS builder for `pokemon_sprites`: species records → ArrayRecord shards with deterministic splits.

Nothing is downloaded: the source is a local folder (TFDS manual-dir convention), read by one of the
readers in `data_prep.sources`. Images are stored losslessly (PNG) at the source's native size; the
training resolution is chosen at load time by the input pipeline.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_prep.records import BadImageError, ReadResult, encode_png, enriched_description, load_sprite_rgb
from data_prep.splits import SPLITS, plan_splits

LAYOUTS = ("kaggle", "pokeapi", "pypi_default")


@dataclasses.dataclass
class PokemonSpritesConfig(tfds.core.BuilderConfig):
    """How to read the source and split it. `name` should encode every field that changes the data."""

    layout: str = "kaggle"
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_file: str | None = None
    intra_holdout: int = 1
    sprite_folder: str | None = None


def make_config(layout: str, *, seed: int = 0, fractions=(0.8, 0.1, 0.1), split_file: str | None = None,
                intra_holdout: int = 1, sprite_folder: str | None = None) -> PokemonSpritesConfig | str:
    """A builder config whose name encodes every non-default choice (so different splits never share
    a folder). Returns the predefined config's name when all choices are the defaults."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown source layout {layout!r}; choose one of {LAYOUTS}")
    fractions = tuple(float(f) for f in fractions)
    parts = [layout]
    if seed != 0:
        parts.append(f"seed{seed}")
    if fractions != (0.8, 0.1, 0.1):
        parts.append("f" + "_".join(f"{f:g}" for f in fractions))
    if split_file:
        parts.append("splits_" + Path(split_file).stem)
    if intra_holdout != 1:
        parts.append(f"intra{intra_holdout}")
    if sprite_folder:
        parts.append(sprite_folder)
    if len(parts) == 1:
        return layout
    return PokemonSpritesConfig(name="-".join(parts), layout=layout, seed=seed, fractions=fractions,
                                split_file=str(split_file) if split_file else None,
                                intra_holdout=intra_holdout, sprite_folder=sprite_folder)


def read_source(layout: str, source_dir: Path | None, sprite_folder: str | None = None) -> ReadResult:
    """Dispatches to the reader of a source layout."""
    if layout == "kaggle":
        from data_prep.sources.kaggle import read_kaggle
        return read_kaggle(_require_dir(source_dir, layout))
    if layout == "pokeapi":
        from data_prep.sources.pokeapi import read_pokeapi
        return read_pokeapi(_require_dir(source_dir, layout), sprite_folder)
    if layout == "pypi_default":
        from data_prep.sources.pypi_default import read_pypi_default
        return read_pypi_default(source_dir)
    raise ValueError(f"unknown source layout {layout!r}; choose one of {LAYOUTS}")


def _require_dir(source_dir: Path | None, layout: str) -> Path:
    if source_dir is None or not Path(source_dir).is_dir():
        raise FileNotFoundError(f"source folder {source_dir} for layout {layout!r} does not exist; "
                                "pass --source_dir (TFDS manual_dir) pointing at the downloaded data")
    return Path(source_dir)


class Builder(tfds.core.GeneratorBasedBuilder):
    """Pokémon sprites with Pokédex texts, split by species (see data_prep/README in the main README)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [PokemonSpritesConfig(name=layout, layout=layout) for layout in LAYOUTS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the source folder as manual_dir: the Kaggle layout (pokemon_data.csv + sprites/) or the "
        "PokeAPI layout (*.jsonl + sprites96_pixel/). The pypi_default layout needs no folder.")

    def __init__(self, *args, strict: bool = False, **kwargs):
        """`strict=True` raises on the first bad image instead of skipping it and counting it."""
        super().__init__(*args, **kwargs)
        self.strict = strict
        self.build_report: dict = {}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "national_number": tfds.features.Scalar(dtype=np.int32),
                "name": tfds.features.Text(),
                "types": tfds.features.Sequence(tfds.features.Text()),
                "classification": tfds.features.Text(),
                "descriptions": tfds.features.Sequence(tfds.features.Text()),
                "enriched_descriptions": tfds.features.Sequence(tfds.features.Text()),
            }),
            supervised_keys=None,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg: PokemonSpritesConfig = self.builder_config
        start = time.perf_counter()
        # TFDS always sets a manual dir (<data_dir>/downloads/manual by default); only the pypi_default
        # layout may go without one, so an absent or empty folder means "no folder" there.
        manual = Path(dl_manager._manual_dir) if dl_manager._manual_dir else None  # noqa: SLF001 (no getter)
        has_manual = manual is not None and manual.is_dir() and any(manual.iterdir())
        source_dir = manual if (cfg.layout != "pypi_default" or has_manual) else None
        result = read_source(cfg.layout, source_dir, cfg.sprite_folder)
        records, skipped = [], list(result.skipped)
        for record in result.records:
            try:
                image = load_sprite_rgb(record.image_path)
            except BadImageError as e:
                if self.strict:
                    raise BadImageError(f"{record.source_row} (#{record.national_number}): {e}") from e
                skipped.append((record.source_row, f"#{record.national_number} {record.name}: {e}"))
                continue
            records.append((record, encode_png(image)))
        plan, warnings = plan_splits({r.national_number: len(r.descriptions) for r, _ in records},
                                     seed=cfg.seed, fractions=cfg.fractions, split_file=cfg.split_file,
                                     intra_holdout=cfg.intra_holdout)
        by_number = {r.national_number: (r, png) for r, png in records}
        self.info.metadata["splits"] = plan.to_json()
        self.info.metadata["source"] = {"layout": cfg.layout, "dir": str(source_dir or "")}
        self.info.metadata["skipped"] = [list(s) for s in skipped]
        self.info.metadata["warnings"] = list(result.warnings) + warnings
        self.build_report = {"skipped": skipped, "warnings": list(result.warnings) + warnings,
                             "read_seconds": time.perf_counter() - start}
        empty = [split for split in SPLITS if not plan.species[split]]
        if empty:  # TFDS cannot write an empty split; say so instead of failing.
            note = (f"split(s) {empty} are empty and not written"
                    + (" (intra-class test needs species with more than one caption)"
                       if "test_intra" in empty else ""))
            self.info.metadata["warnings"].append(note)
            self.build_report["warnings"].append(note)
        return {split: self._generate_examples(by_number, plan, split)
                for split in SPLITS if split not in empty}

    def _generate_examples(self, by_number, plan, split):
        for number in plan.species[split]:
            record, png = by_number[number]
            held_out = set(plan.intra_captions.get(number, []))
            if split == "test_intra":
                indices = sorted(held_out)
            elif split == "train":
                indices = [i for i in range(len(record.descriptions)) if i not in held_out]
            else:
                indices = list(range(len(record.descriptions)))
            descriptions = [record.descriptions[i] for i in indices]
            yield number, {
                "image": png,
                "national_number": number,
                "name": record.name,
                "types": record.types,
                "classification": record.classification,
                "descriptions": descriptions,
                "enriched_descriptions": [enriched_description(d, record.classification, record.types)
                                          for d in descriptions],
            }
