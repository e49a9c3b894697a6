"""Figures of an L1 run, drawn with Pillow: the learning curve and prediction-vs-ground-truth sheets.

    history = CurveHistory(workdir / "learning_curves.json")
    history.record(step, epoch, {"train_l1": 0.21, "val_l1": 0.24})       # after each evaluation
    save_figure(draw_learning_curves(history.points, SERIES), workdir / "learning_curves.png", pdf=True)
    sheet = prediction_sheet(real, predicted, captions, title="val, epoch 10")   # uint8 [H, W, 3]

Images are NHWC floats in [-1, 1]; figures are uint8 RGB arrays or PIL images.
"""

from __future__ import annotations

import json
import math
import textwrap
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pikagen_jax.training.logging import make_image_grid

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


class CurveHistory:
    """Evaluation points of a run, kept in a JSON file so that a resumed run continues its curve.

    Each point is {'step', 'epoch', <metric>: value}. Recording at step s drops points at steps >= s (left
    by a run that crashed after its last checkpoint and is now replaying those steps).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.points: list[dict] = json.loads(self.path.read_text()) if self.path.is_file() else []

    def record(self, step: int, epoch: float, values: Mapping[str, float]) -> None:
        self.points = [p for p in self.points if p["step"] < step]
        self.points.append({"step": int(step), "epoch": float(epoch), **{k: float(v) for k, v in values.items()}})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.points, indent=1))
        tmp.replace(self.path)


def printable(text: str) -> str:
    """ASCII for the built-in font, which lacks accents and typographic quotes ('Pokémon' -> 'Pokemon')."""
    text = text.translate(str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                                         "\u2013": "-", "\u2014": "-", "\u2026": "..."}))
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not high > low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    return [start + i * step for i in range(int(math.ceil((high - start) / step)) + 1)]


def draw_learning_curves(points: Sequence[Mapping[str, float]], series: Mapping[str, str], *,
                         title: str = "Learning curves", x_key: str = "epoch", y_label: str = "loss",
                         size: tuple[int, int] = (800, 500)) -> Image.Image:
    """A line chart of `series` ({metric key: legend label}) over `x_key`; missing / NaN values are gaps."""
    width, height = size
    left, right, top, bottom = 80, 30, 50, 60
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    font, title_font = _font(14), _font(18)
    xs = [float(p[x_key]) for p in points]
    values = [float(p[k]) for p in points for k in series if k in p and math.isfinite(float(p[k]))]
    draw.text((width // 2, 12), title, fill=BLACK, font=title_font, anchor="mt")
    if not xs or not values:
        draw.text((width // 2, height // 2), "no evaluation yet", fill=BLACK, font=font, anchor="mm")
        return image
    y_ticks = _nice_ticks(min(values), max(values))
    x_ticks = _nice_ticks(min(xs), max(xs)) if max(xs) > min(xs) else [min(xs)]
    x_lo, x_hi = (x_ticks[0], x_ticks[-1]) if len(x_ticks) > 1 else (xs[0] - 1, xs[0] + 1)
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)
        py = height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return px, py

    for tick in y_ticks:
        _, py = to_pixel(x_lo, tick)
        draw.line([(left, py), (width - right, py)], fill=GREY)
        draw.text((left - 8, py), f"{tick:.4g}", fill=BLACK, font=font, anchor="rm")
    for tick in x_ticks:
        px, _ = to_pixel(tick, y_lo)
        draw.line([(px, height - bottom), (px, height - bottom + 5)], fill=BLACK)
        draw.text((px, height - bottom + 8), f"{tick:g}", fill=BLACK, font=font, anchor="mt")
    draw.rectangle([left, top, width - right, height - bottom], outline=BLACK)
    draw.text(((left + width - right) // 2, height - 22), x_key, fill=BLACK, font=font, anchor="mm")
    draw.text((12, (top + height - bottom) // 2), y_label, fill=BLACK, font=font, anchor="lm")
    for index, (key, label) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        segment: list[tuple[float, float]] = []
        for point in points:
            value = float(point.get(key, float("nan")))
            if not math.isfinite(value):
                if len(segment) > 1:
                    draw.line(segment, fill=color, width=2)
                segment = []
                continue
            px, py = to_pixel(float(point[x_key]), value)
            segment.append((px, py))
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        if len(segment) > 1:
            draw.line(segment, fill=color, width=2)
        legend_y = top + 10 + 20 * index
        draw.line([(width - right - 230, legend_y), (width - right - 205, legend_y)], fill=color, width=3)
        draw.text((width - right - 198, legend_y), label, fill=BLACK, font=font, anchor="lm")
    return image


def prediction_sheet(ground_truth: np.ndarray, predictions: np.ndarray, captions: Sequence[str], *,
                     title: str = "", caption_chars: int = 28, caption_lines: int = 5) -> np.ndarray:
    """One column per example: ground truth above, prediction below, the (wrapped, cut) caption under them.

    `ground_truth`, `predictions`: [N, S, S, 3] in [-1, 1]. Returns uint8 [H, W, 3].
    """
    ground_truth, predictions = np.asarray(ground_truth), np.asarray(predictions)
    if ground_truth.shape != predictions.shape or ground_truth.ndim != 4:
        raise ValueError(f"ground truth {ground_truth.shape} and predictions {predictions.shape} must be equal "
                         "[N, S, S, 3] arrays")
    if len(captions) != len(ground_truth):
        raise ValueError(f"{len(captions)} captions for {len(ground_truth)} images")
    n, size = len(ground_truth), ground_truth.shape[1]
    pairs = np.concatenate([ground_truth, predictions])  # row 0: ground truth, row 1: predictions
    grid = make_image_grid(pairs, ncols=n, padding=4)
    cell = max(size, caption_chars * 6)
    font = _font(11)
    label_width, line_height, header = 90, 14, 28 if title else 6
    canvas = Image.new("RGB", (label_width + n * (cell + 4), header + grid.shape[0] + 8 + caption_lines * line_height),
                       WHITE)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 6), title, fill=BLACK, font=_font(16))
    for index in range(n):  # re-space the grid's columns so that captions fit under each example
        column = grid[:, index * (size + 4): index * (size + 4) + size]
        canvas.paste(Image.fromarray(column), (label_width + index * (cell + 4), header))
        lines = textwrap.wrap(printable(str(captions[index])), caption_chars)
        if len(lines) > caption_lines:
            lines = lines[:caption_lines - 1] + [lines[caption_lines - 1][:caption_chars - 3] + "..."]
        for line_index, line in enumerate(lines):
            draw.text((label_width + index * (cell + 4), header + grid.shape[0] + 4 + line_index * line_height),
                      line, fill=BLACK, font=font)
    draw.text((6, header + size // 2), "ground truth", fill=BLACK, font=font, anchor="lm")
    draw.text((6, header + size + 4 + size // 2), "prediction", fill=BLACK, font=font, anchor="lm")
    return np.asarray(canvas)


def save_figure(figure: Image.Image | np.ndarray, png_path: str | Path, *, pdf: bool = False) -> list[Path]:
    """Writes a figure as PNG (and as a one-page PDF beside it with `pdf`); returns the written paths."""
    image = figure if isinstance(figure, Image.Image) else Image.fromarray(np.asarray(figure, np.uint8))
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(png_path)
    written = [png_path]
    if pdf:
        image.convert("RGB").save(png_path.with_suffix(".pdf"), "PDF", resolution=100.0)
        written.append(png_path.with_suffix(".pdf"))
    return written


def figure_array(figure: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] of a figure (for TensorBoard's write_images)."""
    return np.asarray(figure.convert("RGB")) if isinstance(figure, Image.Image) else np.asarray(figure, np.uint8)
