"""Dataset build: both shared layouts, splits, metadata, enriched text, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.build import build, main, parse_args
from data_prep.records import enriched_description, load_sprite_rgb, normalize_text
from data_prep.splits import plan_splits
from pikagen_jax.data.augment import decode_png
from pikagen_jax.data.pipeline import dataset_metadata, open_split
from tests.conftest import KAGGLE, make_kaggle_subset, require_shared_data


def _all_numbers(data_dir, dataset, split):
    src = open_split(data_dir, dataset, split)
    return [int(src[i]["national_number"]) for i in range(len(src))]


def test_kaggle_build_splits_and_records(small_data):
    d, name = small_data["data_dir"], small_data["kaggle"]
    splits = {s: _all_numbers(d, name, s) for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 32, "val": 4, "test": 4}
    assert not set(splits["train"]) & set(splits["test"]) and not set(splits["train"]) & set(splits["val"])
    assert sorted(sum(splits.values(), [])) == list(range(1, 41))
    meta = dataset_metadata(d, name)
    assert sorted(meta["splits"]["species"]["test"]) == sorted(splits["test"])
    with pytest.raises(ValueError, match="test_intra"):  # Kaggle has one caption per species
        open_split(d, name, "test_intra")
    src = open_split(d, name, "train")
    record = next(src[i] for i in range(len(src)) if int(src[i]["national_number"]) == 1)
    assert record["name"] == b"Bulbasaur"
    assert record["enriched_descriptions"][0].decode().endswith(
        "This Pokémon is classified as a Seed Pokémon. Its primary type is Grass, and its secondary type is Poison.")
    image = np.asarray(decode_png(record["image"]))
    assert image.shape == (215, 215, 3) and image.dtype == np.uint8
    assert (image[0, 0] == 255).all() and (image[-1, -1] == 255).all()  # alpha composited onto white


def test_pokeapi_build_has_intra_split_with_unseen_captions(small_data):
    d, name = small_data["data_dir"], small_data["pokeapi"]
    train, intra = open_split(d, name, "train"), open_split(d, name, "test_intra")
    train_caps = {int(train[i]["national_number"]): set(train[i]["descriptions"]) for i in range(len(train))}
    assert len(intra) > 0
    for i in range(len(intra)):
        rec = intra[i]
        number = int(rec["national_number"])
        assert number in train_caps  # a seen species …
        assert not set(rec["descriptions"]) & train_caps[number]  # … with captions never trained on
    novel = set(_all_numbers(d, name, "test"))
    assert not novel & set(train_caps)


def test_split_plan_deterministic_and_seeded():
    counts = {n: 1 + n % 4 for n in range(1, 201)}
    a, _ = plan_splits(counts, seed=3)
    b, _ = plan_splits(counts, seed=3)
    c, _ = plan_splits(counts, seed=4)
    assert a.to_json() == b.to_json()
    assert a.species["test"] != c.species["test"]
    assert [len(a.species[s]) for s in ("train", "val", "test")] == [160, 20, 20]
    assert set(a.species["test_intra"]) <= set(a.species["train"])
    assert all(counts[n] > 1 for n in a.species["test_intra"])


def test_seed000_split_file_reproduces_published_split(tmp_path):
    require_shared_data()
    published = json.loads((KAGGLE / "seed000_split.json").read_text())
    counts = {n: 1 for n in range(1, 899)}
    plan, warnings = plan_splits(counts, split_file=KAGGLE / "seed000_split.json")
    assert not warnings
    assert {s: len(plan.species[s]) for s in ("train", "val", "test")} == {"train": 718, "val": 90, "test": 90}
    assert plan.species["test"] == sorted(published["test"])


def test_bad_input_is_counted_not_dropped_silently(tmp_path, capsys):
    src = make_kaggle_subset(tmp_path / "src", n=12)
    (src / "sprites" / "003.png").write_bytes(b"not a png at all")  # corrupt
    (src / "sprites" / "004.png").unlink()  # missing
    lines = (src / "pokemon_data.csv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split(";")
    row5 = lines[5].split(";")
    row5[header.index("description")] = ""  # no description (species #5)
    lines[5] = ";".join(row5)
    lines.append(lines[2])  # duplicate of species #2
    (src / "pokemon_data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    assert main(["--source=kaggle", f"--source_dir={src}", f"--data_dir={tmp_path / 'out'}"]) == 0
    out = capsys.readouterr()
    assert "skipped 4 row(s)" in out.out
    assert "003.png" in out.err and "004.png" in out.err
    assert "no description" in out.err and "duplicate national_number 2" in out.err
    total = sum(len(open_split(tmp_path / "out", "kaggle", s)) for s in ("train", "val", "test"))
    assert total == 12 - 3  # 12 rows, 3 bad ones skipped; the duplicate row is extra

    with pytest.raises(Exception, match="003.png"):
        build(parse_args(["--source=kaggle", f"--source_dir={src}", f"--data_dir={tmp_path / 'strict'}",
                          "--strict"]))


def test_missing_source_gives_clear_error(tmp_path, capsys):
    assert main(["--source=kaggle", f"--source_dir={tmp_path / 'nope'}", f"--data_dir={tmp_path}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_load_sprite_composites_alpha_onto_white(tmp_path):
    from PIL import Image

    rgba = np.zeros((8, 8, 4), np.uint8)  # the smallest sprite the loader accepts
    rgba[1:3, 1:3] = (200, 0, 0, 255)  # opaque red square, transparent elsewhere
    rgba[0, 0] = (0, 0, 0, 128)  # half-transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "s.png")
    out = load_sprite_rgb(tmp_path / "s.png")
    assert (out[3, 3] == 255).all() and tuple(out[1, 1]) == (200, 0, 0)
    assert 125 <= out[0, 0, 0] <= 129


def test_text_helpers():
    assert normalize_text("A POKéMON\u00ad with\nnewline") == "A Pokémon with newline"
    assert enriched_description("It glows.", "Electric Pokémon", ["electric"]) == (
        "It glows. This Pokémon is classified as an Electric Pokémon. Its primary type is Electric.")
