"""TensorBoard / console logging for the trainers: CLU metric writers, progress lines, sample grids.

Only process 0 writes TensorBoard files (`create_writer`); other processes only log. Metrics stay on
device between log intervals: `ProgressReporter` is called every step with device arrays and fetches them
to the host only on log steps. Watch a run with `tensorboard --logdir <workdir>`.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


class _ProjectInfoOnly(std_logging.Filter):
    """Passes warnings and errors from anywhere, INFO and below only from this project's own code."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING:
            return True
        path = str(record.pathname)
        return path.startswith(_PROJECT_ROOT) and "site-packages" not in path


class _ConsoleFormatter(std_logging.Formatter):
    """'15:13:50 step 200/1000 | ...' for INFO, '15:13:50 WARNING: ...' above it."""

    def format(self, record: std_logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno <= std_logging.INFO else f"{record.levelname}: "
        text = f"{clock} {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def quiet_third_party_logging(verbose: bool = False) -> None:
    """Keeps the console to this project's progress and losses: third-party INFO lines (Orbax, Grain, CLU's
    metric echo, absl) are dropped, TensorFlow's C++ logging is limited to errors and lines carry only the
    time; `verbose` (`--verbosity=1`) keeps absl's full format and every library's lines."""
    import os

    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _ProjectInfoOnly) for f in handler.filters):
        handler.addFilter(_ProjectInfoOnly())
    handler.setFormatter(_ConsoleFormatter())


def hide_gpus_from_tensorflow() -> None:
    """Keeps TensorFlow (imported by CLU's summary writer) off the GPUs so it reserves no memory JAX needs."""
    try:
        import tensorflow as tf
    except ImportError:
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices; nothing left to do
        pass


def create_writer(workdir: str | Path):
    """A CLU MultiWriter: console logging on every process, TensorBoard event files (in `workdir`) on
    process 0 only."""
    from clu import metric_writers  # imports TensorFlow: lazily

    hide_gpus_from_tensorflow()
    return metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)


