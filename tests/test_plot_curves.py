"""plot_curves reads CLU/TensorBoard scalars across resumed runs and draws them.

CLU (and with it TensorFlow) is imported inside the tests: importing TensorFlow at collection time, before
another module imports torch/triton, segfaults this stack.
"""

import time

import numpy as np
import pytest

from pikagen_jax import plot_curves


def _write(logdir, points):
    from clu import metric_writers

    writer = metric_writers.create_default_writer(str(logdir), just_logging=False)
    for step, values in points:
        writer.write_scalars(step, values)
    writer.flush()
    writer.close()


def test_read_scalars_merges_resumed_runs_and_plots(tmp_path):
    _write(tmp_path, [(1, {"d_loss": 2.0, "g_loss": 5.0}), (2, {"d_loss": 1.5, "g_loss": 4.0})])
    time.sleep(1.1)  # a second event file, as a resumed run writes; it rewrites step 2
    _write(tmp_path, [(2, {"d_loss": 1.25, "g_loss": 3.0}), (3, {"d_loss": 1.0, "g_loss": 2.0})])
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2

    scalars = plot_curves.read_scalars(tmp_path)
    assert scalars["d_loss"] == {1: 2.0, 2: 1.25, 3: 1.0}  # the later write of step 2 wins
    assert scalars["g_loss"] == {1: 5.0, 2: 3.0, 3: 2.0}

    image = np.asarray(plot_curves.plot(scalars, ["d_loss", "g_loss"], smooth=2))
    assert image.shape == (520, 900, 3)
    assert (image != 255).any(axis=-1).mean() > 0.01  # axes, ticks and two lines were drawn
    with pytest.raises(KeyError, match="available"):
        plot_curves.plot(scalars, ["missing_tag"])


def test_moving_average_keeps_gaps():
    out = plot_curves.moving_average([1.0, 3.0, float("nan"), 5.0], 2)
    assert out[:2] == [1.0, 2.0] and np.isnan(out[2]) and out[3] == 4.0


def test_read_scalars_without_events_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--workdir"):
        plot_curves.read_scalars(tmp_path)
