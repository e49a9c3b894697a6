"""Self-contained model folders: a trained run's inference weights, config and tokenizer, without optimizer or
discriminator state (written by `pikagen_jax.export`, read by `generate --model=DIR` and the demo).

    DIR/model.json                 format + version, system, step, the run's config (JSON), what each file holds
    DIR/weights/<item>.safetensors the inference modules by checkpoint item (GAN: text_encoder, ema_generator;
                                   L1: model; diffusion: text_encoder, vae, latent_stats, ema_unet; DCGAN: generator)
    DIR/text_backbone/config.json  the text backbone's shape (its weights are in weights/text_encoder.safetensors)
    DIR/tokenizer/                 the tokenizer files the captions need
    DIR/README.md, DIR/samples.png the model card and a sample grid

Weights are plain arrays in safetensors files (loaded without pickle); PRNG keys are stored as their key data.
`load_model_sampler(DIR)` builds the same `RunSampler` a work directory gives, so both generate the same images.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pikagen_jax.errors import UserError

FORMAT = "pikagen-jax-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS_DIR = "weights"
TOKENIZER_DIR = "tokenizer"
BACKBONE_DIR = "text_backbone"
KEY_SUFFIX = "#prng_key"


class ModelFolderError(UserError, ValueError):
    """A model folder that is incomplete, of an unknown format, or from a newer version."""


def is_model_folder(path: str | Path) -> bool:
    return (Path(path) / MODEL_JSON).is_file()


def flat_arrays(node: nnx.Module) -> dict[str, np.ndarray]:
    """{'path/to/leaf': array} of a module's state; PRNG keys as their key data under '<path>#prng_key'."""
    out = {}
    for path, leaf in nnx.to_flat_state(nnx.state(node)):
        key = "/".join(str(p) for p in path)
        value = leaf.get_value() if hasattr(leaf, "get_value") else leaf
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            out[key + KEY_SUFFIX] = np.asarray(jax.random.key_data(value))
        else:
            out[key] = np.asarray(value)
    return out


def fill_from_arrays(node: nnx.Module, arrays: dict[str, np.ndarray], what: str) -> None:
    """Puts arrays written by `flat_arrays` back into a module of the same shape (checked per leaf)."""
    graphdef, state = nnx.split(node)
    nested: dict = {}
    for path, leaf in nnx.to_flat_state(state):
        key = "/".join(str(p) for p in path)
        current = leaf.get_value() if hasattr(leaf, "get_value") else leaf
        is_key = jax.dtypes.issubdtype(current.dtype, jax.dtypes.prng_key)
        stored = arrays.get(key + KEY_SUFFIX if is_key else key)
        if stored is None:
            raise ModelFolderError(f"{what} lacks the weight {key}: the folder does not belong to this config")
        value = jax.random.wrap_key_data(jnp.asarray(stored)) if is_key else jnp.asarray(stored, current.dtype)
        if value.shape != current.shape:
            raise ModelFolderError(f"{what}: {key} has shape {value.shape}, the model {current.shape}")
        target = nested
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    nnx.replace_by_pure_dict(state, nested)
    nnx.update(node, state)


def _system_module(system: str):
    return importlib.import_module(f"pikagen_jax.{system}.sampling")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """model.json of a model folder, checked: format, version, every weight file present."""
    folder = Path(folder)
    path = folder / MODEL_JSON
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist: export one with `python -m pikagen_jax.export "
                               f"--workdir=<run> --out={folder}`")
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not a model folder: it has no {MODEL_JSON} (export one with "
                               f"`python -m pikagen_jax.export --workdir=<run> --out={folder}`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ModelFolderError(f"{path} is not valid JSON ({error}): re-export the model") from error
    if manifest.get("format") != FORMAT:
        raise ModelFolderError(f"{path} is not a {FORMAT} manifest (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFolderError(f"{folder} has model format version {version}; this pikagen-jax reads up to version "
                               f"{FORMAT_VERSION}: upgrade pikagen-jax or re-export the model with this version")
    for item in manifest.get("items", []):
        weights = folder / WEIGHTS_DIR / f"{item}.safetensors"
        if not weights.is_file():
            raise ModelFolderError(f"{folder} is incomplete: {weights.relative_to(folder)} is missing")
    return manifest


def model_config(folder: str | Path, manifest: dict[str, Any]) -> ml_collections.ConfigDict:
    """The run's config with the tokenizer and text backbone pointed at the folder's own copies."""
    folder = Path(folder).resolve()
    config = ml_collections.ConfigDict(manifest["config"])
    if "text" in config:
        if (folder / TOKENIZER_DIR).is_dir():
            config.text.tokenizer_path = str(_tokenizer_path(folder / TOKENIZER_DIR, config.text.tokenizer))
        if (folder / BACKBONE_DIR).is_dir():
            config.text.checkpoint = str(folder / BACKBONE_DIR)
    return config


def _tokenizer_path(folder: Path, kind: str) -> Path:
    if kind == "clip":
        files = sorted(folder.glob("*.txt.gz"))
        if not files:
            raise ModelFolderError(f"{folder} has no CLIP BPE vocabulary (*.txt.gz)")
        return files[0]
    return folder


def load_model_sampler(folder: str | Path, **options: Any):
    """The `RunSampler` of an exported model (options as for the system's work-directory sampler)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    config = model_config(folder, manifest)
    module = _system_module(manifest["system"])
    nodes = module.inference_nodes(config)
    for item, node in nodes.items():
        path = folder / WEIGHTS_DIR / f"{item}.safetensors"
        try:
            arrays = load_file(str(path))
        except Exception as error:  # noqa: BLE001  (a truncated or foreign file)
            raise ModelFolderError(f"{path} is not a readable safetensors file ({error}): re-export the model") from error
        fill_from_arrays(node, arrays, str(path.relative_to(folder)))
    description = f"{manifest['system']} model {folder.name}, step {manifest['step']}"
    return module.sampler_from_nodes(config, nodes, int(manifest["step"]), description, **options)
