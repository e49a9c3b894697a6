"""GAN end to end: smoke training from launch.py, resume equality, NaN guard, 1-vs-2-device step, generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from pikagen_jax.config_utils import load_config
from tests.conftest import REPO


def _smoke_config(small_data, **overrides):
    items = [f"data.data_dir={small_data['data_dir']}", f"data.dataset={small_data['pokeapi']}"]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return load_config("configs/gan.py:smoke", items)


@pytest.fixture(scope="module")
def smoke_run(small_data, tmp_path_factory):
    """`launch.py --config=configs/gan.py:smoke` in a subprocess, as a user runs it."""
    workdir = tmp_path_factory.mktemp("gan_smoke")
    cmd = [sys.executable, "launch.py", "--config=configs/gan.py:smoke", f"--workdir={workdir}",
           f"--config.data.data_dir={small_data['data_dir']}", f"--config.data.dataset={small_data['pokeapi']}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, proc.stderr


def test_smoke_run_writes_checkpoints_events_and_samples(smoke_run):
    workdir, log = smoke_run
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    step4 = workdir / "checkpoints" / "4"
    for item in ("generator", "discriminator", "ema_generator", "text_encoder", "opt_g", "opt_d", "opt_text",
                 "data_iterator", "config"):
        assert (step4 / item).is_dir(), item
    assert list(workdir.glob("events.out.tfevents.*"))
    from PIL import Image

    grid = np.asarray(Image.open(workdir / "samples" / "step_0000004.png"))
    assert grid.shape[0] > 2 * 64 and grid.shape[1] >= 4 * 64  # real row + sample row of 4 prompts
    assert "step 4/4" in log and "d_loss" in log


def test_generate_from_smoke_run(smoke_run, tmp_path):
    from pikagen_jax import generate

    workdir, _ = smoke_run
    args = generate.parse_args([f"--workdir={workdir}", "--prompt=A small blue turtle with a shell.",
                                "--prompt=A fiery lizard.", "--num=3", f"--out={tmp_path / 'g.png'}",
                                f"--out_dir={tmp_path / 'single'}", "--seed=5"])
    first = generate.generate(args)
    again = generate.generate(args)
    assert first.shape == (6, 64, 64, 3) and np.abs(first).max() <= 1.0
    np.testing.assert_array_equal(first, again)  # same seed, same images
    assert not np.allclose(first[0], first[1])  # different noise per image
    assert len(list((tmp_path / "single").glob("*.png"))) == 6
    assert generate.main([f"--workdir={workdir}", "--prompt=   "]) == 2
    assert generate.main([f"--workdir={tmp_path / 'none'}", "--prompt=x"]) == 2


def test_resume_continues_with_identical_losses(small_data, tmp_path):
    from pikagen_jax.gan.train import train_and_evaluate

    straight = train_and_evaluate(_smoke_config(small_data, **{"train.log_every": 1}), tmp_path / "a")
    first = train_and_evaluate(_smoke_config(small_data, **{"train.log_every": 1, "train.num_steps": 2}),
                               tmp_path / "b")
    assert first.final_step == 2
    resumed = train_and_evaluate(_smoke_config(small_data, **{"train.log_every": 1}), tmp_path / "b")
    assert resumed.start_step == 2 and resumed.final_step == 4
    for run in (straight, first, resumed):  # the jitted step compiles in its first call and never again
        assert run.first_step_compiles >= 1 and run.recompiles == 0
    for name in ("d_loss", "g_loss", "ma_gp", "grad_norm_g"):
        np.testing.assert_allclose(resumed.last_metrics[name], straight.last_metrics[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_nonfinite_batch_is_skipped_and_state_unchanged(small_data):
    from pikagen_jax.gan.state import GanState
    from pikagen_jax.gan.steps import make_train_step
    from pikagen_jax.training.mesh import make_mesh, replicate_nodes, shard_batch

    config = _smoke_config(small_data)
    state = GanState(config, rngs=nnx.Rngs(0))
    mesh = make_mesh()
    replicate_nodes(mesh, state)
    batch = {"image": np.full((4, 64, 64, 3), np.nan, np.float32),
             "token_ids": np.full((4, 16), 1000, np.int32), "attention_mask": np.ones((4, 16), np.int32)}
    before = jax.tree.map(np.asarray, nnx.state(state, nnx.Param))
    # the training loop's jitted step (the program the smoke and resume runs compile: shared via the cache)
    metrics = make_train_step(state, config, mesh)(shard_batch(batch, mesh), 0)
    assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["d_loss"]))
    after = jax.tree.map(np.asarray, nnx.state(state, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, before, after)


@pytest.mark.slow  # 40 s of compile; the default suite stays near 15 minutes on 2 cores
def test_text_reading_recipe_trains_its_affine_blocks(small_data):
    """mean pooling + DF-GAN affine blocks + the colour loss + D's projection term: one jitted step moves the
    zero-initialised affine output layers and D's sentence embedding off zero (the text starts to modulate G and
    to enter D's logit) with finite losses."""
    from pikagen_jax.gan.state import GanState
    from pikagen_jax.gan.steps import make_train_step
    from pikagen_jax.training.mesh import make_mesh, replicate_nodes, shard_batch

    config = _smoke_config(small_data, **{"model.text_affine": True, "text.sentence_pooling": "mean",
                                          "loss.colour_weight": 5.0, "loss.colour_mismatch": 0.5,
                                          "model.d_text_projection": True})
    state = GanState(config, rngs=nnx.Rngs(0))
    assert not np.asarray(state.discriminator.text_embed.kernel[...]).any()
    mesh = make_mesh()
    replicate_nodes(mesh, state)

    def affine_out_kernels():
        flat = jax.tree_util.tree_flatten_with_path(nnx.state(state.generator, nnx.Param))[0]
        return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat
                if "affine" in jax.tree_util.keystr(path) and "out" in jax.tree_util.keystr(path)
                and "kernel" in jax.tree_util.keystr(path)}

    before = affine_out_kernels()
    assert before and all(not k.any() for k in before.values())
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32),
             "token_ids": rng.integers(1000, 5000, (4, 16)).astype(np.int32),
             "attention_mask": np.ones((4, 16), np.int32)}
    metrics = make_train_step(state, config, mesh)(shard_batch(batch, mesh), 0)
    assert int(metrics["skipped"]) == 0
    for name in ("d_loss", "g_loss", "g_colour", "d_colour_mismatch"):
        assert np.isfinite(float(metrics[name])), name
    assert float(metrics["g_colour"]) > 0
    after = affine_out_kernels()
    assert all(np.abs(after[k]).max() > 0 for k in before), "a zero-initialised affine layer did not train"
    assert np.abs(np.asarray(state.discriminator.text_embed.kernel[...])).max() > 0, "D's text embedding did not train"


