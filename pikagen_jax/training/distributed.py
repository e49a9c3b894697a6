"""Training on several processes or machines with JAX's own multi-controller runtime (`jax.distributed`).

    python launch.py --config=... --workdir=... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0

`initialize_from(...)` starts the runtime when the command line or environment asks for it:
- explicitly: `--coordinator_address`, `--num_processes`, `--process_id` (or the environment variables
  PIKAGEN_COORDINATOR_ADDRESS, PIKAGEN_NUM_PROCESSES, PIKAGEN_PROCESS_ID);
- automatically under SLURM (`srun`, more than one task), Open MPI (`mpirun`, more than one rank) and Cloud TPU
  pod slices (JAX detects each itself);
- otherwise not at all: one process, unchanged.
CPU processes exchange arrays through JAX's CPU collectives (gloo), so two processes on one machine work too.
Every process runs the same jitted step on a mesh of all processes' devices; each reads its own shard of the
data. Mistakes (a process id out of range, an unreachable coordinator) are one clear line on every process
within `--distributed_timeout` seconds.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import time
from typing import Any

import jax
import numpy as np

from pikagen_jax.errors import UserError

ENV = {"coordinator_address": "PIKAGEN_COORDINATOR_ADDRESS", "num_processes": "PIKAGEN_NUM_PROCESSES",
       "process_id": "PIKAGEN_PROCESS_ID"}


class DistributedSetupError(UserError, RuntimeError):
    """The multi-process runtime could not start with the given settings."""


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """What `jax.distributed.initialize` needs; all None means: detect a cluster or stay single-process."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_seconds: int = 120
    heartbeat_seconds: int = 30

    @property
    def explicit(self) -> bool:
        return any(v is not None for v in (self.coordinator_address, self.num_processes, self.process_id))


def detected_cluster(environ: dict[str, str] | None = None) -> str | None:
    """'slurm', 'openmpi' or 'tpu' when this process is one of several launched by such a cluster manager."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "openmpi"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def settings_from(coordinator_address: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None, timeout_seconds: int = 120,
                  environ: dict[str, str] | None = None) -> DistributedSettings:
    """Command-line values, else the PIKAGEN_* environment variables."""
    env = os.environ if environ is None else environ

    def pick(name: str, value: Any, cast):
        if value is not None:
            return value
        text = env.get(ENV[name])
        if text in (None, ""):
            return None
        try:
            return cast(text)
        except ValueError:
            raise DistributedSetupError(f"{ENV[name]}={text!r} is not a valid {name}") from None

    return DistributedSettings(pick("coordinator_address", coordinator_address, str),
                               pick("num_processes", num_processes, int), pick("process_id", process_id, int),
                               timeout_seconds=timeout_seconds)


def check(settings: DistributedSettings) -> None:
    """Raises DistributedSetupError naming the setting unless explicit settings are complete and consistent."""
    missing = [f"--{name}" for name in ("coordinator_address", "num_processes", "process_id")
               if getattr(settings, name) is None]
    if missing:
        raise DistributedSetupError(f"multi-process training needs --coordinator_address, --num_processes and "
                                    f"--process_id together; missing {', '.join(missing)}")
    if not re.fullmatch(r"[^\s:]+:\d{1,5}", settings.coordinator_address or ""):
        raise DistributedSetupError(f"--coordinator_address={settings.coordinator_address!r} must be host:port, "
                                    "e.g. 127.0.0.1:12345 (process 0's address; every process gives the same)")
    if settings.num_processes < 1:
        raise DistributedSetupError(f"--num_processes={settings.num_processes} must be >= 1")
    if not 0 <= settings.process_id < settings.num_processes:
        raise DistributedSetupError(f"--process_id={settings.process_id} must be in 0..{settings.num_processes - 1} "
                                    f"(--num_processes={settings.num_processes})")


def wait_for_coordinator(address: str, timeout_seconds: float) -> None:
    """Waits until process 0's coordinator accepts a TCP connection. XLA aborts the whole process (no Python
    exception) when it cannot reach the coordinator, so the other processes check first and fail with one line."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DistributedSetupError(
                    f"could not join the multi-process run: process 0's coordinator at {address} did not answer "
                    f"within {timeout_seconds:g} s ({error.strerror or error}). Start process 0 with the same "
                    "--coordinator_address (its own host:port, reachable from every process) and --num_processes, "
                    "or raise --distributed_timeout") from error
            time.sleep(0.5)


def initialize(settings: DistributedSettings) -> str:
    """Starts `jax.distributed` if asked or under a cluster; returns what was done (for the log)."""
    cluster = detected_cluster()
    if not settings.explicit and cluster is None:
        return "single process"
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk through gloo
    kwargs: dict[str, Any] = dict(initialization_timeout=settings.timeout_seconds,
                                  heartbeat_timeout_seconds=settings.heartbeat_seconds)
    if settings.explicit:
        check(settings)
        if settings.num_processes == 1:
            return "single process"
        kwargs.update(coordinator_address=settings.coordinator_address, num_processes=settings.num_processes,
                      process_id=settings.process_id)
        if settings.process_id != 0:
            wait_for_coordinator(settings.coordinator_address, settings.timeout_seconds)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as error:  # noqa: BLE001  (deadline exceeded, connection refused, bad topology ...)
        where = settings.coordinator_address or f"the {cluster} cluster's coordinator"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DistributedSetupError(
            f"process {settings.process_id if settings.explicit else '?'} could not join the multi-process run at "
            f"{where} within {settings.timeout_seconds} s: {first[:300]}. Check that every process was started "
            "with the same --coordinator_address (process 0's host:port, reachable from all) and --num_processes, "
            "and distinct --process_id values") from error
    return (f"process {jax.process_index()} of {jax.process_count()} "
            f"({'explicit' if settings.explicit else cluster}), {jax.local_device_count()} local device(s)")


def check_divisible(global_batch_size: int, what: str = "train.batch_size") -> None:
    """The global batch must split evenly over the processes (each reads its own part)."""
    from pikagen_jax.errors import ConfigError

    processes = jax.process_count()
    if global_batch_size % processes:
        raise ConfigError(f"{what}={global_batch_size} is not divisible by the {processes} processes: each process "
                          f"reads an equal part of every batch; use a multiple of {processes}")


def local_copy(tree: Any) -> Any:
    """A process-local copy of replicated global arrays (its first addressable shard), so that a process can
    run a computation of its own (e.g. generating its share of evaluation images)."""
    def local(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return leaf.addressable_shards[0].data
        return leaf

    return jax.tree.map(local, tree)


def process_share(count: int) -> np.ndarray:
    """The indices of `count` items this process handles (contiguous, as even as possible)."""
    return np.array_split(np.arange(count), jax.process_count())[jax.process_index()]


def gather_rows(rows: np.ndarray, count: int) -> np.ndarray:
    """Concatenates every process's `rows` (process order) into the `count` rows of all of them."""
    if jax.process_count() == 1:
        return rows
    from jax.experimental import multihost_utils

    width = -(-count // jax.process_count())
    padded = np.zeros((width, *rows.shape[1:]), rows.dtype)
    padded[: len(rows)] = rows
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [processes, width, ...]
    sizes = [len(part) for part in np.array_split(np.arange(count), jax.process_count())]
    return np.concatenate([gathered[p, :n] for p, n in enumerate(sizes)])
