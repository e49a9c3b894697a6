"""Tests of the shared trainer skeleton: mesh, checkpoints, logging, NaN guards, configs, launch.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from pikagen_jax import config_utils
from pikagen_jax.training import guards, mesh as mesh_lib
from pikagen_jax.training import logging as train_logging
from pikagen_jax.training.checkpointing import Checkpointer, abstract_like

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers

class TinyModel(nnx.Module):
    """Params, batch stats and a dropout RNG stream: every kind of state a real model has."""

    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.BatchNorm(4, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)

    def __call__(self, x):
        return self.dropout(self.norm(self.linear(x)))


def make_model_and_optimizer(seed: int):
    model = TinyModel(nnx.Rngs(seed, dropout=seed + 1))
    return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)
    return loss


def trained_model(seed: int = 0, steps: int = 2):
    model, optimizer = make_model_and_optimizer(seed)
    model.train()
    for _ in range(steps):
        train_step(model, optimizer, jnp.arange(12.0).reshape(4, 3) / 12)
    return model, optimizer


def host_leaves(tree) -> list[np.ndarray]:
    """Leaves as numpy (PRNG keys as their raw data), for exact comparisons."""
    out = []
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append(np.asarray(leaf))
    return out


def assert_trees_equal(a, b) -> None:
    la, lb = host_leaves(a), host_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


class FakeIterator:
    """A data iterator with grain's DataLoaderIterator state protocol (JSON bytes)."""

    def __init__(self, position: int = 0):
        self.position = position

    def get_state(self) -> bytes:
        return json.dumps({"position": self.position, "seed": 7}).encode()

    def set_state(self, state: bytes) -> None:
        self.position = json.loads(state.decode())["position"]


def run_python(code: str, env_extra: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


# ----------------------------------------------------------------------------- mesh

def test_mesh_and_shard_batch_single_device():
    mesh = mesh_lib.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count()
    assert mesh_lib.replicated(mesh).spec == PartitionSpec()
    assert mesh_lib.data_sharding(mesh).spec == PartitionSpec("data")
    batch = {"image": np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32),
             "token_ids": np.arange(12, dtype=np.int32).reshape(4, 3),
             "caption": np.array(["a", "b", "c", "d"])}
    sharded = mesh_lib.shard_batch(batch, mesh)
    assert isinstance(sharded["image"], jax.Array)
    assert sharded["image"].sharding.spec == PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(sharded["image"]), batch["image"])
    np.testing.assert_array_equal(np.asarray(sharded["token_ids"]), batch["token_ids"])
    assert sharded["caption"] is batch["caption"]  # strings stay on the host
    with pytest.raises(ValueError, match="leading batch axis"):
        mesh_lib.shard_batch({"a": np.zeros((4, 2)), "b": np.zeros((3, 2))}, mesh)


