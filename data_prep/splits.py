"""Deterministic species-level splits: train/val/test (novel species) and the intra-class test."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test", "test_intra")


@dataclasses.dataclass
class SplitPlan:
    """Which species go where, and which captions of training species are held out.

    `species[split]` lists national numbers; `test` holds species never seen in training (the
    novel-class test). `intra_captions[n]` are the caption indices of training species `n` that are
    held out of training and form the intra-class test (unseen captions of seen species).
    """

    species: dict[str, list[int]]
    intra_captions: dict[int, list[int]]
    seed: int
    fractions: tuple[float, float, float]
    source: str  # "random" or the split file used

    def to_json(self) -> dict:
        return {
            "seed": self.seed, "fractions": list(self.fractions), "source": self.source,
            "species": self.species,
            "intra_captions": {str(k): v for k, v in self.intra_captions.items()},
        }


def _random_species_split(numbers: list[int], seed: int, fractions: tuple[float, float, float]
                          ) -> dict[str, list[int]]:
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(sorted(numbers))
    n = len(order)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    n_train = n - n_val - n_test
    return {
        "train": sorted(int(x) for x in order[:n_train]),
        "val": sorted(int(x) for x in order[n_train:n_train + n_val]),
        "test": sorted(int(x) for x in order[n_train + n_val:]),
    }


def _species_split_from_file(numbers: list[int], split_file: Path) -> tuple[dict[str, list[int]], list[str]]:
    data = json.loads(Path(split_file).read_text())
    missing = [k for k in ("train", "val", "test") if k not in data]
    if missing:
        raise ValueError(f"split file {split_file} lacks {missing}; it needs 'train', 'val' and 'test' lists")
    present = set(numbers)
    warnings = []
    species = {}
    for split in ("train", "val", "test"):
        listed = [int(x) for x in data[split]]
        absent = [x for x in listed if x not in present]
        if absent:
            warnings.append(f"split file {split_file}: {len(absent)} {split} species not in the source "
                            f"(e.g. {absent[:5]}); left out")
        species[split] = sorted(x for x in listed if x in present)
    assigned = set().union(*map(set, species.values()))
    unassigned = sorted(present - assigned)
    if unassigned:
        raise ValueError(f"split file {split_file} does not place {len(unassigned)} species of the source "
                         f"(e.g. {unassigned[:5]}); use a split file that covers the source or drop --split_file")
    return species, warnings


def plan_splits(captions_per_species: dict[int, int], *, seed: int = 0,
                fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                split_file: Path | str | None = None, intra_holdout: int = 1
                ) -> tuple[SplitPlan, list[str]]:
    """Plans the splits from {national_number: number of captions}. Deterministic in `seed`.

    Training species with more than `intra_holdout` captions give their last `intra_holdout`
    captions (in a seeded random order) to the intra-class test; species with a single caption
    keep it for training. Returns the plan and any warnings.
    """
    numbers = sorted(captions_per_species)
    warnings: list[str] = []
    if split_file:
        species, warnings = _species_split_from_file(numbers, Path(split_file))
        source = str(split_file)
    else:
        species = _random_species_split(numbers, seed, tuple(fractions))
        source = "random"
    rng = np.random.default_rng(seed + 1)
    intra: dict[int, list[int]] = {}
    if intra_holdout > 0:
        for number in species["train"]:
            count = captions_per_species[number]
            if count > intra_holdout:
                intra[number] = sorted(int(i) for i in rng.permutation(count)[:intra_holdout])
    species["test_intra"] = sorted(intra)
    return SplitPlan(species, intra, seed, tuple(fractions), source), warnings