def test_two_devices_match_one_device(small_data, tmp_path):
    """The same global batch on a 2-device mesh gives the 1-device losses and gradients."""
    script = textwrap.dedent(f"""
        import json, sys
        import jax, numpy as np
        from flax import nnx
        from pikagen_jax.config_utils import load_config
        from pikagen_jax.gan.state import GanState
        from pikagen_jax.gan.steps import make_train_step
        from pikagen_jax.training.mesh import make_mesh, replicate_nodes, shard_batch
        config = load_config("configs/gan.py:smoke", ["data.data_dir={small_data['data_dir']}",
                                                       "data.dataset={small_data['pokeapi']}"])
        rng = np.random.default_rng(0)
        batch = {{"image": rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32),
                 "token_ids": rng.integers(1000, 5000, (4, 16)).astype(np.int32),
                 "attention_mask": np.ones((4, 16), np.int32)}}
        out = {{}}
        for n in (1, 2):
            mesh = make_mesh(jax.devices()[:n])
            state = GanState(config, rngs=nnx.Rngs(0))
            replicate_nodes(mesh, state)
            step = make_train_step(state, config, mesh)
            metrics = step(shard_batch(batch, mesh), 0)
            out[n] = {{k: float(metrics[k]) for k in ("d_loss", "d_hinge", "d_mismatch", "ma_gp", "grad_norm_d")}}
            out[n]["devices"] = len(state.generator.project.kernel.value.sharding.device_set)
        print(json.dumps(out))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["1"]["devices"] == 1 and out["2"]["devices"] == 2
    # Quantities computed before an Adam update: equal up to float reduction order. (After an update the
    # runs drift apart legitimately: Adam's first step is ~lr·sign(g), so near-zero gradient entries whose
    # sign depends on summation order move by a full learning rate.)
    for key in ("d_loss", "d_hinge", "d_mismatch", "ma_gp", "grad_norm_d"):
        np.testing.assert_allclose(out["2"][key], out["1"][key], rtol=1e-4, err_msg=key)


def test_bfloat16_mixed_precision_step_is_finite_and_keeps_float32_params(small_data):
    from pikagen_jax.gan.state import GanState
    from pikagen_jax.gan.steps import gan_step

    config = _smoke_config(small_data, **{"train.mixed_precision": "bfloat16"})
    state = GanState(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32),
             "token_ids": rng.integers(1000, 5000, (4, 16)).astype(np.int32),
             "attention_mask": np.ones((4, 16), np.int32)}
    before = jax.tree.map(np.asarray, nnx.state(state.generator, nnx.Param))
    metrics = nnx.jit(lambda s, b: gan_step(s, b, 0, config))(state, batch)
    assert int(metrics["skipped"]) == 0
    assert all(np.isfinite(float(metrics[k])) for k in ("d_loss", "g_loss", "ma_gp"))
    assert float(metrics["ema_decay"]) == pytest.approx(0.1)  # EMA warm-up: (1 + step) / (10 + step)
    ema, gen = state.ema_generator.project.kernel.value, state.generator.project.kernel.value
    np.testing.assert_allclose(ema, 0.1 * before["project"]["kernel"].value + 0.9 * gen, rtol=1e-5, atol=1e-6)
    after = nnx.state(state.generator, nnx.Param)
    assert {leaf.dtype for leaf in jax.tree.leaves(after)} == {np.dtype("float32")}
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, after))
    assert any(changed)
