"""Early stopping on a validation metric: stop once it has not improved for `patience` evaluations.

The decision is a pure function of the metric's history, so a resumed run (whose history is on disk)
decides exactly as an uninterrupted one would.
"""

from __future__ import annotations

from typing import Sequence

from pikagen_jax.training.checkpointing import BEST_MODES as MODES  # the best checkpoint's modes


def evaluations_without_improvement(values: Sequence[float], *, min_delta: float = 0.0, mode: str = "min") -> int:
    """How many of the last evaluations in `values` (oldest first) did not beat the best before them by more
    than `min_delta` (absolute). 0 when the latest value is such an improvement, or with no values."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if min_delta < 0:
        raise ValueError(f"min_delta must be >= 0, got {min_delta}")
    best, since = None, 0
    for value in values:
        value = float(value)
        if value != value:  # NaN: never an improvement
            since += 1
            continue
        improved = best is None or (value < best - min_delta if mode == "min" else value > best + min_delta)
        if improved:
            best, since = value, 0
        else:
            since += 1
    return since


def stop_reason(values: Sequence[float], *, patience: int, min_delta: float = 0.0, mode: str = "min",
                name: str = "metric") -> str | None:
    """A message saying why training should stop, or None to continue (`patience` <= 0 never stops)."""
    if patience <= 0:
        return None
    stalled = evaluations_without_improvement(values, min_delta=min_delta, mode=mode)
    if stalled < patience:
        return None
    finite = [float(v) for v in values if float(v) == float(v)]
    best = (min(finite) if mode == "min" else max(finite)) if finite else float("nan")
    return (f"{name} has not improved by more than {min_delta:g} for {stalled} evaluation(s) "
            f"(patience {patience}; best {best:.6g})")
