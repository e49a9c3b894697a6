"""Orbax checkpoints of named NNX states, the Grain iterator position and the config.

Layout under the work directory::

    workdir/checkpoints/<step>/   latest `max_to_keep` steps, written every `every_steps` steps
        <name>/                   one item per named pytree, e.g. generator, opt_g (StandardSave)
        data_iterator/            Grain iterator state, one JSON file per process
        config/                   the config as JSON (never pickled)
    workdir/best/<step>/          the `keep_best` best steps by `best_metric` (same items + metrics/)

Saves are asynchronous: arrays are copied off the devices before `save` returns, files are written in a
background thread. Orbax makes each step atomic: on local and NFS paths it writes into
`<step>.orbax-checkpoint-tmp/`, adds `commit_success.txt`, then renames the folder to `<step>/` (checked
with orbax-checkpoint 0.12.8; on GCS it relies on the commit file instead). A crash mid-save leaves only a
tmp folder, which is never listed as a step and is deleted when the next writing `Checkpointer` opens the
directory, so resuming always starts from the last complete step. Samplers and evaluators that read a
directory while training may still write to it should open it with `read_only=True` (no cleanup, no saves).

Every committed step also gets a checksum manifest (`checkpoint_integrity`). Restoring without an explicit step
(resume, `generate`, `evaluate`) verifies the newest step first; a damaged one is moved aside to
`corrupt-<step>/` (left in place when opened read-only) with a one-line warning, and the next older step is
tried; if none is intact, `NoIntactCheckpointError` lists what was tried. A step that is intact but does not
fit the model built from the config is `CheckpointMismatchError`, never moved.

The best checkpoint lives in its own CheckpointManager (`workdir/best/`) instead of using `best_fn` on the
main one: orbax's `best_fn` ranks *all* kept checkpoints by the metric, so the latest step (the one needed
to resume) could be deleted. Here the main manager keeps the latest steps, and the best manager saves only
when the metric improves on the best recorded so far (read back from disk on restart).

Typical trainer use::

    ckpt = Checkpointer.from_config(workdir, config)
    start_step = ckpt.restore_latest_into({"generator": G, "opt_g": opt_g}, data_iterator=train_iter)
    for step in range(start_step + 1, num_steps + 1):
        ...
        ckpt.save(step, {"generator": G, "opt_g": opt_g}, data_iterator=train_iter, config=config)
    ckpt.close()   # waits for pending writes
"""

from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain.checkpoint  # noqa: F401  (registers grain's CheckpointSave/Restore with orbax)
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from pikagen_jax.errors import ConfigError, NoCheckpointError, NoIntactCheckpointError, UserError
from pikagen_jax.models.params import Pretrained
from pikagen_jax.training import checkpoint_integrity as integrity


class _DropReadOnlyNotes(std_logging.Filter):
    """Orbax warns twice every time a folder is opened read-only, as samplers and evaluators always do."""

    NOTES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTES)


std_logging.getLogger("absl").addFilter(_DropReadOnlyNotes())

DATA_ITERATOR_ITEM = "data_iterator"
CONFIG_ITEM = "config"
RESERVED_ITEMS = (DATA_ITERATOR_ITEM, CONFIG_ITEM, "metrics", "descriptor")
BEST_MODES = ("min", "max")


def default_checkpoint_config() -> ml_collections.ConfigDict:
    """The `config.checkpoint` block every system's config can include."""
    return ml_collections.ConfigDict({
        "every_steps": 1000,   # save the training state every N steps (and always at the last step)
        "max_to_keep": 3,      # latest checkpoints kept in workdir/checkpoints
        "async_save": True,    # write files in a background thread
        "best_metric": "",     # e.g. 'val_l1': also keep the best steps by it in workdir/best ('' = off)
        "best_mode": "min",    # 'min' or 'max'
        "keep_best": 1,        # how many best checkpoints to keep
        "on_save_error": "stop",  # a failed save (disk full, ...): "stop" training with one line, or "warn"
    })


def abstract_like(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """Replaces every array leaf by a `jax.ShapeDtypeStruct` (a restore target), keeping its sharding.

    Works on concrete states (`nnx.state(model)`) and on abstract ones (`nnx.state(nnx.eval_shape(...))`).
    `sharding` is used for leaves that carry none (abstract leaves, numpy arrays); if it is None these get
    the first device. Restored arrays are placed with these shardings.
    """
    default = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def to_struct(leaf):
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding or leaf.sharding)
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding or leaf.sharding or default)
        if isinstance(leaf, (np.ndarray, np.generic)):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=default)
        return leaf

    return jax.tree.map(to_struct, tree)


