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
    """Copies the first n JSONL rows and their pixel and art sprites into dest."""
    require_shared_data()
    dest.mkdir(parents=True, exist_ok=True)
    rows = (POKEAPI / "pokeapi_species_en.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    (dest / "pokeapi_species_en.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    names = [f"{json.loads(row)['national_number']:04d}.png" for row in rows]
    for folder in ("sprites96_pixel", "sprites96_art"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(POKEAPI / folder / name, dest / folder / name)
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


def skip_if_triton_would_crash() -> None:
    """transformers' CLIP imports triton, which segfaults when TensorFlow (CLU's writer) is already loaded."""
    import importlib.util
    import sys

    if "tensorflow" in sys.modules and "triton" not in sys.modules and importlib.util.find_spec("triton"):
        pytest.skip("importing triton after TensorFlow segfaults on this stack; run this file on its own")


# The tiny CLIP's cosine, in cosine units, is reached through these sums (worst case per sum, added; features
# are LayerNorm'd, so activations are of order one): vision: 8x8x3 patch conv 192, three LayerNorms (mean and
# variance over 16) 96, q 16, logits 8 (head dim), softmax and weighted sum over 17 tokens 34, out 16, MLP 16 + 32,
# projection 16; text: three LayerNorms 96, q 16, logits 8, softmax and weighted sum over <= 16 tokens 32, out
# 16, MLP 16 + 32, projection 16; then both L2 norms and the dot product over the 8-wide projection, 24; and the
# 4x4-tap bicubic resize of the images, which JAX computes for both sides but may fuse differently under jit, 16.
# The bound holds for any summation order, i.e. whatever kernels (oneDNN for torch, Eigen/YNNPACK for XLA) and
# vector width (AVX2, AVX-512) each side picks on the machine at hand.
TINY_CLIP_COSINE_PATH = (192, 96, 16, 8, 34, 16, 16, 32, 16) + (96, 16, 8, 32, 16, 16, 32, 16) + (24, 16)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A random tiny Hugging Face CLIPModel saved by transformers (CLIP's 49408-token vocabulary, so the
    project's BPE tokenizer fits; 32 px images, 8 px patches; projection 8)."""
    skip_if_triton_would_crash()
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8)
    path = tmp_path_factory.mktemp("tiny_clip")
    transformers.CLIPModel(config).save_pretrained(path)
    return path


def pytest_configure(config):
    # Tests create many small random-init modules; the non-partitionable threefry compiles each new
    # shape ~6x faster on CPU. (Training keeps JAX's default.)
    import jax

    jax.config.update("jax_threefry_partitionable", False)
