"""One data-parallel device mesh for every trainer, and the shardings that go with it.

All systems train data-parallel: parameters and optimizer state are replicated on every device, batches
are split along their leading axis over the mesh axis `'data'`. Train steps are `jax.jit`-compiled with
these `NamedSharding`s (and donated state); there is no `pmap`.

Typical use::

    mesh = make_mesh()
    replicate_nodes(mesh, generator, opt_g)          # NNX modules / optimizers, in place
    batch = shard_batch(next(host_iterator), mesh)   # host numpy -> global jax.Arrays
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pikagen_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes) with the axis `'data'`.

    The axis type is `Auto` (sharding propagated by the compiler), so model code needs no sharding
    annotations; `jax.make_mesh` would default to `Explicit` axes.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy of an array on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits an array's leading (batch) axis over the `'data'` axis of `mesh`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divisible(global_batch_size: int, num_devices: int, what: str = "train.batch_size") -> None:
    """Raises ValueError unless `global_batch_size` splits evenly over `num_devices` devices.

    `what` names the quantity in the message; a dotted config key (e.g. `train.batch_size`) also gets a
    command-line override hint.
    """
    if global_batch_size <= 0:
        raise ConfigError(f"{what}={global_batch_size} must be positive")
    if global_batch_size % num_devices:
        lower = global_batch_size - global_batch_size % num_devices
        suggestion = lower if lower else num_devices
        hint = f" (e.g. --config.{what}={suggestion})" if "." in what and " " not in what else ""
        raise ConfigError(
            f"{what}={global_batch_size} is not divisible by the {num_devices} devices of the mesh: every "
            f"device must get the same number of examples. Use a multiple of {num_devices}{hint}; pad a last "
            "partial evaluation batch with pad_batch().")


def _is_numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "biufc" or array.dtype == np.dtype(bool)


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Turns this process's host batch into global `jax.Array`s split over the `'data'` axis.

    Every process passes its own slice (leading axis = global batch / process count); the global batch is
    the concatenation over processes, built with `jax.make_array_from_process_local_data`. Non-numeric
    entries (e.g. `caption` strings of eval batches) stay host numpy arrays and are returned unchanged.
    """
    sharding = data_sharding(mesh)
    num_devices = mesh.devices.size
    out: dict[str, Any] = {}
    local_size = None
    for name, value in batch.items():
        array = np.asarray(value)
        if not _is_numeric(array):
            out[name] = value
            continue
        if array.ndim == 0:
            raise ValueError(f"batch entry {name!r} is a scalar; every entry needs a leading batch axis")
        if local_size is None:
            local_size = array.shape[0]
        elif array.shape[0] != local_size:
            raise ValueError(f"batch entry {name!r} has {array.shape[0]} examples but the other entries have "
                             f"{local_size}: all entries must share the leading batch axis")
        global_shape = (array.shape[0] * jax.process_count(), *array.shape[1:])
        check_batch_divisible(global_shape[0], num_devices, f"the global batch size of entry {name!r}")
        out[name] = jax.make_array_from_process_local_data(sharding, array, global_shape)
    return out


def pad_batch(batch: Mapping[str, Any], multiple: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pads every entry's leading axis up to a multiple of `multiple` by repeating the last example.

    For the last, smaller batch of an evaluation pass. Returns the padded batch and a bool mask
    [padded size] that is True for real examples; average metrics with it.
    """
    sizes = {name: len(value) for name, value in batch.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch entries disagree on the batch size: {sizes}")
    size = next(iter(sizes.values()))
    if size == 0:
        raise ValueError("cannot pad an empty batch")
    target = math.ceil(size / multiple) * multiple
    index = np.minimum(np.arange(target), size - 1)
    padded = {name: np.asarray(value)[index] for name, value in batch.items()}
    return padded, np.arange(target) < size


def _replicate_leaf(leaf: Any, sharding: NamedSharding) -> Any:
    """One leaf onto a sharding that spans other processes' devices too: every process holds the same value
    (same seed, same checkpoint), so each builds its own devices' copies from its host copy."""
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        return leaf
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = _replicate_leaf(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
    """`jax.device_put` of a pytree (e.g. an `nnx.State`) with a full copy on every device.

    With several processes the mesh has devices this process cannot address, which `device_put` refuses; the
    copies are then built per process from the (identical) host values."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda leaf: _replicate_leaf(leaf, sharding), tree)


def replicate_nodes(mesh: Mesh, *nodes: Any) -> None:
    """Places the state of NNX modules / optimizers on the mesh, replicated, in place.

    `nnx.state(node)` -> `jax.device_put(..., replicated)` -> `nnx.update(node, ...)`.
    """
    for node in nodes:
        if not nnx.graph.is_graph_node(node):
            raise TypeError(f"replicate_nodes expects NNX modules or optimizers, got {type(node).__name__}; "
                            "use replicate_tree for plain pytrees")
        nnx.update(node, replicate_tree(nnx.state(node), mesh))