def test_batch_divisibility_message_and_padding():
    with pytest.raises(ValueError, match=r"train.batch_size=10 is not divisible by the 4 devices.*multiple of 4"):
        mesh_lib.check_batch_divisible(10, 4)
    mesh_lib.check_batch_divisible(12, 4)
    padded, mask = mesh_lib.pad_batch({"x": np.arange(5), "y": np.arange(10).reshape(5, 2)}, 4)
    np.testing.assert_array_equal(padded["x"], [0, 1, 2, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(mask, [True] * 5 + [False] * 3)
    assert padded["y"].shape == (8, 2)


def test_replicate_nodes_keeps_values():
    mesh = mesh_lib.make_mesh()
    model, optimizer = make_model_and_optimizer(0)
    before = host_leaves(nnx.state((model, optimizer)))
    mesh_lib.replicate_nodes(mesh, model, optimizer)
    assert model.linear.kernel[...].sharding.spec == PartitionSpec()
    for x, y in zip(before, host_leaves(nnx.state((model, optimizer)))):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(TypeError, match="replicate_tree"):
        mesh_lib.replicate_nodes(mesh, {"not": "a module"})


def test_shard_batch_over_two_forced_cpu_devices():
    result = run_python("""
        import json, numpy as np, jax
        from flax import nnx
        from pikagen_jax.training import mesh as mesh_lib
        mesh = mesh_lib.make_mesh()
        batch = {"image": np.arange(4 * 2 * 2 * 3, dtype=np.float32).reshape(4, 2, 2, 3)}
        out = mesh_lib.shard_batch(batch, mesh)["image"]
        model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        mesh_lib.replicate_nodes(mesh, model)
        try:
            mesh_lib.shard_batch({"image": np.zeros((3, 1))}, mesh)
            error = ""
        except ValueError as e:
            error = str(e)
        print(json.dumps({
            "devices": jax.device_count(),
            "shards": sorted([[s.device.id, list(s.data.shape), float(np.asarray(s.data).sum())]
                              for s in out.addressable_shards]),
            "equal": bool((np.asarray(out) == batch["image"]).all()),
            "param_devices": len(model.kernel[...].sharding.device_set),
            "param_replicated": model.kernel[...].sharding.is_fully_replicated,
            "error": error}))
    """, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["devices"] == 2
    image = np.arange(48, dtype=np.float32).reshape(4, 2, 2, 3)
    assert info["shards"] == [[0, [2, 2, 2, 3], float(image[:2].sum())], [1, [2, 2, 2, 3], float(image[2:].sum())]]
    assert info["equal"]
    assert info["param_devices"] == 2 and info["param_replicated"]
    assert "not divisible by the 2 devices" in info["error"]


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_model_optimizer_iterator_config(tmp_path):
    model, optimizer = trained_model(seed=0)
    config = ml_collections.ConfigDict({"system": "gan", "train": {"batch_size": 8, "betas": (0.0, 0.9)}})
    with Checkpointer(tmp_path, every_steps=5) as ckpt:
        assert not ckpt.save(3, {"generator": model, "opt_g": optimizer})  # not a multiple of every_steps
        assert ckpt.save(5, {"generator": nnx.state(model), "opt_g": optimizer},
                         data_iterator=FakeIterator(position=42), config=config)
    # Fresh process view: new objects, different initial values, abstract targets from eval_shape.
    ckpt = Checkpointer(tmp_path, every_steps=5)
    assert ckpt.latest_step() == 5
    abstract_model, abstract_opt = nnx.eval_shape(lambda: make_model_and_optimizer(123))
    iterator = FakeIterator(position=0)
    restored = ckpt.restore({"generator": nnx.state(abstract_model), "opt_g": nnx.state(abstract_opt)},
                            data_iterator=iterator)
    assert_trees_equal(restored["generator"], nnx.state(model))
    assert_trees_equal(restored["opt_g"], nnx.state(optimizer))
    assert iterator.position == 42
    assert ckpt.restore_config() == {"system": "gan", "train": {"batch_size": 8, "betas": [0.0, 0.9]}}
    assert (tmp_path / "checkpoints" / "5" / "config").is_dir()
    assert not list((tmp_path / "checkpoints").rglob("*.pkl"))

    # In-place resume of live modules, and a partial restore (just the generator).
    model2, optimizer2 = make_model_and_optimizer(99)
    assert ckpt.restore_latest_into({"generator": model2, "opt_g": optimizer2}) == 5
    assert_trees_equal(nnx.state(model2), nnx.state(model))
    assert int(optimizer2.step[...]) == 2
    only_g = ckpt.restore({"generator": abstract_model})
    assert set(only_g) == {"generator"}
    with pytest.raises(KeyError, match="no item"):
        ckpt.restore({"discriminator": abstract_model})
    ckpt.close()


def test_real_grain_iterator_resumes_exactly(tmp_path):
    def loader():
        sampler = grain.samplers.IndexSampler(num_records=50, shuffle=True, seed=3, num_epochs=None)
        return grain.DataLoader(data_source=grain.sources.RangeDataSource(0, 50, 1), sampler=sampler,
                                operations=[grain.transforms.Batch(4)], worker_count=0)

    iterator = iter(loader())
    for _ in range(3):
        next(iterator)
    model, _ = make_model_and_optimizer(0)
    with Checkpointer(tmp_path, every_steps=1) as ckpt:
        ckpt.save(3, {"generator": model}, data_iterator=iterator)
        expected = [next(iterator).tolist() for _ in range(2)]  # advancing after save must not leak in
    fresh = iter(loader())
    Checkpointer(tmp_path).restore({"generator": model}, data_iterator=fresh)
    assert [next(fresh).tolist() for _ in range(2)] == expected
    files = (tmp_path / "checkpoints" / "3" / "data_iterator").glob("*.json")
    assert [f.name for f in files] == ["process_0-of-1.json"]  # one file per process


def test_max_to_keep_and_every_steps(tmp_path):
    model, optimizer = make_model_and_optimizer(0)
    with Checkpointer(tmp_path, every_steps=2, max_to_keep=2) as ckpt:
        saved = [step for step in range(1, 10) if ckpt.save(step, {"generator": model})]
        assert ckpt.save(9, {"generator": model}, force=True)  # the last step, off the interval
        assert not ckpt.save(9, {"generator": model}, force=True)  # never twice
    assert saved == [2, 4, 6, 8]
    assert ckpt.all_steps() == [8, 9]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["8", "9"]


def test_resume_picks_latest_step(tmp_path):
    with Checkpointer(tmp_path, every_steps=1, max_to_keep=5) as ckpt:
        for step in (1, 2, 3):
            model, _ = make_model_and_optimizer(step)
            ckpt.save(step, {"generator": model})
    target, _ = make_model_and_optimizer(0)
    assert Checkpointer(tmp_path).restore_latest_into({"generator": target}) == 3
    assert_trees_equal(nnx.state(target), nnx.state(make_model_and_optimizer(3)[0]))
    empty = Checkpointer(tmp_path / "fresh")
    assert empty.latest_step() is None
    assert empty.restore_latest_into({"generator": target}) == 0
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        empty.restore({"generator": target})


def test_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
    """A user passes --workdir=workdirs/run: relative paths must work (TensorStore needs absolute ones)."""
    monkeypatch.chdir(tmp_path)
    model, _ = make_model_and_optimizer(7)
    with Checkpointer("runs/rel", every_steps=1, async_save=True) as ckpt:
        assert ckpt.save(1, {"generator": model})
    target, _ = make_model_and_optimizer(0)
    assert Checkpointer("runs/rel").restore_latest_into({"generator": target}) == 1
    assert_trees_equal(nnx.state(target), nnx.state(model))
    assert (tmp_path / "runs" / "rel" / "checkpoints" / "1").is_dir()


@pytest.mark.parametrize("mode, values, best", [("min", [0.5, 0.3, 0.4, 0.2, 0.6], 4),
                                                ("max", [0.5, 0.3, 0.9, 0.2, 0.6], 3)])
def test_best_checkpoint_keeps_best_metric(tmp_path, mode, values, best):
    with Checkpointer(tmp_path, every_steps=1, max_to_keep=1, best_metric="val_l1", best_mode=mode) as ckpt:
        saved_best = []
        for step, value in enumerate(values, start=1):
            model, _ = make_model_and_optimizer(step)
            ckpt.save(step, {"generator": model})
            if ckpt.maybe_save_best(step, {"generator": model}, {"val_l1": jnp.float32(value), "other": 1.0}):
                saved_best.append(step)
        assert ckpt.maybe_save_best(6, {"generator": model}, {"val_l1": float("nan")}) is False
    expected_saves = [s for s, v in enumerate(values, start=1)
                      if v == (min if mode == "min" else max)(values[:s])]
    assert saved_best == expected_saves
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [str(best)]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["5"]  # latest kept apart
    reopened = Checkpointer(tmp_path, best_metric="val_l1", best_mode=mode)
    assert reopened.best_step() == best and reopened.best_value == pytest.approx(values[best - 1])
    worse = values[best - 1] + (0.01 if mode == "min" else -0.01)
    assert not reopened.maybe_save_best(7, {"generator": model}, {"val_l1": worse})
    target, _ = make_model_and_optimizer(0)
    assert reopened.restore_latest_into({"generator": target}, best=True) == best
    assert_trees_equal(nnx.state(target), nnx.state(make_model_and_optimizer(best)[0]))
    with pytest.raises(KeyError, match="val_l1"):
        reopened.maybe_save_best(8, {"generator": model}, {"loss": 0.1})
    reopened.close()


def test_simulated_crash_resumes_from_last_complete_step(tmp_path):
    # A training process saves asynchronously at steps 2 and 4, is killed while step 6 is half written
    # (left as an orbax tmp folder), and never calls close().
    result = run_python(f"""
        import os, numpy as np, jax
        from flax import nnx
        from pikagen_jax.training.checkpointing import Checkpointer
        ckpt = Checkpointer({str(tmp_path)!r}, every_steps=2, async_save=True)
        for step in range(1, 5):
            model = nnx.Linear(3, 2, rngs=nnx.Rngs(step))
            ckpt.save(step, {{"generator": model}})
        ckpt.wait_until_finished()
        np.save({str(tmp_path / "expected.npy")!r}, np.asarray(model.kernel[...]))
        partial = {str(tmp_path)!r} + "/checkpoints/6.orbax-checkpoint-tmp/generator"
        os.makedirs(partial)
        open(partial + "/half_written", "w").write("garbage")
        os._exit(1)
    """)
    assert result.returncode == 1, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp").exists()
    reader = Checkpointer(tmp_path, read_only=True)  # e.g. a sampler: reads, never cleans up or saves
    assert reader.latest_step() == 4
    assert (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp").exists()
    with pytest.raises(PermissionError, match="read_only"):
        reader.save(8, {"generator": nnx.Linear(3, 2, rngs=nnx.Rngs(0))})
    ckpt = Checkpointer(tmp_path, every_steps=2)
    assert ckpt.all_steps() == [2, 4] and ckpt.latest_step() == 4
    target = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    assert ckpt.restore_latest_into({"generator": target}) == 4
    np.testing.assert_array_equal(np.asarray(target.kernel[...]), np.load(tmp_path / "expected.npy"))
    assert not (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp").exists()  # cleaned on open
    ckpt.close()


def test_abstract_like_attaches_shardings():
    mesh = mesh_lib.make_mesh()
    abstract = abstract_like(nnx.state(nnx.eval_shape(lambda: TinyModel(nnx.Rngs(0)))), mesh_lib.replicated(mesh))
    leaves = jax.tree.leaves(abstract)
    assert leaves and all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    assert all(leaf.sharding == mesh_lib.replicated(mesh) for leaf in leaves)


def test_checkpointer_from_config(tmp_path):
    from pikagen_jax.training.checkpointing import default_checkpoint_config

    config = ml_collections.ConfigDict({"checkpoint": default_checkpoint_config()})
    config.checkpoint.update({"every_steps": 3, "max_to_keep": 1, "best_metric": "fid", "async_save": False})
    model, _ = make_model_and_optimizer(0)
    with Checkpointer.from_config(tmp_path, config) as ckpt:
        assert [s for s in range(1, 8) if ckpt.save(s, {"generator": model})] == [3, 6]
        assert ckpt.all_steps() == [6] and ckpt.best_metric == "fid"
    config.checkpoint.every_step = 5
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['every_step'\]"):
        Checkpointer.from_config(tmp_path, config)


def test_checkpointer_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="best_mode"):
        Checkpointer(tmp_path, best_metric="fid", best_mode="lowest")
    with pytest.raises(ValueError, match="reserved"):
        Checkpointer(tmp_path).save(1, {"config": {"x": jnp.zeros(2)}}, force=True)
    with pytest.raises(ValueError, match="best_metric"):
        Checkpointer(tmp_path).maybe_save_best(1, {}, {"fid": 1.0})


# ----------------------------------------------------------------------------- NaN guards

def test_check_finite_stop_and_skip():
    assert guards.check_finite({"loss": np.float32(0.5), "step": 3, "skipped": np.bool_(False)}, 10, "stop")
    with pytest.raises(FloatingPointError, match=r"at step 17: d_loss=nan"):
        guards.check_finite({"g_loss": 1.0, "d_loss": jnp.float32(jnp.nan)}, 17, "stop")
    assert guards.check_finite({"g_loss": float("inf")}, 17, "skip") is False
    with pytest.raises(ValueError, match="non-finite policy must be one of"):
        guards.check_finite({}, 0, "ignore")


@nnx.jit
def guarded_step(model, optimizer, x):
    old = guards.snapshot_state(model, optimizer)
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)
    skipped = guards.restore_nodes_if_nonfinite((loss, grads), old, model, optimizer)
    return loss, skipped


def test_skip_policy_leaves_state_bit_identical():
    model, optimizer = make_model_and_optimizer(0)
    model.train()
    x = jnp.ones((4, 3))
    loss, skipped = guarded_step(model, optimizer, x)
    assert bool(jnp.isfinite(loss)) and not bool(skipped) and int(optimizer.step[...]) == 1
    before = host_leaves(nnx.state((model, optimizer)))
    loss, skipped = guarded_step(model, optimizer, x.at[0, 0].set(jnp.nan))
    assert bool(jnp.isnan(loss)) and bool(skipped)
    after = host_leaves(nnx.state((model, optimizer)))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after))
    loss, skipped = guarded_step(model, optimizer, x)
    assert not bool(skipped) and int(optimizer.step[...]) == 2


def test_select_if_finite_on_pytrees():
    new = {"w": jnp.ones(3), "key": jax.random.key(1)}
    old = {"w": jnp.zeros(3), "key": jax.random.key(0)}
    state, skipped = jax.jit(guards.select_if_finite)(jnp.float32(1.0), new, old)
    assert not bool(skipped) and float(state["w"].sum()) == 3.0
    state, skipped = jax.jit(guards.select_if_finite)((jnp.float32(1.0), {"g": jnp.array([jnp.inf])}), new, old)
    assert bool(skipped) and float(state["w"].sum()) == 0.0
    assert host_leaves(state["key"])[0].tobytes() == host_leaves(old["key"])[0].tobytes()


# ----------------------------------------------------------------------------- logging

def test_image_grid_shape_and_values(tmp_path):
    values = np.array([-1.0, 0.0, 1.0, 0.5, -0.5], np.float32)
    images = np.broadcast_to(values[:, None, None, None], (5, 4, 6, 3)).copy()
    grid = train_logging.make_image_grid(images, ncols=3, padding=1)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 4 + 1, 3 * 6 + 2, 3)
    expected = np.round((values + 1) * 127.5).astype(np.uint8)  # 0, 128, 255, 191, 64
    for index, value in enumerate(expected):
        row, col = divmod(index, 3)
        cell = grid[row * 5:row * 5 + 4, col * 7:col * 7 + 6]
        assert (cell == value).all()
    assert (grid[4, :] == 255).all() and (grid[:, 6] == 255).all()  # white padding
    assert (grid[5:, 14:] == 255).all()  # the empty sixth cell
    assert train_logging.make_image_grid(np.clip(images * 3, -5, 5)[:1], padding=0).shape == (4, 6, 3)
    path = train_logging.save_png(tmp_path / "samples" / "grid.png", grid)
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        train_logging.make_image_grid(np.zeros((4, 4, 3)))


