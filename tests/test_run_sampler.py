"""The shared sampler interface: dispatch on the saved `config.system`, fixed-size padded batches, the L1
loader (equal to the model itself), and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from pikagen_jax import run_sampler
from pikagen_jax.config_utils import load_config
from pikagen_jax.training.sampler import generate_in_batches


def test_generate_in_batches_pads_to_one_shape_and_trims():
    calls = []

    def fn(index, rows, extra):
        calls.append((index, rows.shape, extra.shape))
        return rows * 2.0 + extra

    rows = np.arange(7, dtype=np.float32)[:, None]
    out = generate_in_batches(fn, (rows, np.ones((7, 1), np.float32)), batch_size=3)
    np.testing.assert_array_equal(out, rows * 2 + 1)
    assert calls == [(0, (3, 1), (3, 1)), (1, (3, 1), (3, 1)), (2, (3, 1), (3, 1))]  # one shape: one compilation
    with pytest.raises(ValueError, match="disagree"):
        generate_in_batches(fn, (rows, rows[:3]), batch_size=3)
    with pytest.raises(ValueError, match="no rows"):
        generate_in_batches(fn, (rows[:0],), batch_size=3)


def test_a_directory_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        run_sampler.load_run_sampler(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="launch.py"):
        run_sampler.load_run_sampler(tmp_path / "empty")


def test_l1_runs_generate_what_the_model_predicts(small_data, tmp_path):
    import jax
    import jax.numpy as jnp

    from pikagen_jax.l1.state import L1State
    from pikagen_jax.training.checkpointing import Checkpointer
    from pikagen_jax.training.samples import noise

    config = load_config("configs/l1.py:smoke", [f"data.data_dir={small_data['data_dir']}",
                                                 f"data.dataset={small_data['kaggle']}"])
    state = L1State(config, rngs=nnx.Rngs(3))
    with Checkpointer.from_config(tmp_path, config) as checkpointer:
        checkpointer.save(5, state.checkpoint_items(), config=config, force=True)
    sampler = run_sampler.load_run_sampler(tmp_path, batch_size=2)
    assert sampler.conditional and sampler.step == 5 and sampler.config.system == "l1"
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 5000, (3, 16)).astype(np.int32)
    mask = np.ones((3, 16), np.int32)
    images = sampler.generate(ids, mask, 11)
    expected = state.model(jnp.asarray(ids), jnp.asarray(mask), noise(11, 3, config.model.z_dim), deterministic=True)
    np.testing.assert_allclose(images, np.asarray(jax.device_get(expected)), atol=1e-5)
    with pytest.raises(ValueError, match="no best checkpoint"):
        run_sampler.load_run_sampler(tmp_path, best=True)
    with pytest.raises(ValueError, match="takes no option"):
        run_sampler.load_run_sampler(tmp_path, guidance_scale=2.0)
