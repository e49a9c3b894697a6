"""Plot scalar curves from a run's TensorBoard event files to a PNG (no TensorBoard server needed).

    python -m pikagen_jax.plot_curves --workdir=workdirs/gan_cpu --tags=d_loss,g_loss --out=curves.png

Every `events.out.tfevents.*` file under `--workdir` (non-recursive; a resumed run writes one per start) is
read; when two files hold the same tag at the same step, the later write wins. `--list` prints the scalar tags.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from absl import app, flags

from pikagen_jax.l1.report import draw_learning_curves

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder holding events.out.tfevents.* files.")
_TAGS = flags.DEFINE_list("tags", [], "Scalar tags to plot, e.g. d_loss,g_loss (see --list).")
_OUT = flags.DEFINE_string("out", "", "Output PNG (default: <workdir>/curves_<tags>.png).")
_SMOOTH = flags.DEFINE_integer("smooth", 1, "Moving-average window over logged points (1 = raw).")
_LIST = flags.DEFINE_bool("list", False, "Print the scalar tags with their point counts and exit.")


def read_scalars(workdir: str | Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} for every scalar in the event files of `workdir`; later writes win."""
    import tensorflow as tf  # tensorflow comes with tensorflow-datasets; imported here so --help stays fast

    paths = sorted(Path(workdir).glob("events.out.tfevents.*"))
    if not paths:
        raise FileNotFoundError(f"no events.out.tfevents.* files in {workdir}; pass the run's --workdir "
                                "(for diffusion runs the stage folder, e.g. <workdir>/unet)")
    latest: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for path in paths:
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.HasField("tensor"):
                    array = tf.make_ndarray(value.tensor)
                    if array.size != 1 or array.dtype.kind not in "fiu":
                        continue
                    number = float(array.reshape(()))
                elif value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    continue
                previous = latest[value.tag].get(event.step)
                if previous is None or event.wall_time >= previous[0]:
                    latest[value.tag][event.step] = (event.wall_time, number)
    return {tag: {step: v for step, (_, v) in sorted(points.items())} for tag, points in latest.items()}


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` finite values (NaN/Inf points stay gaps)."""
    out, recent = [], []
    for value in values:
        if not math.isfinite(value):
            out.append(value)
            continue
        recent = (recent + [value])[-max(window, 1):]
        out.append(sum(recent) / len(recent))
    return out


def plot(scalars: dict[str, dict[int, float]], tags: Sequence[str], *, smooth: int = 1, title: str = ""):
    """A PIL image of `tags` over training step."""
    missing = [t for t in tags if t not in scalars]
    if missing:
        raise KeyError(f"tags {missing} not in the event files; available: {sorted(scalars)}")
    points: dict[int, dict[str, float]] = defaultdict(dict)
    for tag in tags:
        steps = list(scalars[tag])
        for step, value in zip(steps, moving_average(list(scalars[tag].values()), smooth)):
            points[step][tag] = value
    rows = [{"step": float(step), **values} for step, values in sorted(points.items())]
    label = {t: t + (f" (mean of {smooth})" if smooth > 1 else "") for t in tags}
    return draw_learning_curves(rows, label, title=title or ", ".join(tags), x_key="step", y_label="value",
                                size=(900, 520))


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    scalars = read_scalars(_WORKDIR.value)
    if _LIST.value or not _TAGS.value:
        for tag in sorted(scalars):
            print(f"{tag}\t{len(scalars[tag])} points")
        if not _TAGS.value and not _LIST.value:
            print("pass --tags=a,b to plot them")
        return
    out = Path(_OUT.value or Path(_WORKDIR.value) / f"curves_{'_'.join(_TAGS.value).replace('/', '-')}.png")
    plot(scalars, _TAGS.value, smooth=_SMOOTH.value, title=f"{Path(_WORKDIR.value).name}").save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