class RecordingWriter:
    def __init__(self):
        self.scalars: list[tuple[int, dict]] = []

    def write_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))


def test_progress_reporter_logs_only_at_intervals(caplog):
    writer = RecordingWriter()
    reporter = train_logging.ProgressReporter(num_train_steps=10, log_every_steps=4, writer=writer)
    logged = {}
    for step in range(1, 11):
        out = reporter(step, {"g_loss": jnp.float32(step / 10), "images": jnp.zeros((2, 2))})
        if out is not None:
            logged[step] = out
    assert sorted(logged) == [4, 8, 10]
    assert logged[8] == {"g_loss": pytest.approx(0.8)}
    loss_writes = [step for step, scalars in writer.scalars if "g_loss" in scalars]
    assert loss_writes == [4, 8, 10]
    assert any("steps_per_sec" in scalars for _, scalars in writer.scalars)  # from CLU ReportProgress
    line = reporter.format_line(4, {"g_loss": 0.4}, steps_per_sec=2.0)
    assert line == "step 4/10 (40.0%) | g_loss 0.4 | 2.00 steps/s | ETA 0m03s"


def test_clu_writer_writes_tensorboard_files(tmp_path):
    writer = train_logging.create_writer(tmp_path)
    config = ml_collections.ConfigDict({"train": {"lr": 1e-4, "betas": (0.0, 0.9)}, "note": None})
    assert train_logging.flatten_hparams(config) == {"train.lr": 1e-4, "train.betas": "(0.0, 0.9)", "note": ""}
    train_logging.write_hparams(writer, config)
    writer.write_scalars(1, {"loss": 0.5})
    grid = train_logging.write_image_grid(writer, 1, "samples", np.zeros((3, 4, 4, 3)), ncols=2,
                                          png_path=tmp_path / "samples_1.png")
    writer.flush()
    writer.close()
    assert grid.shape == (2 * 4 + 2, 2 * 4 + 2, 3)
    assert (tmp_path / "samples_1.png").is_file()
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 500


