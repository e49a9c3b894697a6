"""Counts XLA compilations (the training loop warns when its jitted step compiles again), and turns on
JAX's persistent compilation cache so a resumed or repeated run does not compile the same step twice.

A train step that recompiles (a batch of another shape, a Python scalar that became static, a dtype that
changed) costs a full compile — tens of seconds on a CPU — every time it happens. The loop counts the
backend compilations that happen inside its `train_step` calls and warns from the second one on; the
count is reported in `TrainResult.train_step_compiles` (tests assert it is 1).

    counter = CompileCounter()
    with counter:
        f(x)
    counter.count   # XLA backend compilations while the context was active
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import jax
from absl import logging

# jax._src.dispatch.BACKEND_COMPILE_EVENT: recorded once per executable jit needs, whether XLA compiles it or
# it is loaded from the persistent compilation cache (in-memory jit cache hits record nothing).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_lock = threading.Lock()
_active: list["CompileCounter"] = []
_registered = False


def _on_event(event: str, duration_secs: float, **kwargs) -> None:
    del duration_secs, kwargs
    if event == BACKEND_COMPILE_EVENT:
        with _lock:
            for counter in _active:
                counter.count += 1


def _ensure_listener() -> None:
    global _registered
    with _lock:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_on_event)
            _registered = True


class CompileCounter:
    """Context manager counting XLA compilations (and loads from the persistent compilation cache) while
    active (re-enterable; counts accumulate). In-memory jit cache hits count nothing."""

    def __init__(self):
        self.count = 0
        _ensure_listener()

    def __enter__(self) -> "CompileCounter":
        with _lock:
            _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with _lock:
            _active.remove(self)


def enable_persistent_cache(directory: str | Path | None = None) -> Path | None:
    """Points JAX's persistent compilation cache at `directory` unless one is already configured.

    Default: `default_cache_dir() / 'jax_compilation_cache'` (`$PIKAGEN_JAX_CACHE`, `$XDG_CACHE_HOME/pikagen_jax`
    or `~/.cache/pikagen_jax`).
    A set `JAX_COMPILATION_CACHE_DIR` / `--jax_compilation_cache_dir` wins, and `--jax_compilation_cache_dir=''`
    is not overridden either. Programs that take longer than `jax_persistent_cache_min_compile_time_secs` (1 s)
    to compile are stored; the key covers the program, the devices, the flags and the JAX version, so a stale
    entry is never used. On 2 CPU cores a GAN smoke step compiles in ~100 s the first time and loads in ~15 s
    after. Returns the directory in use (None when disabled).
    """
    from pikagen_jax.cache_dir import default_cache_dir

    current = jax.config.jax_compilation_cache_dir
    if current is not None or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return Path(current) if current else None
    path = Path(directory) if directory is not None else default_cache_dir() / "jax_compilation_cache"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only home: run without the cache
        logging.warning("JAX compilation cache disabled: cannot create %s (%s)", path, error)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