def flatten_hparams(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A config as {'train.batch_size': 64, ...}; values that are not bool/int/float/str become strings."""
    tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    flat: dict[str, bool | int | float | str] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = "" if value is None else str(value)

    visit("", tree)
    return flat


def write_hparams(writer, config: ml_collections.ConfigDict | Mapping[str, Any]) -> None:
    """Writes the flattened config to the TensorBoard HParams tab (call once per run)."""
    writer.write_hparams(flatten_hparams(config))


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ProgressReporter:
    """Call once per training step; on log steps it fetches the metrics, writes them and prints a line.

    Wraps `clu.periodic_actions.ReportProgress` (steps/s and uptime scalars, `timed` sections) and adds a
    console line every `log_every_steps` steps (and at the last step)::

        step 200/1000 (20.0%) | d_loss 0.8123 | g_loss 1.2034 | 4.21 steps/s | ETA 3m10s
    """

    def __init__(self, *, num_train_steps: int, log_every_steps: int, writer=None):
        from clu import periodic_actions  # imports TensorFlow: lazily

        if log_every_steps < 1:
            raise ValueError(f"log_every_steps must be >= 1, got {log_every_steps}")
        self.num_train_steps, self.log_every_steps, self.writer = num_train_steps, log_every_steps, writer
        self._clu = periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer,
                                                    every_steps=log_every_steps, every_secs=None)
        self._window_start: tuple[int, float] | None = None
        self._warned_non_scalar: set[str] = set()

    def should_log(self, step: int) -> bool:
        """True on multiples of `log_every_steps` and on the last step."""
        return step % self.log_every_steps == 0 or step == self.num_train_steps

    def __call__(self, step: int, metrics: Mapping[str, Any] | None = None) -> dict[str, float] | None:
        """Advance to `step`. On log steps returns the host metrics (also written and printed), else None."""
        now = time.monotonic()
        if self._window_start is None:
            self._window_start = (step - 1, now)
        self._clu(step, now)
        if not self.should_log(step):
            return None
        host = self._scalars(jax.device_get(dict(metrics or {})))
        start_step, start_time = self._window_start
        steps_per_sec = (step - start_step) / max(now - start_time, 1e-9)
        self._window_start = (step, now)
        if self.writer is not None and host:
            self.writer.write_scalars(step, host)
        logging.info("%s", self.format_line(step, host, steps_per_sec))
        return host

    def _scalars(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        out = {}
        for name, value in metrics.items():
            array = np.asarray(value)
            if array.size == 1 and array.dtype.kind in "biuf":
                out[name] = float(array.reshape(()))
            elif name not in self._warned_non_scalar:
                self._warned_non_scalar.add(name)
                logging.warning("metric %r (shape %s) is not a scalar and is not logged", name, array.shape)
        return out

    def format_line(self, step: int, metrics: Mapping[str, float], steps_per_sec: float) -> str:
        """The console line: step, percentage, each metric, steps/s and ETA."""
        parts = [f"step {step}/{self.num_train_steps} ({100.0 * step / max(self.num_train_steps, 1):.1f}%)"]
        parts += [f"{name} {value:.4g}" for name, value in metrics.items()]
        eta = (self.num_train_steps - step) / steps_per_sec if steps_per_sec > 0 else float("inf")
        parts += [f"{steps_per_sec:.2f} steps/s", f"ETA {_format_duration(eta)}"]
        return " | ".join(parts)

    @contextlib.contextmanager
    def timed(self, name: str, wait_jax_async_dispatch: bool = True) -> Iterator[None]:
        """Measures a named section (e.g. 'eval', 'checkpoint'); shown as a share of time by CLU.

        With `wait_jax_async_dispatch` (CLU's default) the section first waits for all dispatched device
        work, i.e. syncs host and device: use it only around sections that run rarely.
        """
        with self._clu.timed(name, wait_jax_async_dispatch=wait_jax_async_dispatch):
            yield


def to_uint8(images: Any) -> np.ndarray:
    """Images in [-1, 1] (any float array) -> uint8 in [0, 255]; values outside are clipped, NaN -> 0."""
    array = np.nan_to_num(np.asarray(jax.device_get(images), dtype=np.float32), nan=-1.0)
    return np.round((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_image_grid(images: Any, ncols: int = 8, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tiles images [N, H, W, 3] (or [N, H, W, 1]) in [-1, 1] into one uint8 image [rows*H, cols*W, 3].

    Rows are filled left to right; `padding` pixels of `pad_value` (in [-1, 1]; 1 = white, the sprites'
    background) separate the cells, and empty cells of the last row are filled with it too.
    """
    array = np.asarray(jax.device_get(images))
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, 3] or [N, H, W, 1], got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("make_image_grid needs at least one image")
    if ncols < 1 or padding < 0:
        raise ValueError(f"need ncols >= 1 and padding >= 0, got ncols={ncols}, padding={padding}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    n, h, w, _ = array.shape
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    grid = np.full((rows * h + (rows - 1) * padding, cols * w + (cols - 1) * padding, 3), pad_value, np.float32)
    for index in range(n):
        row, col = divmod(index, cols)
        top, left = row * (h + padding), col * (w + padding)
        grid[top:top + h, left:left + w] = array[index]
    return to_uint8(grid)


def save_png(path: str | Path, grid: np.ndarray) -> Path:
    """Writes a uint8 [H, W, 3] image as PNG (creating parent folders); returns the path."""
    from PIL import Image

    grid = np.asarray(grid)
    if grid.dtype != np.uint8 or grid.ndim != 3 or grid.shape[-1] != 3:
        raise ValueError(f"save_png expects uint8 [H, W, 3] (e.g. from make_image_grid), got {grid.dtype} "
                         f"{grid.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def write_image_grid(writer, step: int, name: str, images: Any, ncols: int = 8,
                     png_path: str | Path | None = None) -> np.ndarray:
    """Makes a grid of `images` (in [-1, 1]), writes it to TensorBoard under `name` (and as a PNG if
    `png_path` is given); returns the uint8 grid."""
    grid = make_image_grid(images, ncols)
    writer.write_images(step, {name: grid[None]})
    if png_path is not None and jax.process_index() == 0:  # one process writes the files
        save_png(png_path, grid)
    return grid