# ----------------------------------------------------------------------------- configs and launch.py

CONFIG_FILE = '''
import ml_collections

def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.system = "{system}"
    config.seed = 0
    config.train = ml_collections.ConfigDict({{"batch_size": 64, "lr": 1e-4, "ema": True,
                                               "betas": (0.0, 0.9), "name": "run", "nonfinite_policy": "stop"}})
    config.data = ml_collections.ConfigDict({{"image_size": 128}})
    if arg == "smoke":
        config.train.batch_size = 4
        config.data.image_size = 64
    return config
'''


def write_config(tmp_path: Path, system: str = "gan") -> Path:
    path = tmp_path / f"cfg_{system}.py"
    path.write_text(CONFIG_FILE.format(system=system))
    return path


def test_load_config_presets_and_overrides(tmp_path):
    path = write_config(tmp_path)
    assert load(path).train.batch_size == 64
    config = load(f"{path}:smoke", ["train.lr=3e-4", "train.ema=false", "train.betas=(0.5, 0.99)",
                                    "train.name=other", "data.image_size=128"])
    assert config.train.batch_size == 4 and config.train.lr == 3e-4 and config.train.ema is False
    assert config.train.betas == (0.5, 0.99) and config.train.name == "other" and config.data.image_size == 128
    assert load(path, {"train.batch_size": 8, "train.lr": "2e-4"}).train.lr == 2e-4
    with pytest.raises(KeyError, match=r"no field 'batch_sise' in train; did you mean batch_size"):
        load(path, ["train.batch_sise=8"])
    with pytest.raises(KeyError, match="no field 'trian'"):
        load(path, {"trian.batch_size": 8})
    with pytest.raises(ValueError, match="key=value"):
        load(path, ["train.batch_size"])
    with pytest.raises(FileNotFoundError, match="available configs"):
        config_utils.load_config("configs/does_not_exist.py")
    with pytest.raises(AttributeError):  # locked: no new fields by assignment either
        load(path).train.new_field = 1


