"""The user cache folder shared by the Inception weights, FID reference statistics and the JAX compilation cache."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$PIKAGEN_JAX_CACHE`, else `$XDG_CACHE_HOME/pikagen_jax`, else `~/.cache/pikagen_jax` (not created)."""
    if os.environ.get("PIKAGEN_JAX_CACHE"):
        return Path(os.environ["PIKAGEN_JAX_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pikagen_jax"