def _as_state(value: Any) -> Any:
    """NNX modules / optimizers become their `nnx.state` without `Pretrained` weights (loaded again from their
    package when the model is built, so checkpoints do not carry copies); other pytrees pass through."""
    return nnx.state(value, nnx.Not(Pretrained)) if nnx.graph.is_graph_node(value) else value


def _config_json(config: Any) -> Any:
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))


def _check_names(names) -> None:
    for name in names:
        if name in RESERVED_ITEMS:
            raise ValueError(f"checkpoint item name {name!r} is reserved ({RESERVED_ITEMS}); rename it")
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"checkpoint item name {name!r} must be a plain folder name")


class _IteratorStateSnapshot:
    """Stands in for a data iterator in grain's orbax handler (which writes one JSON file per process).

    The state is captured when `save` is called, so a background write cannot see a later position.
    """

    def __init__(self, state: bytes | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return self.state

    def set_state(self, state: bytes) -> None:
        self.state = state

    def start_prefetch(self) -> None:  # called by grain's handler after restoring
        pass


def _iterator_state_bytes(iterator: Any) -> bytes:
    state = iterator.get_state()
    if isinstance(state, bytes):  # grain DataLoaderIterator: JSON bytes
        return state
    return json.dumps(state).encode()  # grain DatasetIterator: a JSON-able dict


def _set_iterator_state(iterator: Any, state: bytes) -> None:
    if isinstance(iterator.get_state(), bytes):
        iterator.set_state(state)
    else:
        iterator.set_state(json.loads(state.decode()))


@dataclasses.dataclass
class _Best:
    step: int | None = None
    value: float | None = None


class CheckpointMismatchError(UserError, ValueError):
    """An intact checkpoint that does not fit the model built from the current config."""


class CheckpointSaveError(UserError, OSError):
    """Writing a checkpoint failed (disk full, file too large, no permission); earlier steps are intact."""


class Checkpointer:
    """Latest-N (and optionally best-N) Orbax checkpoints of named states under `workdir`."""

    def __init__(self, workdir: str | Path, *, every_steps: int = 1000, max_to_keep: int = 3,
                 async_save: bool = True, best_metric: str = "", best_mode: str = "min", keep_best: int = 1,
                 read_only: bool = False):
        if every_steps < 1:
            raise ConfigError(f"checkpoint.every_steps must be >= 1, got {every_steps}")
        if max_to_keep < 1:
            raise ConfigError(f"checkpoint.max_to_keep must be >= 1, got {max_to_keep}")
        if best_mode not in BEST_MODES:
            raise ConfigError(f"checkpoint.best_mode must be one of {BEST_MODES}, got {best_mode!r}")
        if best_metric and keep_best < 1:
            raise ConfigError(f"checkpoint.keep_best must be >= 1 when best_metric is set, got {keep_best}")
        self.workdir = epath.Path(os.path.abspath(workdir))  # Orbax/TensorStore need absolute paths
        self.every_steps = every_steps
        self.best_metric, self.best_mode, self.read_only = best_metric, best_mode, read_only
        policies = ocp.checkpoint_managers
        self._manager = ocp.CheckpointManager(
            self.workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                save_decision_policy=policies.AnySavePolicy([
                    policies.FixedIntervalPolicy(every_steps), policies.PreemptionCheckpointingPolicy()]),
                preservation_policy=policies.LatestN(n=max_to_keep),
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=not read_only,
                read_only=read_only,
                create=not read_only,
            ))
        self._best_manager = None
        self._best = _Best()
        self._pending_checksums: list[tuple[ocp.CheckpointManager, int]] = []
        if best_metric:
            metric_fn = self._metric_of
            self._best_manager = ocp.CheckpointManager(
                self.workdir / "best",
                options=ocp.CheckpointManagerOptions(
                    best_fn=metric_fn, best_mode=best_mode,
                    preservation_policy=policies.BestN(get_metric_fn=metric_fn, reverse=best_mode == "min",
                                                       n=keep_best, keep_checkpoints_without_metrics=False),
                    enable_async_checkpointing=async_save,
                    cleanup_tmp_directories=not read_only,
                    read_only=read_only,
                    create=not read_only,
                ))
            step = self._best_manager.best_step()
            if step is not None:
                self._best = _Best(step, self._metric_of(self._best_manager.metrics(step)))
                logging.info("best checkpoint so far: step %d, %s=%g", step, best_metric, self._best.value)

    @classmethod
    def from_config(cls, workdir: str | Path, config: ml_collections.ConfigDict,
                    read_only: bool = False) -> "Checkpointer":
        """Builds a Checkpointer from `config.checkpoint` (fields of `default_checkpoint_config`; missing
        fields take the defaults, unknown ones raise)."""
        block = default_checkpoint_config()
        if "checkpoint" in config:
            unknown = sorted(set(config.checkpoint.keys()) - set(block.keys()))
            if unknown:
                raise ConfigError(f"config.checkpoint has unknown field(s) {unknown}; known: {sorted(block.keys())}")
            block.update(config.checkpoint.to_dict())
        if block.on_save_error not in ("stop", "warn"):
            raise ConfigError(f"checkpoint.on_save_error must be 'stop' or 'warn', got {block.on_save_error!r}")
        return cls(workdir, every_steps=block.every_steps, max_to_keep=block.max_to_keep,
                   async_save=block.async_save, best_metric=block.best_metric, best_mode=block.best_mode,
                   keep_best=block.keep_best, read_only=read_only)

    def _metric_of(self, metrics: Mapping[str, Any]) -> float:
        return float(metrics[self.best_metric])

    # ---------------------------------------------------------------- saving

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"the Checkpointer of {self.workdir} was opened with read_only=True")

    def _save_args(self, state: Mapping[str, Any], data_iterator: Any, config: Any) -> ocp.args.Composite:
        _check_names(state)
        items = {name: ocp.args.StandardSave(_as_state(value)) for name, value in state.items()}
        if data_iterator is not None:
            snapshot = _IteratorStateSnapshot(_iterator_state_bytes(data_iterator))
            items[DATA_ITERATOR_ITEM] = grain.checkpoint.CheckpointSave(snapshot)
        if config is not None:
            items[CONFIG_ITEM] = ocp.args.JsonSave(_config_json(config))
        return ocp.args.Composite(**items)

    def save(self, step: int, state: Mapping[str, Any], *, data_iterator: Any = None, config: Any = None,
             force: bool = False) -> bool:
        """Saves `state` (name -> NNX module / optimizer / pytree) if `step` is a multiple of
        `every_steps` (or `force`). Also stores the iterator position and the config when given.
        Returns whether a checkpoint was started. Call it on every process."""
        self._check_writable()
        if not force and not self._manager.should_save(step):
            return False
        if step in self._manager.all_steps():
            return False
        self._finish_pending()
        args = self._save_args(state, data_iterator, config)  # a bad item name is the caller's bug, not an I/O error
        try:
            started = self._manager.save(step, args=args, force=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise self._save_error(error) from error
        if started:
            self._pending_checksums.append((self._manager, step))
        return started

    def maybe_save_best(self, step: int, state: Mapping[str, Any], metrics: Mapping[str, Any], *,
                        data_iterator: Any = None, config: Any = None) -> bool:
        """Saves to `workdir/best` if `metrics[best_metric]` beats the best so far. Returns whether it did."""
        self._check_writable()
        if self._best_manager is None:
            raise ValueError("maybe_save_best needs a best metric: set config.checkpoint.best_metric")
        if self.best_metric not in metrics:
            raise KeyError(f"best_metric {self.best_metric!r} is not among the metrics {sorted(metrics)}")
        value = float(np.asarray(jax.device_get(metrics[self.best_metric])))
        if not math.isfinite(value):
            logging.warning("step %d: %s=%s is not finite; best checkpoint not updated", step, self.best_metric,
                            value)
            return False
        best = self._best.value
        improved = best is None or (value < best if self.best_mode == "min" else value > best)
        if not improved or step == self._best.step:
            return False
        self._finish_pending()
        self._best_manager.save(step, args=self._save_args(state, data_iterator, config),
                                metrics={self.best_metric: value}, force=True)
        self._pending_checksums.append((self._best_manager, step))
        logging.info("step %d: new best %s=%g (previous %s)", step, self.best_metric, value, best)
        self._best = _Best(step, value)
        return True

    # ---------------------------------------------------------------- queries

    def latest_step(self) -> int | None:
        """The newest saved step in workdir/checkpoints, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All kept steps in workdir/checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def best_step(self) -> int | None:
        """The best step in workdir/best (None if there is none or no best metric is set)."""
        return self._best.step

    @property
    def best_value(self) -> float | None:
        """The best metric value recorded so far."""
        return self._best.value

    # ---------------------------------------------------------------- restoring

    def _manager_for(self, best: bool) -> ocp.CheckpointManager:
        if best and self._best_manager is None:
            raise ValueError("no best checkpoints: this Checkpointer has no best_metric")
        return self._best_manager if best else self._manager

    def latest_intact_step(self, best: bool = False) -> int | None:
        """The newest step (of `best/` with `best`) that verifies, or None when there is no step at all.

        Damaged steps on the way are moved aside (left in place when read-only), each with a one-line warning;
        if steps exist but none is intact, raises NoIntactCheckpointError listing them."""
        manager = self._manager_for(best)
        manager.wait_until_finished()
        tried: list[str] = []
        skipped: set[int] = set()
        while True:
            steps = [s for s in sorted(manager.all_steps(), reverse=True) if s not in skipped]
            if not steps:
                break
            step = steps[0]
            step_dir = Path(manager.directory) / str(step)
            reason = integrity.verify_step(step_dir, read_all_items(manager, step))
            if reason is None:
                if best and step != self._best.step:
                    self._best = _Best(step, self._metric_of(manager.metrics(step)))
                return step
            if self.read_only:
                where = "left in place (opened read-only; `python -m pikagen_jax.check_workdir --quarantine` moves it)"
                skipped.add(step)
            else:
                target = step_dir.with_name(integrity.QUARANTINE_PREFIX + step_dir.name)
                if jax.process_index() == 0:  # one process moves it; the others see the same damage, then wait
                    target = integrity.quarantine(step_dir)
                if jax.process_count() > 1:
                    from jax.experimental import multihost_utils

                    multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
                where = f"moved aside to {target.name}/"
                manager.reload()
            logging.warning("checkpoint step %d in %s is damaged: %s; %s", step, manager.directory, reason, where)
            tried.append(f"step {step}: {reason}")
        if tried:
            raise NoIntactCheckpointError(f"no intact checkpoint in {manager.directory}: " + "; ".join(tried)
                                          + ". Start afresh with a new --workdir, or restore a backup of it.")
        return None

    def _resolve_step(self, step: int | None, best: bool) -> int:
        resolved = self.latest_intact_step(best) if step is None else step
        if resolved is None:
            where = self.workdir / ("best" if best else "checkpoints")
            raise NoCheckpointError(f"no checkpoint in {where}")
        return resolved

    def restore(self, targets: Mapping[str, Any], *, step: int | None = None, best: bool = False,
                data_iterator: Any = None, sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
        """Restores the named states of `step` (default: latest, or best with `best=True`).

        `targets` maps names to restore targets: abstract states (`nnx.state(nnx.eval_shape(...))`),
        concrete states, NNX modules / optimizers, or pytrees of `ShapeDtypeStruct`; arrays come back with
        the targets' shardings (or `sharding` for leaves without one). Only the named items are read, so a
        sampler can restore just `{'generator': ...}`. If `data_iterator` is given, its position is restored
        in place. Returns {name: restored state}.
        """
        manager = self._manager_for(best)
        manager.wait_until_finished()  # a step being written is not readable yet
        step = self._resolve_step(step, best)
        _check_names(targets)
        items = {name: ocp.args.StandardRestore(abstract_like(_as_state(target), sharding))
                 for name, target in targets.items()}
        step_dir = manager.directory / str(step)
        has_iterator = (step_dir / DATA_ITERATOR_ITEM).exists()
        if data_iterator is not None and has_iterator:
            _check_process_count(step_dir / DATA_ITERATOR_ITEM, step)
        if data_iterator is not None:
            if has_iterator:
                items[DATA_ITERATOR_ITEM] = grain.checkpoint.CheckpointRestore(_IteratorStateSnapshot())
            else:
                logging.warning("checkpoint step %d has no data-iterator state; the iterator starts afresh", step)
        missing = [name for name in targets if not (step_dir / name).exists()]
        if missing:
            raise KeyError(f"checkpoint {step_dir} has no item(s) {missing}; it holds "
                           f"{sorted(p.name for p in step_dir.iterdir() if p.is_dir())}")
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        if DATA_ITERATOR_ITEM in items:
            _set_iterator_state(data_iterator, restored[DATA_ITERATOR_ITEM].state)
        return {name: restored[name] for name in targets}

    def restore_latest_into(self, nodes: Mapping[str, Any], *, data_iterator: Any = None,
                            best: bool = False) -> int:
        """Resumes NNX modules / optimizers in place from the latest (or best) checkpoint, if any.

        Restored arrays keep the shardings the nodes' arrays have now (e.g. after `replicate_nodes`).
        Returns the restored step, or 0 when there is no checkpoint yet (a fresh run).
        """
        step = self.latest_intact_step(best)
        if step is None:
            return 0
        try:
            restored = self.restore(nodes, step=step, best=best, data_iterator=data_iterator)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001  (the step verified, so the model or config changed)
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self._manager_for(best).directory} is intact but does not fit the model "
                f"built from the current config ({_first_line(error)}): were model settings changed? Resume with "
                "the run's own settings, or train into a new --workdir") from error
        for name, node in nodes.items():
            nnx.update(node, restored[name])
        logging.info("restored %s from %s step %d", sorted(nodes), "best" if best else "latest", step)
        return step

    def restore_config(self, step: int | None = None, best: bool = False) -> dict[str, Any]:
        """The config stored with a step, as a plain dict (raises KeyError if none was saved)."""
        manager = self._manager_for(best)
        manager.wait_until_finished()
        step = self._resolve_step(step, best)
        if not (manager.directory / str(step) / CONFIG_ITEM).exists():
            raise KeyError(f"checkpoint step {step} in {manager.directory} was saved without a config")
        return manager.restore(step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))[CONFIG_ITEM]

    # ---------------------------------------------------------------- lifecycle

    def wait_until_finished(self) -> None:
        """Blocks until every pending asynchronous save has been written, committed and checksummed.

        A failed write (disk full, file size limit, permissions) raises CheckpointSaveError; the steps written
        before it are intact."""
        self._finish_pending()

    def _save_error(self, error: BaseException) -> CheckpointSaveError:
        try:
            self._manager.reload()
            kept = self.all_steps()
        except Exception:  # noqa: BLE001  (the listing is only a hint)
            kept = "see " + str(self.workdir / "checkpoints")
        return CheckpointSaveError(f"writing a checkpoint to {self.workdir} failed: {_first_line(error)} (disk full? "
                                   f"file size limit? no permission?); the steps saved before it are intact: {kept}; "
                                   "free space or fix the folder, then run the same command again to resume")

    def _finish_pending(self) -> None:
        """Waits for the asynchronous saves, then writes the checksum manifest of each newly committed step."""
        managers = [self._manager] + ([self._best_manager] if self._best_manager is not None else [])
        try:
            for manager in managers:
                manager.wait_until_finished()
            if jax.process_index() == 0:
                for manager, step in self._pending_checksums:
                    step_dir = Path(manager.directory) / str(step)
                    if step_dir.is_dir() and not integrity.has_checksums(step_dir):
                        integrity.write_checksums(step_dir)
        except (OSError, ValueError, RuntimeError) as error:
            self._pending_checksums = []
            raise self._save_error(error) from error
        self._pending_checksums = []

    def close(self) -> None:
        """Waits for pending saves and releases the managers' threads."""
        self.wait_until_finished()
        self._manager.close()
        if self._best_manager is not None:
            self._best_manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_process_count(iterator_dir: Path, step: int) -> None:
    """Grain saves one `process_<i>-of-<n>.json` per process: a resume must have the same n processes."""
    here = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    files = sorted(p.name for p in Path(iterator_dir).glob("process_*-of-*.json"))
    if files and here not in files:
        written = files[0].rsplit("-of-", 1)[1].removesuffix(".json")
        raise ConfigError(f"checkpoint step {step} was written by {written} process(es), this run has "
                          f"{jax.process_count()}: the data shards (and so the batches) depend on it; resume with "
                          f"--num_processes={written}, or train into a new --workdir")


def read_only_manager(folder: str | Path) -> ocp.CheckpointManager:
    """A read-only CheckpointManager of one folder of steps (checkpoints/ or best/)."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, cleanup_tmp_directories=False)
    return ocp.CheckpointManager(epath.Path(os.path.abspath(folder)), options=options)


def read_all_items(manager: ocp.CheckpointManager, step: int):
    """A reader of every array item and the config of a step, without targets (verifies readability)."""
    step_dir = Path(manager.directory) / str(step)
    names = [p.name for p in step_dir.iterdir() if p.is_dir() and p.name not in RESERVED_ITEMS] \
        if step_dir.is_dir() else []
    items = {name: ocp.args.StandardRestore() for name in names}
    if (step_dir / CONFIG_ITEM).exists():
        items[CONFIG_ITEM] = ocp.args.JsonRestore()
    return lambda: manager.restore(step, args=ocp.args.Composite(**items))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