def load(path, overrides=None):
    return config_utils.load_config(str(path), overrides)


def test_validate_common(tmp_path):
    config = load(write_config(tmp_path))
    config_utils.validate_common(config, num_devices=8)
    with pytest.raises(ValueError, match=r"train.batch_size=64 is not divisible by the 3 devices"):
        config_utils.validate_common(config, num_devices=3)
    config.data.image_size = 215
    with pytest.raises(ValueError, match=r"data.image_size=215 is not supported by the 'gan' system"):
        config_utils.validate_common(config, 1)
    config.data.image_size = 32
    with pytest.raises(ValueError, match="64, 128, 256"):
        config_utils.validate_common(config, 1)
    l1 = load(write_config(tmp_path, "l1"), {"data.image_size": 215})
    config_utils.validate_common(l1, 1)
    bad = load(write_config(tmp_path, "vae"))
    with pytest.raises(ValueError, match="config.system='vae' is not one of"):
        config_utils.validate_common(bad, 1)
    policy = load(write_config(tmp_path), {"train.nonfinite_policy": "ignore"})
    with pytest.raises(ValueError, match="nonfinite_policy"):
        config_utils.validate_common(policy, 1)


def test_trainer_for_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown system 'vae'"):
        config_utils.trainer_for("vae")
    monkeypatch.setattr(config_utils, "KNOWN_SYSTEMS", (*config_utils.KNOWN_SYSTEMS, "nosuchsystem"))
    with pytest.raises(ImportError, match="'nosuchsystem' system has no trainer"):
        config_utils.trainer_for("nosuchsystem")


def test_launch_help_and_unknown_system(tmp_path):
    help_run = subprocess.run([sys.executable, "launch.py", "--help"], capture_output=True, text=True,
                              cwd=REPO, timeout=120)
    assert help_run.returncode in (0, 1), help_run.stderr[-2000:]  # absl's --help exits with status 1
    assert "Traceback" not in help_run.stderr and "Train one of the PikaPikaGen-JAX systems" in help_run.stdout
    assert "--config" in help_run.stdout and "--workdir" in help_run.stdout
    bad = subprocess.run([sys.executable, "launch.py", f"--config={write_config(tmp_path, 'vae')}:smoke",
                          f"--workdir={tmp_path / 'work'}"], capture_output=True, text=True, cwd=REPO,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert bad.returncode != 0
    assert "config.system='vae' is not one of ('gan', 'l1', 'diffusion', 'dcgan', 'alignment')" in bad.stderr
    missing_workdir = subprocess.run([sys.executable, "launch.py", f"--config={write_config(tmp_path)}"],
                                     capture_output=True, text=True, cwd=REPO, timeout=120)
    assert missing_workdir.returncode != 0 and "--workdir" in missing_workdir.stderr
