"""Shared fixtures: small subsets of the real data in ../shared/data, built into temporary shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
KAGGLE = SHARED_DATA / "pokemon_kaggle"
POKEAPI = SHARED_DATA / "pokeapi_1025"


def require_shared_data() -> None:
    if not KAGGLE.is_dir() or not POKEAPI.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (clone the project beside ../shared)")


def make_kaggle_subset(dest: Path, n: int = 40) -> Path:
    """Copies the header + first n rows of the Kaggle CSV and their sprites into dest."""
    require_shared_data()
    (dest / "sprites").mkdir(parents=True, exist_ok=True)
    lines = (KAGGLE / "pokemon_data.csv").read_text(encoding="utf-8").splitlines()
    (dest / "pokemon_data.csv").write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
    for row in lines[1: n + 1]:
        number = int(row.split(";")[0])
        shutil.copy(KAGGLE / "sprites" / f"{number:03d}.png", dest / "sprites" / f"{number:03d}.png")
    return dest


def make_pokeapi_subset(dest: Path, n: int = 40) -> Path:
    """Copies the first n JSONL rows and their pixel sprites into dest."""
    require_shared_data()
    (dest / "sprites96_pixel").mkdir(parents=True, exist_ok=True)
    rows = (POKEAPI / "pokeapi_species_en.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    (dest / "pokeapi_species_en.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    for row in rows:
        number = json.loads(row)["national_number"]
        shutil.copy(POKEAPI / "sprites96_pixel" / f"{number:04d}.png", dest / "sprites96_pixel" / f"{number:04d}.png")
    return dest


def build_dataset(source: str, source_dir: Path | None, data_dir: Path, *extra: str) -> str:
    from data_prep.build import build, parse_args

    name, _, _ = build(parse_args([f"--source={source}", f"--data_dir={data_dir}", *extra]
                                  + ([f"--source_dir={source_dir}"] if source_dir else [])))
    return name


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> dict:
    """Kaggle and PokeAPI subsets (40 species each) built into one temporary data_dir."""
    root = tmp_path_factory.mktemp("small_data")
    data_dir = root / "tfds"
    kaggle = make_kaggle_subset(root / "kaggle_src")
    pokeapi = make_pokeapi_subset(root / "pokeapi_src")
    return {
        "data_dir": data_dir,
        "kaggle": build_dataset("kaggle", kaggle, data_dir),
        "pokeapi": build_dataset("pokeapi", pokeapi, data_dir),
        "kaggle_src": kaggle,
        "pokeapi_src": pokeapi,
    }


def pytest_configure(config):
    # Tests create many small random-init modules; the non-partitionable threefry compiles each new
    # shape ~6x faster on CPU. (Training keeps JAX's default.)
    import jax

    jax.config.update("jax_threefry_partitionable", False)
