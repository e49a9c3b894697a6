"""Counts XLA compilations, so the training loop can tell when its jitted step compiles more than once.

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

import threading

import jax

# jax._src.dispatch.BACKEND_COMPILE_EVENT: recorded once per XLA backend compilation (cache hits record none).
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
    """Context manager counting XLA backend compilations while active (re-enterable; counts accumulate)."""

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
